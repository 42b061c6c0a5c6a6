// CudaPrecision::kFp32: the dense-cache forward pass with fp32 weights, activations and GEMMs, in
// the CPU LlamaModel's op order (separate RmsNorm and residual adds, fused on the device without
// changing a rounding), so its greedy continuations equal the CPU engine's.
#include <algorithm>
#include <climits>
#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "engine/model/cuda_common.h"
#include "engine/model/cuda_llama_model.h"
#include "kernels/cuda/cuda_ops_fp32.h"

namespace longread::engine {
namespace {

namespace cu = kernels::cuda;

absl::StatusOr<cu::DeviceMatrixF32> UploadWeightF32(cu::Context& ctx, const ModelFile& file,
                                                    const std::string& name, int64_t rows,
                                                    int64_t cols) {
  auto t = file.Tensor(name);
  if (!t.ok()) return t.status();
  if (t->dims.size() != 2 || t->dims[0] != cols || t->dims[1] != rows) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cuda model: tensor '", name, "' has the wrong shape; expected [", cols, ", ", rows, "]"));
  }
  return cu::UploadMatrixF32(ctx, kernels::MatrixView{t->type, rows, cols, t->data});
}

// Grows `buffer` to at least `bytes`, doubling: decoding adds one key per pass.
absl::Status Grow(cu::DeviceBuffer& buffer, int64_t bytes) {
  if (buffer.bytes() >= bytes) return absl::OkStatus();
  auto b = cu::DeviceBuffer::Allocate(std::max(bytes, 2 * buffer.bytes()));
  if (!b.ok()) return b.status();
  buffer = std::move(*b);
  return absl::OkStatus();
}

}  // namespace

struct CudaLlamaModel::Fp32 {
  struct Layer {
    cu::DeviceMatrixF32 wq, wk, wv, wo, gate, up, down;
  };
  cu::DeviceMatrixF32 embedding, lm_head;
  std::vector<Layer> layers;
  // Grow-only activations of the last pass (fp32), and the dense intervals of its keys.
  cu::DeviceBuffer tokens, positions, from, until;
  cu::DeviceBuffer hidden, x, q, k, v, attn, proj, gate, up, logits;
};

// Here, where Fp32 is a complete type.
CudaLlamaModel::CudaLlamaModel(const ModelConfig& config, cu::Context* ctx)
    : config_(config), ctx_(ctx) {}
CudaLlamaModel::~CudaLlamaModel() = default;

absl::Status CudaLlamaModel::UploadFp32(const LlamaModel& model) {
  const ModelConfig& c = config_;
  const ModelFile& file = model.file();
  cu::Context& ctx = *ctx_;
  auto fp32 = std::make_unique<Fp32>();
  const int64_t d = c.d_model, qd = int64_t{c.n_heads} * c.head_dim,
                kvd = int64_t{c.n_kv_heads} * c.head_dim;
  auto embd = UploadWeightF32(ctx, file, "token_embd.weight", c.vocab_size, d);
  if (!embd.ok()) return embd.status();
  fp32->embedding = std::move(*embd);
  if (!c.tie_embeddings) {
    auto head = UploadWeightF32(ctx, file, "output.weight", c.vocab_size, d);
    if (!head.ok()) return head.status();
    fp32->lm_head = std::move(*head);
  }
  fp32->layers.resize(c.n_layers);
  for (int32_t l = 0; l < c.n_layers; ++l) {
    const std::string p = absl::StrCat("blk.", l, ".");
    Fp32::Layer& L = fp32->layers[l];
    struct {
      cu::DeviceMatrixF32* dst;
      const char* name;
      int64_t rows, cols;
    } mats[] = {{&L.wq, "attn_q.weight", qd, d},         {&L.wk, "attn_k.weight", kvd, d},
                {&L.wv, "attn_v.weight", kvd, d},        {&L.wo, "attn_output.weight", d, qd},
                {&L.gate, "ffn_gate.weight", c.d_ff, d}, {&L.up, "ffn_up.weight", c.d_ff, d},
                {&L.down, "ffn_down.weight", d, c.d_ff}};
    for (auto& w : mats) {
      auto v = UploadWeightF32(ctx, file, p + w.name, w.rows, w.cols);
      if (!v.ok()) return v.status();
      *w.dst = std::move(*v);
    }
  }
  fp32_ = std::move(fp32);
  return absl::OkStatus();
}

absl::Status CudaLlamaModel::ForwardFp32(std::span<const int32_t> tokens, Cache& cache,
                                         LogitsMode mode, std::vector<float>* logits) {
  const ModelConfig& c = config_;
  Fp32& f = *fp32_;
  cu::Context& ctx = *ctx_;
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t P = cache.length, n_keys = P + n;
  if (n == 0) return absl::InvalidArgumentError("cuda model: empty segment");
  if (n_keys > cache.capacity) {
    return absl::ResourceExhaustedError(absl::StrCat("cuda model: the cache holds ", cache.capacity,
                                                     " tokens, ", n_keys, " needed"));
  }
  for (int32_t t : tokens) {
    if (t < 0 || t >= c.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("cuda model: token id ", t, " outside the vocabulary"));
    }
  }
  const int64_t d = c.d_model, H = c.n_heads, G = c.n_kv_heads, hd = c.head_dim;
  const int64_t qd = H * hd, kvd = G * hd, ff = c.d_ff;
  const int64_t logit_rows = mode == LogitsMode::kAll ? n : 1;
  struct {
    cu::DeviceBuffer* b;
    int64_t bytes;
  } buffers[] = {{&f.tokens, n * 4},        {&f.positions, n * 8},
                 {&f.from, G * n_keys * 4}, {&f.until, G * n_keys * 4},
                 {&f.hidden, n * d * 4},    {&f.x, n * d * 4},
                 {&f.q, n * qd * 4},        {&f.k, n * kvd * 4},
                 {&f.v, n * kvd * 4},       {&f.attn, n * qd * 4},
                 {&f.proj, n * d * 4},      {&f.gate, n * ff * 4},
                 {&f.up, n * ff * 4},       {&f.logits, logit_rows * int64_t{c.vocab_size} * 4}};
  for (auto& b : buffers) LONGREAD_RETURN_IF_ERROR(Grow(*b.b, b.bytes));

  std::vector<int64_t> positions(n);
  for (int64_t i = 0; i < n; ++i) positions[i] = P + i;
  std::vector<int32_t> from(G * n_keys), until(G * n_keys, INT32_MAX);
  for (int64_t g = 0; g < G; ++g) {
    for (int64_t j = 0; j < n_keys; ++j) {
      from[g * n_keys + j] = static_cast<int32_t>(std::max<int64_t>(0, j - P));
    }
  }
  LONGREAD_RETURN_IF_ERROR(cu::Upload(ctx, tokens.data(), n * 4, f.tokens.as<void>()));
  LONGREAD_RETURN_IF_ERROR(cu::Upload(ctx, positions.data(), n * 8, f.positions.as<void>()));
  LONGREAD_RETURN_IF_ERROR(cu::Upload(ctx, from.data(), G * n_keys * 4, f.from.as<void>()));
  LONGREAD_RETURN_IF_ERROR(cu::Upload(ctx, until.data(), G * n_keys * 4, f.until.as<void>()));

  const kernels::RopeStyle rope = c.rope_style == RopeStyle::kHalf
                                      ? kernels::RopeStyle::kHalf
                                      : kernels::RopeStyle::kInterleaved;
  float* h = f.hidden.as<float>();
  float* x = f.x.as<float>();
  LONGREAD_RETURN_IF_ERROR(cu::EmbeddingGatherF32(ctx, f.embedding, f.tokens.as<int32_t>(), n, h));
  for (int32_t l = 0; l < c.n_layers; ++l) {
    const Fp32::Layer& L = f.layers[l];
    // The previous layer's FFN residual add fused into this norm: the same two roundings.
    LONGREAD_RETURN_IF_ERROR(cu::AddRmsNormF32(ctx, h, l == 0 ? nullptr : f.proj.as<float>(),
                                               layers_[l].attn_norm.as<float>(), n, d, c.rms_eps,
                                               x));
    LONGREAD_RETURN_IF_ERROR(cu::MatMulF32(ctx, L.wq, x, n, f.q.as<float>()));
    LONGREAD_RETURN_IF_ERROR(cu::MatMulF32(ctx, L.wk, x, n, f.k.as<float>()));
    LONGREAD_RETURN_IF_ERROR(cu::MatMulF32(ctx, L.wv, x, n, f.v.as<float>()));
    LONGREAD_RETURN_IF_ERROR(
        cu::RopeF32(ctx, f.q.as<float>(), n, H, hd, f.positions.as<int64_t>(), c.rope_theta, rope));
    LONGREAD_RETURN_IF_ERROR(
        cu::RopeF32(ctx, f.k.as<float>(), n, G, hd, f.positions.as<int64_t>(), c.rope_theta, rope));
    LONGREAD_RETURN_IF_ERROR(cu::ScatterHeadsF32(ctx, f.k.as<float>(), n, G, hd, cache.capacity, P,
                                                 cache.k[l].as<float>()));
    LONGREAD_RETURN_IF_ERROR(cu::ScatterHeadsF32(ctx, f.v.as<float>(), n, G, hd, cache.capacity, P,
                                                 cache.v[l].as<float>()));
    cu::AttentionF32Args a;
    a.q = f.q.as<float>();
    a.k = cache.k[l].as<float>();
    a.v = cache.v[l].as<float>();
    a.visible_from = f.from.as<int32_t>();
    a.visible_until = f.until.as<int32_t>();
    a.n_q = n;
    a.n_keys = n_keys;
    a.n_heads = H;
    a.n_kv_heads = G;
    a.head_dim = hd;
    a.kv_head_stride = cache.capacity;
    a.scale = 1.0f / std::sqrt(static_cast<float>(hd));
    a.out = f.attn.as<float>();
    LONGREAD_RETURN_IF_ERROR(cu::AttentionF32(ctx, a));
    LONGREAD_RETURN_IF_ERROR(cu::MatMulF32(ctx, L.wo, f.attn.as<float>(), n, f.proj.as<float>()));
    LONGREAD_RETURN_IF_ERROR(cu::AddRmsNormF32(
        ctx, h, f.proj.as<float>(), layers_[l].ffn_norm.as<float>(), n, d, c.rms_eps, x));
    LONGREAD_RETURN_IF_ERROR(cu::MatMulF32(ctx, L.gate, x, n, f.gate.as<float>()));
    LONGREAD_RETURN_IF_ERROR(cu::MatMulF32(ctx, L.up, x, n, f.up.as<float>()));
    LONGREAD_RETURN_IF_ERROR(
        cu::SiluMulF32(ctx, f.gate.as<float>(), f.up.as<float>(), n * ff, f.gate.as<float>()));
    LONGREAD_RETURN_IF_ERROR(cu::MatMulF32(ctx, L.down, f.gate.as<float>(), n, f.proj.as<float>()));
  }
  cache.length = n_keys;
  if (mode == LogitsMode::kNone) {
    LONGREAD_RETURN_IF_ERROR(cu::AddResidualF32(ctx, h, f.proj.as<float>(), n * d));
    return ctx.Synchronize();
  }
  LONGREAD_RETURN_IF_ERROR(
      cu::AddRmsNormF32(ctx, h, f.proj.as<float>(), output_norm_.as<float>(), n, d, c.rms_eps, x));
  const int64_t first = mode == LogitsMode::kLast ? n - 1 : 0, rows = n - first;
  const cu::DeviceMatrixF32& head = c.tie_embeddings ? f.embedding : f.lm_head;
  LONGREAD_RETURN_IF_ERROR(cu::MatMulF32(ctx, head, x + first * d, rows, f.logits.as<float>()));
  logits->resize(rows * c.vocab_size);
  return cu::Download(ctx, f.logits.as<void>(), rows * int64_t{c.vocab_size} * 4, logits->data());
}

}  // namespace longread::engine
