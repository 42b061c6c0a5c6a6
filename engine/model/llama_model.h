// The Llama-family decoder (Llama, SmolLM, Qwen2, Mistral-style) on the CPU: RMSNorm, RoPE, GQA,
// SwiGLU. Weights stay in the file's own formats (mmapped GGUF blocks); the kernels dequantize on
// the fly. A forward pass handles one segment of consecutive tokens as matrix-matrix work; the
// attention over the past is delegated to an AttentionMemory.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/attention_memory.h"
#include "engine/model_files/model_config.h"
#include "engine/model_files/model_file.h"
#include "kernels/dtype.h"
#include "kernels/ops.h"
#include "kernels/thread_pool.h"

namespace longread::engine {

// Wall time of each op group, summed over every Forward while attached (set_profile). Off by
// default: the unprofiled path pays one null-pointer test per op group.
struct ForwardProfile {
  enum Op {
    kEmbedding,
    kAttnNorm,
    kQkvMatMul,  // with the QKV biases, if any
    kAttention,  // the memory's AttendAndUpdate: RoPE, selection, attention, eviction
    kOutputProj,
    kFfnNorm,
    kGateUpMatMul,
    kSilu,
    kDownMatMul,
    kResidual,
    kLmHead,  // output norm and LM head
    kOpCount
  };
  static const char* Name(int op);
  double seconds[kOpCount] = {};
  int64_t forwards = 0;
  int64_t tokens = 0;
};

enum class LogitsMode {
  kNone,  // reading a document: skip the LM head entirely
  kLast,  // generation: logits of the segment's last token only
  kAll,   // evaluation (perplexity, oracle tests): logits of every token
};

class LlamaModel {
 public:
  static absl::StatusOr<std::unique_ptr<LlamaModel>> Load(std::unique_ptr<ModelFile> file);

  const ModelConfig& config() const { return config_; }
  const ModelFile& file() const { return *file_; }
  const std::string& fingerprint() const { return file_->fingerprint(); }

  // Runs `tokens` (a segment following what `memory` has seen) through every layer.
  // `logits` receives 0, 1 or tokens.size() rows of vocab_size floats, per `mode`.
  // `activations`: the decode matvec's activation format (kernels/ops.h), the caller's backend
  // option.
  absl::Status Forward(
      std::span<const int32_t> tokens, AttentionMemory& memory, LogitsMode mode,
      std::vector<float>* logits, kernels::ThreadPool* pool,
      kernels::DecodeActivations activations = kernels::DecodeActivations::kDefault);

  // Accumulates op timings into `profile` from now on; null turns profiling off.
  void set_profile(ForwardProfile* profile) { profile_ = profile; }

 private:
  struct Layer {
    std::vector<float> attn_norm, ffn_norm;
    kernels::MatrixView wq, wk, wv, wo, w_gate, w_up, w_down;
    std::vector<float> bq, bk, bv;  // empty unless the architecture has QKV biases
  };
  // Activations for up to `capacity` tokens, reused across segments.
  struct Workspace {
    int64_t capacity = 0;
    std::vector<float> hidden, x_norm, q, k, v, attn, proj, gate, up;
  };

  LlamaModel(std::unique_ptr<ModelFile> file, ModelConfig config)
      : file_(std::move(file)), config_(std::move(config)) {}
  absl::Status BindWeights();
  void EnsureWorkspace(int64_t n_tokens);

  std::unique_ptr<ModelFile> file_;
  ModelConfig config_;
  kernels::MatrixView token_embd_, lm_head_;
  std::vector<float> output_norm_;
  std::vector<Layer> layers_;
  Workspace ws_;
  ForwardProfile* profile_ = nullptr;
};

}  // namespace longread::engine
