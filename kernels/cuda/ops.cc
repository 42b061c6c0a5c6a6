// The checked API of cuda_ops.h over the launchers of the .cu files: shapes validated, every
// launch's error turned into a Status naming the op.
#include <climits>
#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/context_impl.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/launch.h"

namespace longread::kernels::cuda {
namespace {

cudaStream_t Stream(Context& ctx) { return ctx.impl().stream; }

bool Aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

}  // namespace

absl::StatusOr<DeviceMatrix> UploadMatrix(Context& ctx, const MatrixView& w) {
  if (!IsSupportedDType(static_cast<uint32_t>(w.type))) {
    return absl::InvalidArgumentError(
        absl::StrCat("UploadMatrix: unsupported type id ", static_cast<uint32_t>(w.type)));
  }
  if (w.rows <= 0 || w.cols <= 0 || w.cols % BlockElements(w.type) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("UploadMatrix: bad shape ", w.rows, "x", w.cols,
                                                   " for ", std::string(DTypeName(w.type))));
  }
  const int64_t raw_bytes = w.rows * w.row_bytes();
  auto raw = DeviceBuffer::Allocate(raw_bytes);
  if (!raw.ok()) return raw.status();
  auto out = DeviceBuffer::Allocate(w.rows * w.cols * int64_t{sizeof(Bf16)});
  if (!out.ok()) return out.status();
  if (absl::Status s = Upload(ctx, w.data, raw_bytes, raw->as<void>()); !s.ok()) return s;
  LONGREAD_CUDA_RETURN_IF_ERROR(launch::Dequantize(w.type, raw->as<const uint8_t>(), w.rows, w.cols,
                                                   out->as<Bf16>(), Stream(ctx)));
  // `raw` is freed on return: the stream must be done with it.
  if (absl::Status s = ctx.Synchronize(); !s.ok()) return s;
  return DeviceMatrix{w.rows, w.cols, std::move(*out)};
}

absl::Status EmbeddingGather(Context& ctx, const DeviceMatrix& table, const int32_t* tokens,
                             int64_t n_tokens, float* out) {
  if (n_tokens <= 0) return absl::OkStatus();
  LONGREAD_CUDA_RETURN_IF_ERROR(
      launch::Embedding(table.bf16(), table.rows, table.cols, tokens, n_tokens, out, Stream(ctx)));
  return absl::OkStatus();
}

absl::Status AddRmsNorm(Context& ctx, float* residual, const Bf16* delta, const float* weight,
                        int64_t n_tokens, int64_t dim, float eps, Bf16* out) {
  if (n_tokens <= 0) return absl::OkStatus();
  LONGREAD_CUDA_RETURN_IF_ERROR(
      launch::AddRmsNorm(residual, delta, weight, n_tokens, dim, eps, out, Stream(ctx)));
  return absl::OkStatus();
}

absl::Status AddResidual(Context& ctx, float* residual, const Bf16* delta, int64_t n) {
  if (n <= 0) return absl::OkStatus();
  LONGREAD_CUDA_RETURN_IF_ERROR(launch::AddResidual(residual, delta, n, Stream(ctx)));
  return absl::OkStatus();
}

absl::Status Rope(Context& ctx, Bf16* x, int64_t n_outer, int64_t n_tokens, int64_t n_heads,
                  int64_t head_dim, const int64_t* positions, float theta, RopeStyle style) {
  if (head_dim % 2 != 0 || head_dim > launch::kMaxRopeHeadDim) {
    return absl::InvalidArgumentError("cuda::Rope: head_dim must be even and <= 512");
  }
  if (n_outer * n_tokens * n_heads * head_dim <= 0) return absl::OkStatus();
  LONGREAD_CUDA_RETURN_IF_ERROR(launch::Rope(x, n_outer, n_tokens, n_heads, head_dim, positions,
                                             static_cast<double>(theta),
                                             style == RopeStyle::kInterleaved, Stream(ctx)));
  return absl::OkStatus();
}

absl::Status RopeMemory(Context& ctx, const RopeMemoryArgs& a) {
  if (a.head_dim % 2 != 0 || a.head_dim > launch::kMaxRopeHeadDim || a.n_kv_heads <= 0 ||
      a.n_heads % a.n_kv_heads != 0 || a.n_keys > a.capacity || a.n_keys < 0 || a.n_q < 0) {
    return absl::InvalidArgumentError("cuda::RopeMemory: bad shape");
  }
  if ((a.n_kv_heads * a.n_keys + a.n_q * a.n_heads) * a.head_dim == 0) return absl::OkStatus();
  launch::RopeMemoryLaunch l;
  l.keys = a.keys;
  l.rotated = a.rotated;
  l.key_positions = a.key_positions;
  l.n_kv_heads = a.n_kv_heads;
  l.n_keys = a.n_keys;
  l.capacity = a.capacity;
  l.q = a.q;
  l.query_positions = a.query_positions;
  l.n_q = a.n_q;
  l.n_heads = a.n_heads;
  l.head_dim = a.head_dim;
  l.theta = static_cast<double>(a.theta);
  l.interleaved = a.style == RopeStyle::kInterleaved;
  LONGREAD_CUDA_RETURN_IF_ERROR(launch::RopeMemory(l, Stream(ctx)));
  return absl::OkStatus();
}

absl::Status ScatterHeads(Context& ctx, const Bf16* src, int64_t n_tokens, int64_t n_heads,
                          int64_t head_dim, int64_t capacity, int64_t slot0, Bf16* dst) {
  if (slot0 < 0 || slot0 + n_tokens > capacity) {
    return absl::InvalidArgumentError("cuda::ScatterHeads: slots past the capacity");
  }
  if (n_tokens * n_heads * head_dim <= 0) return absl::OkStatus();
  LONGREAD_CUDA_RETURN_IF_ERROR(
      launch::ScatterHeads(src, n_tokens, n_heads, head_dim, capacity, slot0, dst, Stream(ctx)));
  return absl::OkStatus();
}

absl::Status CopyRows(Context& ctx, const Bf16* src, const int32_t* src_rows, Bf16* dst,
                      const int32_t* dst_rows, int64_t n_rows, int64_t row_elems) {
  if (n_rows * row_elems <= 0) return absl::OkStatus();
  LONGREAD_CUDA_RETURN_IF_ERROR(
      launch::CopyRows(src, src_rows, dst, dst_rows, n_rows, row_elems, Stream(ctx)));
  return absl::OkStatus();
}

absl::Status CopyDevice(Context& ctx, const void* src, int64_t bytes, void* dst) {
  if (bytes <= 0) return absl::OkStatus();
  LONGREAD_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(dst, src, static_cast<size_t>(bytes), cudaMemcpyDeviceToDevice, Stream(ctx)));
  return absl::OkStatus();
}

absl::Status ZeroDevice(Context& ctx, void* dst, int64_t bytes) {
  if (bytes <= 0) return absl::OkStatus();
  LONGREAD_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(dst, 0, static_cast<size_t>(bytes), Stream(ctx)));
  return absl::OkStatus();
}

absl::Status TaskTerm(Context& ctx, const TaskTermArgs& a) {
  if (a.n <= 0 || a.n_task <= 0 || a.n_kv_heads <= 0 || a.head_dim <= 0 ||
      a.n_heads % a.n_kv_heads != 0) {
    return absl::InvalidArgumentError("cuda::TaskTerm: bad shape");
  }
  launch::TaskTermLaunch l;
  l.task_queries = a.task_queries;
  l.k = a.k;
  l.n = a.n;
  l.n_task = a.n_task;
  l.n_heads = a.n_heads;
  l.n_kv_heads = a.n_kv_heads;
  l.head_dim = a.head_dim;
  l.max_dot = a.max_dot;
  l.weight = a.weight;
  // As the host computes them (engine/memory/sparsek_memory.cc).
  l.inv_sqrt_d = 1.0f / std::sqrt(static_cast<float>(a.head_dim));
  const int64_t rows = a.n_task * (a.n_heads / a.n_kv_heads);
  l.log_uniform = std::log(static_cast<float>(a.n)) - std::log(static_cast<float>(rows));
  l.logits = a.logits;
  l.lse = a.lse;
  l.scores = a.scores;
  LONGREAD_CUDA_RETURN_IF_ERROR(launch::TaskTerm(l, Stream(ctx)));
  return absl::OkStatus();
}

absl::Status LinearScores(Context& ctx, const float* w, const float* b, const float* slope,
                          const Bf16* x, int64_t n, int64_t heads, int64_t d,
                          int64_t first_position, float* out) {
  if (n <= 0 || heads <= 0 || d <= 0) return absl::InvalidArgumentError("cuda::LinearScores");
  LONGREAD_CUDA_RETURN_IF_ERROR(
      launch::LinearScores(w, b, slope, x, n, heads, d, first_position, out, Stream(ctx)));
  return absl::OkStatus();
}

absl::Status SiluMul(Context& ctx, const Bf16* gate, const Bf16* up, int64_t n, Bf16* out) {
  if (n <= 0) return absl::OkStatus();
  LONGREAD_CUDA_RETURN_IF_ERROR(launch::SiluMul(gate, up, n, out, Stream(ctx)));
  return absl::OkStatus();
}

absl::Status ArgMax(Context& ctx, const float* logits, int64_t n_rows, int64_t vocab,
                    int32_t* out) {
  if (vocab <= 0 || vocab > INT32_MAX) return absl::InvalidArgumentError("cuda::ArgMax: vocab");
  if (n_rows <= 0) return absl::OkStatus();
  LONGREAD_CUDA_RETURN_IF_ERROR(launch::ArgMax(logits, n_rows, vocab, out, Stream(ctx)));
  return absl::OkStatus();
}

absl::Status FloatToBf16(Context& ctx, const float* in, int64_t n, Bf16* out) {
  if (n <= 0) return absl::OkStatus();
  LONGREAD_CUDA_RETURN_IF_ERROR(launch::FloatToBf16(in, n, out, Stream(ctx)));
  return absl::OkStatus();
}

absl::Status Bf16ToFloat(Context& ctx, const Bf16* in, int64_t n, float* out) {
  if (n <= 0) return absl::OkStatus();
  LONGREAD_CUDA_RETURN_IF_ERROR(launch::Bf16ToFloat(in, n, out, Stream(ctx)));
  return absl::OkStatus();
}

absl::Status Attention(Context& ctx, const AttentionArgs& a) {
  if (a.head_dim != 64) {
    return absl::UnimplementedError(
        absl::StrCat("cuda::Attention: head_dim ", a.head_dim, " (only 64 is built)"));
  }
  if (a.n_kv_heads <= 0 || a.n_heads <= 0 || a.n_heads % a.n_kv_heads != 0 || a.n_q < 0 ||
      a.n_keys < 0 || a.n_q >= INT32_MAX || a.n_keys >= (int64_t{INT32_MAX} << 6)) {
    return absl::InvalidArgumentError("cuda::Attention: bad shape");
  }
  if (a.kv_head_stride != 0 && a.kv_head_stride < a.n_keys) {
    return absl::InvalidArgumentError("cuda::Attention: kv_head_stride below n_keys");
  }
  if (!(a.scale > 0) || a.variant < -1 || a.variant >= launch::kAttentionVariants) {
    return absl::InvalidArgumentError("cuda::Attention: scale must be > 0, variant in range");
  }
  if (!Aligned16(a.q) || !Aligned16(a.k) || !Aligned16(a.v) || !Aligned16(a.out)) {
    return absl::InvalidArgumentError("cuda::Attention: q, k, v and out must be 16-byte aligned");
  }
  if (a.n_q == 0) return absl::OkStatus();
  Context::Impl& impl = ctx.impl();
  if (a.n_keys == 0) {
    LONGREAD_CUDA_RETURN_IF_ERROR(
        cudaMemsetAsync(a.out, 0, a.n_q * a.n_heads * a.head_dim * sizeof(Bf16), impl.stream));
    return absl::OkStatus();
  }
  const int64_t bounds_bytes = launch::AttentionBoundsBytes(a.n_kv_heads, a.n_keys);
  if (impl.attention_bounds.bytes() < bounds_bytes) {
    // cudaFree (in the assignment) waits for queued work that may still read the old buffer.
    auto grown = DeviceBuffer::Allocate(bounds_bytes * 2);
    if (!grown.ok()) return grown.status();
    impl.attention_bounds = std::move(*grown);
  }
  const launch::AttentionLaunch l{a.q,
                                  a.k,
                                  a.v,
                                  a.visible_from,
                                  a.visible_until,
                                  a.out,
                                  a.n_q,
                                  a.n_keys,
                                  a.n_heads,
                                  a.n_kv_heads,
                                  a.kv_head_stride == 0 ? a.n_keys : a.kv_head_stride,
                                  a.scale,
                                  impl.attention_bounds.as<void>(),
                                  a.variant < 0 ? launch::kDefaultAttentionVariant : a.variant};
  LONGREAD_CUDA_RETURN_IF_ERROR(launch::Attention(l, impl.stream));
  return absl::OkStatus();
}

}  // namespace longread::kernels::cuda
