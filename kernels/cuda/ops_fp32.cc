// The checked API of cuda_ops_fp32.h over fp32.cu's launchers.
#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/context_impl.h"
#include "kernels/cuda/cuda_ops_fp32.h"
#include "kernels/cuda/launch_fp32.h"

namespace longread::kernels::cuda {

absl::StatusOr<DeviceMatrixF32> UploadMatrixF32(Context& ctx, const MatrixView& w) {
  if (!IsSupportedDType(static_cast<uint32_t>(w.type))) {
    return absl::InvalidArgumentError(
        absl::StrCat("UploadMatrixF32: unsupported type id ", static_cast<uint32_t>(w.type)));
  }
  if (w.rows <= 0 || w.cols <= 0 || w.cols % BlockElements(w.type) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("UploadMatrixF32: bad shape ", w.rows, "x",
                                                   w.cols, " for ",
                                                   std::string(DTypeName(w.type))));
  }
  const int64_t raw_bytes = w.rows * w.row_bytes();
  auto raw = DeviceBuffer::Allocate(raw_bytes);
  if (!raw.ok()) return raw.status();
  auto out = DeviceBuffer::Allocate(w.rows * w.cols * int64_t{sizeof(float)});
  if (!out.ok()) return out.status();
  if (absl::Status s = Upload(ctx, w.data, raw_bytes, raw->as<void>()); !s.ok()) return s;
  LONGREAD_CUDA_RETURN_IF_ERROR(launch::DequantizeF32(w.type, raw->as<const uint8_t>(), w.rows,
                                                      w.cols, out->as<float>(), ctx.impl().stream));
  // `raw` is freed on return: the stream must be done with it.
  if (absl::Status s = ctx.Synchronize(); !s.ok()) return s;
  return DeviceMatrixF32{w.rows, w.cols, std::move(*out)};
}

absl::Status EmbeddingGatherF32(Context& ctx, const DeviceMatrixF32& table, const int32_t* tokens,
                                int64_t n_tokens, float* out) {
  if (n_tokens <= 0) return absl::OkStatus();
  LONGREAD_CUDA_RETURN_IF_ERROR(launch::EmbeddingF32(table.f32(), table.rows, table.cols, tokens,
                                                     n_tokens, out, ctx.impl().stream));
  return absl::OkStatus();
}

absl::Status AddRmsNormF32(Context& ctx, float* residual, const float* delta, const float* weight,
                           int64_t n_tokens, int64_t dim, float eps, float* out) {
  if (n_tokens <= 0) return absl::OkStatus();
  LONGREAD_CUDA_RETURN_IF_ERROR(
      launch::AddRmsNormF32(residual, delta, weight, n_tokens, dim, eps, out, ctx.impl().stream));
  return absl::OkStatus();
}

absl::Status AddResidualF32(Context& ctx, float* residual, const float* delta, int64_t n) {
  if (n <= 0) return absl::OkStatus();
  LONGREAD_CUDA_RETURN_IF_ERROR(launch::AddResidualF32(residual, delta, n, ctx.impl().stream));
  return absl::OkStatus();
}

absl::Status RopeF32(Context& ctx, float* x, int64_t n_tokens, int64_t n_heads, int64_t head_dim,
                     const int64_t* positions, float theta, RopeStyle style) {
  if (head_dim % 2 != 0) return absl::InvalidArgumentError("cuda::RopeF32: odd head_dim");
  if (n_tokens * n_heads * head_dim <= 0) return absl::OkStatus();
  LONGREAD_CUDA_RETURN_IF_ERROR(
      launch::RopeF32(x, n_tokens, n_heads, head_dim, positions, static_cast<double>(theta),
                      style == RopeStyle::kInterleaved, ctx.impl().stream));
  return absl::OkStatus();
}

absl::Status ScatterHeadsF32(Context& ctx, const float* src, int64_t n_tokens, int64_t n_heads,
                             int64_t head_dim, int64_t capacity, int64_t slot0, float* dst) {
  if (slot0 < 0 || slot0 + n_tokens > capacity) {
    return absl::InvalidArgumentError("cuda::ScatterHeadsF32: slots past the capacity");
  }
  if (n_tokens * n_heads * head_dim <= 0) return absl::OkStatus();
  LONGREAD_CUDA_RETURN_IF_ERROR(launch::ScatterHeadsF32(src, n_tokens, n_heads, head_dim, capacity,
                                                        slot0, dst, ctx.impl().stream));
  return absl::OkStatus();
}

absl::Status SiluMulF32(Context& ctx, const float* gate, const float* up, int64_t n, float* out) {
  if (n <= 0) return absl::OkStatus();
  LONGREAD_CUDA_RETURN_IF_ERROR(launch::SiluMulF32(gate, up, n, out, ctx.impl().stream));
  return absl::OkStatus();
}

absl::Status AttentionF32(Context& ctx, const AttentionF32Args& a) {
  if (a.head_dim <= 0 || a.head_dim > launch::kMaxAttentionF32HeadDim || a.n_kv_heads <= 0 ||
      a.n_heads <= 0 || a.n_heads % a.n_kv_heads != 0 || a.n_q < 0 || a.n_keys < 0 ||
      (a.kv_head_stride != 0 && a.kv_head_stride < a.n_keys) || !(a.scale > 0)) {
    return absl::InvalidArgumentError("cuda::AttentionF32: bad shape or scale");
  }
  if (a.n_q == 0) return absl::OkStatus();
  const launch::AttentionF32Launch l{a.q,
                                     a.k,
                                     a.v,
                                     a.visible_from,
                                     a.visible_until,
                                     a.out,
                                     a.n_q,
                                     a.n_keys,
                                     a.n_heads,
                                     a.n_kv_heads,
                                     a.head_dim,
                                     a.kv_head_stride == 0 ? a.n_keys : a.kv_head_stride,
                                     a.scale};
  LONGREAD_CUDA_RETURN_IF_ERROR(launch::AttentionF32(l, ctx.impl().stream));
  return absl::OkStatus();
}

}  // namespace longread::kernels::cuda
