// The model on the GPU: a LlamaModel's weights resident on the device (dequantized once to
// bf16), and a forward pass of one segment over device buffers with a dense device KV cache.
// The first piece of the CUDA backend (issue 19): the CPU LlamaModel stays the reference; the
// SparseK memory (scorer, selection, eviction, archive) is not on the device yet, so this reads
// with a dense cache, which is the CPU engine's MemoryConfig::Dense().
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/llama_model.h"
#include "kernels/cuda/cuda_ops.h"

namespace longread::engine {

class CudaLlamaModel {
 public:
  // Uploads `model`'s weights to the device of `ctx` (not owned; must outlive this).
  static absl::StatusOr<std::unique_ptr<CudaLlamaModel>> Create(const LlamaModel& model,
                                                                kernels::cuda::Context* ctx);

  // Every layer's keys (rotated at their positions) and values, head-major, on the device.
  struct Cache {
    int64_t capacity = 0;
    int64_t length = 0;                             // tokens read so far = the next position
    std::vector<kernels::cuda::DeviceBuffer> k, v;  // per layer: [kv_head][capacity][head_dim]
  };
  absl::StatusOr<Cache> NewCache(int64_t capacity) const;

  // Runs `tokens` (the segment after what `cache` holds) through every layer and appends their
  // keys and values to `cache`. `logits` receives 0, 1 or tokens.size() rows, as in LlamaModel.
  absl::Status Forward(std::span<const int32_t> tokens, Cache& cache, LogitsMode mode,
                       std::vector<float>* logits);

 private:
  struct Layer {
    kernels::cuda::DeviceMatrix wq, wk, wv, wo, gate, up, down;
    kernels::cuda::DeviceBuffer attn_norm, ffn_norm;  // fp32
  };
  struct Workspace {
    int64_t capacity = 0;
    kernels::cuda::DeviceBuffer tokens, positions, from, until;
    kernels::cuda::DeviceBuffer hidden, x, q, k, v, attn, proj, gate, up, ffn_out, logits;
  };

  CudaLlamaModel(const ModelConfig& config, kernels::cuda::Context* ctx)
      : config_(config), ctx_(ctx) {}
  absl::Status EnsureWorkspace(int64_t n_tokens, int64_t n_keys);

  ModelConfig config_;
  kernels::cuda::Context* ctx_;
  kernels::cuda::DeviceMatrix embedding_, lm_head_;
  kernels::cuda::DeviceBuffer output_norm_;
  std::vector<Layer> layers_;
  Workspace ws_;
  int64_t keys_capacity_ = 0;  // of ws_.from / ws_.until, per KV head
};

}  // namespace longread::engine
