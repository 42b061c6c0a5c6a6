#include "engine/model/cuda_llama_model.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/ops.h"

namespace longread::engine {
namespace {

namespace cu = kernels::cuda;
using cu::Bf16;

absl::StatusOr<cu::DeviceMatrix> UploadWeight(cu::Context& ctx, const ModelFile& file,
                                              const std::string& name, int64_t rows, int64_t cols) {
  auto t = file.Tensor(name);
  if (!t.ok()) return t.status();
  if (t->dims.size() != 2 || t->dims[0] != cols || t->dims[1] != rows) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cuda model: tensor '", name, "' has the wrong shape; expected [", cols, ", ", rows, "]"));
  }
  return cu::UploadMatrix(ctx, kernels::MatrixView{t->type, rows, cols, t->data});
}

// Norm weights as fp32 on the device, decoded on the host as the CPU model decodes them.
absl::StatusOr<cu::DeviceBuffer> UploadVector(cu::Context& ctx, const ModelFile& file,
                                              const std::string& name, int64_t n) {
  auto t = file.Tensor(name);
  if (!t.ok()) return t.status();
  if (t->dims.size() != 1 || t->dims[0] != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda model: tensor '", name, "' should be a vector of ", n, " elements"));
  }
  std::vector<float> host(n);
  kernels::DequantizeRow(kernels::MatrixView{t->type, 1, n, t->data}, 0, host.data());
  auto b = cu::DeviceBuffer::Allocate(n * int64_t{sizeof(float)});
  if (!b.ok()) return b.status();
  if (auto s = cu::Upload(ctx, host.data(), b->bytes(), b->as<void>()); !s.ok()) return s;
  // `host` dies here: the pageable copy has been staged by the time Upload returns.
  return std::move(*b);
}

kernels::RopeStyle KernelRope(RopeStyle style) {
  return style == RopeStyle::kHalf ? kernels::RopeStyle::kHalf : kernels::RopeStyle::kInterleaved;
}

// Grows `buffer` to at least `bytes` (contents are not kept).
absl::Status Reserve(cu::DeviceBuffer& buffer, int64_t bytes) {
  if (buffer.bytes() >= bytes) return absl::OkStatus();
  auto b = cu::DeviceBuffer::Allocate(bytes);
  if (!b.ok()) return b.status();
  buffer = std::move(*b);
  return absl::OkStatus();
}

#define LONGREAD_RETURN_IF_ERROR(expr)      \
  do {                                      \
    if (absl::Status s = (expr); !s.ok()) { \
      return s;                             \
    }                                       \
  } while (0)

}  // namespace

absl::StatusOr<std::unique_ptr<CudaLlamaModel>> CudaLlamaModel::Create(const LlamaModel& model,
                                                                       cu::Context* ctx) {
  const ModelConfig& c = model.config();
  if (c.attn_qkv_bias) {
    return absl::UnimplementedError("cuda model: QKV biases (Qwen2) are not supported yet");
  }
  if (c.head_dim != 64) {
    return absl::UnimplementedError("cuda model: only head_dim 64 has an attention kernel");
  }
  std::unique_ptr<CudaLlamaModel> m(new CudaLlamaModel(c, ctx));
  auto fork = cu::Event::Create();
  if (!fork.ok()) return fork.status();
  m->fork_ = std::move(*fork);
  LONGREAD_RETURN_IF_ERROR(m->EnsureJoins(1));
  const ModelFile& file = model.file();
  const int64_t d = c.d_model, qd = int64_t{c.n_heads} * c.head_dim,
                kvd = int64_t{c.n_kv_heads} * c.head_dim;
  auto embd = UploadWeight(*ctx, file, "token_embd.weight", c.vocab_size, d);
  if (!embd.ok()) return embd.status();
  m->embedding_ = std::move(*embd);
  if (!c.tie_embeddings) {
    auto head = UploadWeight(*ctx, file, "output.weight", c.vocab_size, d);
    if (!head.ok()) return head.status();
    m->lm_head_ = std::move(*head);
  }
  auto norm = UploadVector(*ctx, file, "output_norm.weight", d);
  if (!norm.ok()) return norm.status();
  m->output_norm_ = std::move(*norm);
  m->layers_.resize(c.n_layers);
  for (int32_t l = 0; l < c.n_layers; ++l) {
    const std::string p = absl::StrCat("blk.", l, ".");
    Layer& L = m->layers_[l];
    struct {
      cu::DeviceMatrix* dst;
      const char* name;
      int64_t rows, cols;
    } mats[] = {{&L.wq, "attn_q.weight", qd, d},         {&L.wk, "attn_k.weight", kvd, d},
                {&L.wv, "attn_v.weight", kvd, d},        {&L.wo, "attn_output.weight", d, qd},
                {&L.gate, "ffn_gate.weight", c.d_ff, d}, {&L.up, "ffn_up.weight", c.d_ff, d},
                {&L.down, "ffn_down.weight", d, c.d_ff}};
    for (auto& w : mats) {
      auto v = UploadWeight(*ctx, file, p + w.name, w.rows, w.cols);
      if (!v.ok()) return v.status();
      *w.dst = std::move(*v);
    }
    auto an = UploadVector(*ctx, file, p + "attn_norm.weight", d);
    if (!an.ok()) return an.status();
    L.attn_norm = std::move(*an);
    auto fn = UploadVector(*ctx, file, p + "ffn_norm.weight", d);
    if (!fn.ok()) return fn.status();
    L.ffn_norm = std::move(*fn);
  }
  return m;
}

absl::StatusOr<CudaLlamaModel::Cache> CudaLlamaModel::NewCache(int64_t capacity) const {
  if (capacity <= 0 || capacity >= INT32_MAX) {
    return absl::InvalidArgumentError("cuda model: cache capacity out of range");
  }
  Cache cache;
  cache.capacity = capacity;
  const int64_t bytes = int64_t{config_.n_kv_heads} * capacity * config_.head_dim * 2;
  for (int32_t l = 0; l < config_.n_layers; ++l) {
    auto k = cu::DeviceBuffer::Allocate(bytes);
    if (!k.ok()) return k.status();
    auto v = cu::DeviceBuffer::Allocate(bytes);
    if (!v.ok()) return v.status();
    cache.k.push_back(std::move(*k));
    cache.v.push_back(std::move(*v));
  }
  return cache;
}

absl::Status CudaLlamaModel::EnsureWorkspace(int64_t n, int64_t n_keys, int64_t logit_rows) {
  const ModelConfig& c = config_;
  const int64_t G = c.n_kv_heads;
  // A batched pass holds many documents' rows but computes logits for few of them.
  LONGREAD_RETURN_IF_ERROR(
      Reserve(ws_.logits, (logit_rows < 0 ? n : logit_rows) * int64_t{c.vocab_size} * 4));
  if (n_keys > keys_capacity_) {
    const int64_t keys = std::max(n_keys, 2 * keys_capacity_);
    LONGREAD_RETURN_IF_ERROR(Reserve(ws_.from, G * keys * 4));
    LONGREAD_RETURN_IF_ERROR(Reserve(ws_.until, G * keys * 4));
    keys_capacity_ = keys;
  }
  if (n <= ws_.capacity) return absl::OkStatus();
  const int64_t d = c.d_model, qd = int64_t{c.n_heads} * c.head_dim,
                kvd = int64_t{c.n_kv_heads} * c.head_dim, bf = sizeof(Bf16);
  struct {
    cu::DeviceBuffer* b;
    int64_t bytes;
  } buffers[] = {
      {&ws_.tokens, n * 4},         {&ws_.positions, n * 8},    {&ws_.hidden, n * d * 4},
      {&ws_.x, n * d * bf},         {&ws_.q, n * qd * bf},      {&ws_.k, n * kvd * bf},
      {&ws_.v, n * kvd * bf},       {&ws_.attn, n * qd * bf},   {&ws_.proj, n * d * bf},
      {&ws_.gate, n * c.d_ff * bf}, {&ws_.up, n * c.d_ff * bf}, {&ws_.ffn_out, n * d * bf}};
  for (auto& b : buffers) LONGREAD_RETURN_IF_ERROR(Reserve(*b.b, b.bytes));
  ws_.capacity = n;
  return absl::OkStatus();
}

absl::Status CudaLlamaModel::Forward(std::span<const int32_t> tokens, Cache& cache, LogitsMode mode,
                                     std::vector<float>* logits) {
  const ModelConfig& c = config_;
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t P = cache.length, n_keys = P + n;
  if (n_keys > cache.capacity) {
    return absl::ResourceExhaustedError(absl::StrCat("cuda model: the cache holds ", cache.capacity,
                                                     " tokens, ", n_keys, " needed"));
  }
  if (n == 0) return absl::InvalidArgumentError("cuda model: empty segment");
  LONGREAD_RETURN_IF_ERROR(EnsureWorkspace(n, n_keys));
  cu::Context& ctx = *ctx_;
  const int64_t H = c.n_heads, G = c.n_kv_heads, hd = c.head_dim;

  // Per segment (not per op): the positions and the dense causal intervals.
  std::vector<int64_t> positions(n);
  for (int64_t i = 0; i < n; ++i) positions[i] = P + i;
  std::vector<int32_t> from(G * n_keys), until(G * n_keys, INT32_MAX);
  for (int64_t g = 0; g < G; ++g) {
    for (int64_t j = 0; j < n_keys; ++j) {
      from[g * n_keys + j] = static_cast<int32_t>(std::max<int64_t>(0, j - P));
    }
  }
  LONGREAD_RETURN_IF_ERROR(cu::Upload(ctx, positions.data(), n * 8, ws_.positions.as<void>()));
  LONGREAD_RETURN_IF_ERROR(cu::Upload(ctx, from.data(), G * n_keys * 4, ws_.from.as<void>()));
  LONGREAD_RETURN_IF_ERROR(cu::Upload(ctx, until.data(), G * n_keys * 4, ws_.until.as<void>()));
  const kernels::RopeStyle rope = KernelRope(c.rope_style);
  auto attend = [&](int32_t l) -> absl::Status {
    // A dense cache never moves a key, so each key is rotated once, at its own position, before
    // it joins the cache (the SparseK memory re-rotates at attention time instead).
    LONGREAD_RETURN_IF_ERROR(cu::Rope(ctx, ws_.q.as<Bf16>(), 1, n, H, hd,
                                      ws_.positions.as<int64_t>(), c.rope_theta, rope));
    LONGREAD_RETURN_IF_ERROR(cu::Rope(ctx, ws_.k.as<Bf16>(), 1, n, G, hd,
                                      ws_.positions.as<int64_t>(), c.rope_theta, rope));
    LONGREAD_RETURN_IF_ERROR(cu::ScatterHeads(ctx, ws_.k.as<Bf16>(), n, G, hd, cache.capacity, P,
                                              cache.k[l].as<Bf16>()));
    LONGREAD_RETURN_IF_ERROR(cu::ScatterHeads(ctx, ws_.v.as<Bf16>(), n, G, hd, cache.capacity, P,
                                              cache.v[l].as<Bf16>()));
    cu::AttentionArgs a;
    a.q = ws_.q.as<Bf16>();
    a.k = cache.k[l].as<Bf16>();
    a.v = cache.v[l].as<Bf16>();
    a.visible_from = ws_.from.as<int32_t>();
    a.visible_until = ws_.until.as<int32_t>();
    a.n_q = n;
    a.n_keys = n_keys;
    a.n_heads = H;
    a.n_kv_heads = G;
    a.head_dim = hd;
    a.kv_head_stride = cache.capacity;
    a.scale = 1.0f / std::sqrt(static_cast<float>(hd));
    a.out = ws_.attn.as<Bf16>();
    return cu::Attention(ctx, a);
  };
  LONGREAD_RETURN_IF_ERROR(RunLayers(tokens, mode, logits, attend));
  cache.length = n_keys;
  return absl::OkStatus();
}

absl::Status CudaLlamaModel::Forward(std::span<const int32_t> tokens, DeviceAttentionMemory& memory,
                                     LogitsMode mode, std::vector<float>* logits) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n == 0) return absl::InvalidArgumentError("cuda model: empty segment");
  LONGREAD_RETURN_IF_ERROR(EnsureWorkspace(n, 0));
  auto attend = [&](int32_t l) -> absl::Status {
    DeviceSegmentLayerInput in;
    in.layer = l;
    in.n_tokens = n;
    in.q = ws_.q.as<Bf16>();
    in.k = ws_.k.as<Bf16>();
    in.v = ws_.v.as<Bf16>();
    in.x_norm = ws_.x.as<Bf16>();
    LONGREAD_RETURN_IF_ERROR(ForkTo(memory, /*mark=*/true));
    LONGREAD_RETURN_IF_ERROR(memory.AttendAndUpdate(in, ws_.attn.as<Bf16>()));
    return JoinFrom(memory, 0);
  };
  LONGREAD_RETURN_IF_ERROR(RunLayers(tokens, mode, logits, attend));
  memory.EndSegment(n);
  return absl::OkStatus();
}

absl::Status CudaLlamaModel::RunLayers(std::span<const int32_t> tokens, LogitsMode mode,
                                       std::vector<float>* logits,
                                       const std::function<absl::Status(int32_t layer)>& attend) {
  const ModelConfig& c = config_;
  const int64_t n = static_cast<int64_t>(tokens.size());
  for (int32_t t : tokens) {
    if (t < 0 || t >= c.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("cuda model: token id ", t, " outside the vocabulary"));
    }
  }
  cu::Context& ctx = *ctx_;
  const int64_t d = c.d_model;
  LONGREAD_RETURN_IF_ERROR(cu::Upload(ctx, tokens.data(), n * 4, ws_.tokens.as<void>()));
  float* hidden = ws_.hidden.as<float>();
  Bf16* x = ws_.x.as<Bf16>();
  LONGREAD_RETURN_IF_ERROR(
      cu::EmbeddingGather(ctx, embedding_, ws_.tokens.as<int32_t>(), n, hidden));
  for (int32_t l = 0; l < c.n_layers; ++l) {
    const Layer& L = layers_[l];
    LONGREAD_RETURN_IF_ERROR(cu::AddRmsNorm(ctx, hidden, l == 0 ? nullptr : ws_.ffn_out.as<Bf16>(),
                                            L.attn_norm.as<float>(), n, d, c.rms_eps, x));
    LONGREAD_RETURN_IF_ERROR(cu::MatMul(ctx, L.wq, x, n, ws_.q.as<Bf16>()));
    LONGREAD_RETURN_IF_ERROR(cu::MatMul(ctx, L.wk, x, n, ws_.k.as<Bf16>()));
    LONGREAD_RETURN_IF_ERROR(cu::MatMul(ctx, L.wv, x, n, ws_.v.as<Bf16>()));
    LONGREAD_RETURN_IF_ERROR(attend(l));
    LONGREAD_RETURN_IF_ERROR(cu::MatMul(ctx, L.wo, ws_.attn.as<Bf16>(), n, ws_.proj.as<Bf16>()));
    LONGREAD_RETURN_IF_ERROR(cu::AddRmsNorm(ctx, hidden, ws_.proj.as<Bf16>(),
                                            L.ffn_norm.as<float>(), n, d, c.rms_eps, x));
    LONGREAD_RETURN_IF_ERROR(cu::MatMul(ctx, L.gate, x, n, ws_.gate.as<Bf16>()));
    LONGREAD_RETURN_IF_ERROR(cu::MatMul(ctx, L.up, x, n, ws_.up.as<Bf16>()));
    LONGREAD_RETURN_IF_ERROR(
        cu::SiluMul(ctx, ws_.gate.as<Bf16>(), ws_.up.as<Bf16>(), n * c.d_ff, ws_.gate.as<Bf16>()));
    LONGREAD_RETURN_IF_ERROR(
        cu::MatMul(ctx, L.down, ws_.gate.as<Bf16>(), n, ws_.ffn_out.as<Bf16>()));
  }
  if (mode == LogitsMode::kNone) {
    LONGREAD_RETURN_IF_ERROR(cu::AddResidual(ctx, hidden, ws_.ffn_out.as<Bf16>(), n * d));
    return ctx.Synchronize();
  }
  // The last layer's residual add fused with the output norm.
  LONGREAD_RETURN_IF_ERROR(cu::AddRmsNorm(ctx, hidden, ws_.ffn_out.as<Bf16>(),
                                          output_norm_.as<float>(), n, d, c.rms_eps, x));
  const int64_t first = mode == LogitsMode::kLast ? n - 1 : 0, rows = n - first;
  const cu::DeviceMatrix& head = c.tie_embeddings ? embedding_ : lm_head_;
  LONGREAD_RETURN_IF_ERROR(cu::MatMul(ctx, head, x + first * d, rows, ws_.logits.as<float>()));
  logits->resize(rows * c.vocab_size);
  return cu::Download(ctx, ws_.logits.as<void>(), rows * int64_t{c.vocab_size} * 4, logits->data());
}

absl::Status CudaLlamaModel::EnsureJoins(int64_t n) {
  while (static_cast<int64_t>(joins_.size()) < n) {
    auto e = cu::Event::Create();
    if (!e.ok()) return e.status();
    joins_.push_back(std::move(*e));
  }
  return absl::OkStatus();
}

namespace {
bool OnOwnStream(const DeviceAttentionMemory& memory, const cu::Context& ctx) {
  return memory.stream() != nullptr && memory.stream() != ctx.stream();
}
}  // namespace

absl::Status CudaLlamaModel::MarkFork() { return fork_.Record(ctx_->stream()); }

absl::Status CudaLlamaModel::ForkTo(const DeviceAttentionMemory& memory, bool mark) {
  if (!OnOwnStream(memory, *ctx_)) return absl::OkStatus();
  if (mark) LONGREAD_RETURN_IF_ERROR(MarkFork());
  return fork_.MakeWait(memory.stream());
}

absl::Status CudaLlamaModel::JoinFrom(const DeviceAttentionMemory& memory, int64_t index) {
  if (!OnOwnStream(memory, *ctx_)) return absl::OkStatus();
  LONGREAD_RETURN_IF_ERROR(joins_[index].Record(memory.stream()));
  return joins_[index].MakeWait(ctx_->stream());
}

absl::Status CudaLlamaModel::ForwardBatch(std::span<const DocumentSegment> segments) {
  const ModelConfig& c = config_;
  if (segments.empty()) return absl::InvalidArgumentError("cuda model: no segment to read");
  std::vector<int64_t> first_row(segments.size() + 1, 0);
  int64_t logit_rows = 0;
  for (size_t i = 0; i < segments.size(); ++i) {
    const DocumentSegment& seg = segments[i];
    if (seg.tokens.empty() || seg.memory == nullptr) {
      return absl::InvalidArgumentError("cuda model: a batched segment is empty or has no memory");
    }
    if (seg.mode != LogitsMode::kNone && seg.logits == nullptr) {
      return absl::InvalidArgumentError("cuda model: logits asked for without a vector");
    }
    for (size_t j = 0; j < i; ++j) {
      if (segments[j].memory == seg.memory) {
        return absl::InvalidArgumentError("cuda model: one memory twice in a batched pass");
      }
    }
    const int64_t n = static_cast<int64_t>(seg.tokens.size());
    first_row[i + 1] = first_row[i] + n;
    if (seg.mode != LogitsMode::kNone) {
      logit_rows = std::max(logit_rows, seg.mode == LogitsMode::kLast ? int64_t{1} : n);
    }
  }
  const int64_t rows = first_row.back();
  std::vector<int32_t> tokens;
  tokens.reserve(rows);
  for (const DocumentSegment& seg : segments) {
    tokens.insert(tokens.end(), seg.tokens.begin(), seg.tokens.end());
  }
  LONGREAD_RETURN_IF_ERROR(EnsureWorkspace(rows, 0, logit_rows));
  LONGREAD_RETURN_IF_ERROR(EnsureJoins(static_cast<int64_t>(segments.size())));
  const int64_t qd = int64_t{c.n_heads} * c.head_dim, kvd = int64_t{c.n_kv_heads} * c.head_dim,
                d = c.d_model;
  auto attend = [&](int32_t l) -> absl::Status {
    LONGREAD_RETURN_IF_ERROR(MarkFork());
    // Every memory's work is enqueued before any join: documents on their own streams overlap.
    for (size_t i = 0; i < segments.size(); ++i) {
      const int64_t r = first_row[i];
      DeviceSegmentLayerInput in;
      in.layer = l;
      in.n_tokens = first_row[i + 1] - r;
      in.q = ws_.q.as<Bf16>() + r * qd;
      in.k = ws_.k.as<Bf16>() + r * kvd;
      in.v = ws_.v.as<Bf16>() + r * kvd;
      in.x_norm = ws_.x.as<Bf16>() + r * d;
      LONGREAD_RETURN_IF_ERROR(ForkTo(*segments[i].memory, /*mark=*/false));
      LONGREAD_RETURN_IF_ERROR(
          segments[i].memory->AttendAndUpdate(in, ws_.attn.as<Bf16>() + r * qd));
    }
    for (size_t i = 0; i < segments.size(); ++i) {
      LONGREAD_RETURN_IF_ERROR(JoinFrom(*segments[i].memory, static_cast<int64_t>(i)));
    }
    return absl::OkStatus();
  };
  // The layers leave the last residual added (LogitsMode::kNone); each document that wants
  // logits then normalizes its own rows: the same fp32 sums as the fused add + norm.
  LONGREAD_RETURN_IF_ERROR(RunLayers(tokens, LogitsMode::kNone, nullptr, attend));
  for (size_t i = 0; i < segments.size(); ++i) {
    segments[i].memory->EndSegment(first_row[i + 1] - first_row[i]);
  }
  cu::Context& ctx = *ctx_;
  const cu::DeviceMatrix& head = c.tie_embeddings ? embedding_ : lm_head_;
  for (size_t i = 0; i < segments.size(); ++i) {
    const DocumentSegment& seg = segments[i];
    if (seg.mode == LogitsMode::kNone) continue;
    const int64_t n = first_row[i + 1] - first_row[i];
    const int64_t first = first_row[i] + (seg.mode == LogitsMode::kLast ? n - 1 : 0);
    const int64_t count = first_row[i + 1] - first;
    LONGREAD_RETURN_IF_ERROR(cu::AddRmsNorm(ctx, ws_.hidden.as<float>() + first * d, nullptr,
                                            output_norm_.as<float>(), count, d, c.rms_eps,
                                            ws_.x.as<Bf16>() + first * d));
    LONGREAD_RETURN_IF_ERROR(
        cu::MatMul(ctx, head, ws_.x.as<Bf16>() + first * d, count, ws_.logits.as<float>()));
    seg.logits->resize(count * c.vocab_size);
    LONGREAD_RETURN_IF_ERROR(cu::Download(ctx, ws_.logits.as<void>(),
                                          count * int64_t{c.vocab_size} * 4, seg.logits->data()));
  }
  return absl::OkStatus();
}

}  // namespace longread::engine
