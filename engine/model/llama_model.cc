#include "engine/model/llama_model.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/ops.h"

namespace longread::engine {
namespace {

absl::StatusOr<kernels::MatrixView> Matrix(const ModelFile& file, const std::string& name,
                                           int64_t rows, int64_t cols) {
  auto t = file.Tensor(name);
  if (!t.ok()) return t.status();
  if (t->dims.size() != 2 || t->dims[0] != cols || t->dims[1] != rows) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model: tensor '", name, "' has the wrong shape; expected [", cols, ", ", rows, "]"));
  }
  return kernels::MatrixView{t->type, rows, cols, t->data};
}

// Norm weights and biases are small: keep them as fp32 whatever the file stores.
absl::StatusOr<std::vector<float>> Vector(const ModelFile& file, const std::string& name,
                                          int64_t n) {
  auto t = file.Tensor(name);
  if (!t.ok()) return t.status();
  if (t->dims.size() != 1 || t->dims[0] != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("model: tensor '", name, "' should be a vector of ", n, " elements"));
  }
  std::vector<float> out(n);
  kernels::DequantizeRow(kernels::MatrixView{t->type, 1, n, t->data}, 0, out.data());
  return out;
}

// Charges the time since the previous mark to an op; does nothing without a profile.
class OpTimer {
 public:
  explicit OpTimer(ForwardProfile* profile) : profile_(profile) {
    if (profile_ != nullptr) last_ = std::chrono::steady_clock::now();
  }
  void Mark(ForwardProfile::Op op) {
    if (profile_ == nullptr) return;
    const auto now = std::chrono::steady_clock::now();
    profile_->seconds[op] += std::chrono::duration<double>(now - last_).count();
    last_ = now;
  }

 private:
  ForwardProfile* profile_;
  std::chrono::steady_clock::time_point last_;
};

}  // namespace

const char* ForwardProfile::Name(int op) {
  static constexpr const char* kNames[kOpCount] = {
      "embedding",      "attn_norm", "qkv_matmul",  "attention",    "output_proj", "ffn_norm",
      "gate_up_matmul", "silu_mul",  "down_matmul", "residual_add", "lm_head"};
  return op >= 0 && op < kOpCount ? kNames[op] : "unknown";
}

absl::StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::Load(std::unique_ptr<ModelFile> file) {
  if (file == nullptr) return absl::InvalidArgumentError("model: no file");
  ModelConfig config = file->config();
  std::unique_ptr<LlamaModel> model(new LlamaModel(std::move(file), std::move(config)));
  if (auto s = model->BindWeights(); !s.ok()) return s;
  return model;
}

absl::Status LlamaModel::BindWeights() {
  const ModelConfig& c = config_;
  const int64_t d = c.d_model, qd = int64_t{c.n_heads} * c.head_dim,
                kvd = int64_t{c.n_kv_heads} * c.head_dim;
  auto embd = Matrix(*file_, "token_embd.weight", c.vocab_size, d);
  if (!embd.ok()) return embd.status();
  token_embd_ = *embd;
  if (c.tie_embeddings) {
    lm_head_ = token_embd_;
  } else {
    auto head = Matrix(*file_, "output.weight", c.vocab_size, d);
    if (!head.ok()) return head.status();
    lm_head_ = *head;
  }
  auto norm = Vector(*file_, "output_norm.weight", d);
  if (!norm.ok()) return norm.status();
  output_norm_ = std::move(*norm);

  layers_.resize(c.n_layers);
  for (int32_t l = 0; l < c.n_layers; ++l) {
    const std::string p = absl::StrCat("blk.", l, ".");
    Layer& L = layers_[l];
    struct {
      kernels::MatrixView* dst;
      const char* name;
      int64_t rows, cols;
    } mats[] = {{&L.wq, "attn_q.weight", qd, d},           {&L.wk, "attn_k.weight", kvd, d},
                {&L.wv, "attn_v.weight", kvd, d},          {&L.wo, "attn_output.weight", d, qd},
                {&L.w_gate, "ffn_gate.weight", c.d_ff, d}, {&L.w_up, "ffn_up.weight", c.d_ff, d},
                {&L.w_down, "ffn_down.weight", d, c.d_ff}};
    for (auto& m : mats) {
      auto v = Matrix(*file_, p + m.name, m.rows, m.cols);
      if (!v.ok()) return v.status();
      *m.dst = *v;
    }
    auto an = Vector(*file_, p + "attn_norm.weight", d);
    if (!an.ok()) return an.status();
    L.attn_norm = std::move(*an);
    auto fn = Vector(*file_, p + "ffn_norm.weight", d);
    if (!fn.ok()) return fn.status();
    L.ffn_norm = std::move(*fn);
    if (c.attn_qkv_bias) {
      for (auto [dst, name, n] :
           {std::tuple{&L.bq, "attn_q.bias", qd}, std::tuple{&L.bk, "attn_k.bias", kvd},
            std::tuple{&L.bv, "attn_v.bias", kvd}}) {
        auto b = Vector(*file_, p + name, n);
        if (!b.ok()) return b.status();
        *dst = std::move(*b);
      }
    }
  }
  return absl::OkStatus();
}

void LlamaModel::EnsureWorkspace(int64_t n) {
  if (n <= ws_.capacity) return;
  const ModelConfig& c = config_;
  const int64_t qd = int64_t{c.n_heads} * c.head_dim, kvd = int64_t{c.n_kv_heads} * c.head_dim;
  ws_.capacity = n;
  ws_.hidden.resize(n * c.d_model);
  ws_.x_norm.resize(n * c.d_model);
  ws_.q.resize(n * qd);
  ws_.k.resize(n * kvd);
  ws_.v.resize(n * kvd);
  ws_.attn.resize(n * qd);
  ws_.proj.resize(n * c.d_model);
  ws_.gate.resize(n * c.d_ff);
  ws_.up.resize(n * c.d_ff);
}

absl::Status LlamaModel::Forward(std::span<const int32_t> tokens, AttentionMemory& memory,
                                 LogitsMode mode, std::vector<float>* logits,
                                 kernels::ThreadPool* pool,
                                 kernels::DecodeActivations activations) {
  const ModelConfig& c = config_;
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n == 0) return absl::InvalidArgumentError("model: empty segment");
  for (int32_t t : tokens) {
    if (t < 0 || t >= c.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("model: token id ", t, " outside the vocabulary [0, ", c.vocab_size, ")"));
    }
  }
  OpTimer timer(profile_);
  if (profile_ != nullptr) {
    ++profile_->forwards;
    profile_->tokens += n;
  }
  EnsureWorkspace(n);
  const int64_t d = c.d_model;
  float* h = ws_.hidden.data();
  for (int64_t t = 0; t < n; ++t) kernels::DequantizeRow(token_embd_, tokens[t], h + t * d);
  timer.Mark(ForwardProfile::kEmbedding);

  for (int32_t l = 0; l < c.n_layers; ++l) {
    const Layer& L = layers_[l];
    kernels::RmsNorm(h, L.attn_norm.data(), n, d, c.rms_eps, ws_.x_norm.data());
    timer.Mark(ForwardProfile::kAttnNorm);
    kernels::MatMul(L.wq, ws_.x_norm.data(), n, ws_.q.data(), pool, activations);
    kernels::MatMul(L.wk, ws_.x_norm.data(), n, ws_.k.data(), pool, activations);
    kernels::MatMul(L.wv, ws_.x_norm.data(), n, ws_.v.data(), pool, activations);
    if (!L.bq.empty()) {
      for (int64_t t = 0; t < n; ++t) {
        kernels::Add(ws_.q.data() + t * L.wq.rows, L.bq.data(), L.wq.rows,
                     ws_.q.data() + t * L.wq.rows);
        kernels::Add(ws_.k.data() + t * L.wk.rows, L.bk.data(), L.wk.rows,
                     ws_.k.data() + t * L.wk.rows);
        kernels::Add(ws_.v.data() + t * L.wv.rows, L.bv.data(), L.wv.rows,
                     ws_.v.data() + t * L.wv.rows);
      }
    }
    timer.Mark(ForwardProfile::kQkvMatMul);
    SegmentLayerInput in{l, n, ws_.q.data(), ws_.k.data(), ws_.v.data(), ws_.x_norm.data()};
    if (auto s = memory.AttendAndUpdate(in, ws_.attn.data(), pool); !s.ok()) return s;
    timer.Mark(ForwardProfile::kAttention);
    kernels::MatMul(L.wo, ws_.attn.data(), n, ws_.proj.data(), pool, activations);
    timer.Mark(ForwardProfile::kOutputProj);
    kernels::Add(h, ws_.proj.data(), n * d, h);
    timer.Mark(ForwardProfile::kResidual);

    kernels::RmsNorm(h, L.ffn_norm.data(), n, d, c.rms_eps, ws_.x_norm.data());
    timer.Mark(ForwardProfile::kFfnNorm);
    kernels::MatMul(L.w_gate, ws_.x_norm.data(), n, ws_.gate.data(), pool, activations);
    kernels::MatMul(L.w_up, ws_.x_norm.data(), n, ws_.up.data(), pool, activations);
    timer.Mark(ForwardProfile::kGateUpMatMul);
    kernels::SiluMul(ws_.gate.data(), ws_.up.data(), n * c.d_ff, ws_.gate.data());
    timer.Mark(ForwardProfile::kSilu);
    kernels::MatMul(L.w_down, ws_.gate.data(), n, ws_.proj.data(), pool, activations);
    timer.Mark(ForwardProfile::kDownMatMul);
    kernels::Add(h, ws_.proj.data(), n * d, h);
    timer.Mark(ForwardProfile::kResidual);
  }
  memory.EndSegment(n);

  if (mode == LogitsMode::kNone) return absl::OkStatus();
  const int64_t first = mode == LogitsMode::kLast ? n - 1 : 0;
  const int64_t rows = n - first;
  kernels::RmsNorm(h + first * d, output_norm_.data(), rows, d, c.rms_eps, ws_.x_norm.data());
  logits->resize(rows * c.vocab_size);
  kernels::MatMul(lm_head_, ws_.x_norm.data(), rows, logits->data(), pool, activations);
  timer.Mark(ForwardProfile::kLmHead);
  return absl::OkStatus();
}

}  // namespace longread::engine
