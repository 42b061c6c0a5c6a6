// The model on the GPU: a LlamaModel's weights resident on the device (dequantized once to
// bf16), and a forward pass of one segment over device buffers, attending either through a dense
// device KV cache or through a DeviceAttentionMemory (the SparseK memory on the device,
// engine/memory/cuda_sparsek_memory.h): the twin of the CPU's AttentionMemory seam. The CPU
// LlamaModel stays the reference.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/llama_model.h"
#include "kernels/cuda/cuda_ops.h"

namespace longread::engine {

// One layer's view of a segment, on the device (bf16): AttentionMemory's SegmentLayerInput.
struct DeviceSegmentLayerInput {
  int32_t layer = 0;
  int64_t n_tokens = 0;
  kernels::cuda::Bf16* q = nullptr;        // [n][n_heads][head_dim], un-rotated; rotated in place
  const kernels::cuda::Bf16* k = nullptr;  // [n][n_kv_heads][head_dim], un-rotated
  const kernels::cuda::Bf16* v = nullptr;  // [n][n_kv_heads][head_dim]
  const kernels::cuda::Bf16* x_norm = nullptr;  // [n][d_model]: the attention-norm output
};

// AttentionMemory over device buffers: attends, then folds the segment's keys into the memory.
class DeviceAttentionMemory {
 public:
  virtual ~DeviceAttentionMemory() = default;
  virtual absl::Status AttendAndUpdate(const DeviceSegmentLayerInput& in,
                                       kernels::cuda::Bf16* out) = 0;
  virtual void EndSegment(int64_t n_tokens) = 0;
  virtual int64_t next_position() const = 0;
  // The cudaStream_t this memory enqueues on; null: the model's. The model orders a memory on
  // another stream after the layer's projections and its own next op after the memory's work
  // (events), so that in a batched pass the small memory kernels of many documents overlap.
  virtual void* stream() const { return nullptr; }
};

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
  // The same through `memory`, which attends and absorbs the segment (then EndSegment).
  absl::Status Forward(std::span<const int32_t> tokens, DeviceAttentionMemory& memory,
                       LogitsMode mode, std::vector<float>* logits);

  // One document's segment in a batched pass.
  struct DocumentSegment {
    std::span<const int32_t> tokens;  // the segment after what `memory` holds; not empty
    DeviceAttentionMemory* memory = nullptr;
    LogitsMode mode = LogitsMode::kNone;
    std::vector<float>* logits = nullptr;  // as in Forward, for this document's rows
  };
  // Forward for several documents at once, each as Forward(tokens, *memory, mode, logits) would
  // read it: the embedding, norms and every weight's GEMM run once over the concatenated rows of
  // all segments (of any lengths), and each memory attends and absorbs its own row range, on its
  // own stream where it has one. The memories must be distinct.
  absl::Status ForwardBatch(std::span<const DocumentSegment> segments);

  const ModelConfig& config() const { return config_; }

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
  // `logit_rows` < 0: n_tokens.
  absl::Status EnsureWorkspace(int64_t n_tokens, int64_t n_keys, int64_t logit_rows = -1);
  // A memory on its own stream: MarkFork marks the model's stream after a layer's projections,
  // ForkTo makes `memory`'s stream wait for that mark (marking first when `mark`), JoinFrom
  // makes the model's stream wait for what `memory` has enqueued (joins_[index]). ForkTo and
  // JoinFrom do nothing for a memory on the model's stream.
  absl::Status MarkFork();
  absl::Status ForkTo(const DeviceAttentionMemory& memory, bool mark);
  absl::Status JoinFrom(const DeviceAttentionMemory& memory, int64_t index);
  absl::Status EnsureJoins(int64_t n);
  // Every layer with `attend(layer)` reading ws_.q/k/v/x and writing ws_.attn, then the logits.
  absl::Status RunLayers(std::span<const int32_t> tokens, LogitsMode mode,
                         std::vector<float>* logits,
                         const std::function<absl::Status(int32_t layer)>& attend);

  ModelConfig config_;
  kernels::cuda::Context* ctx_;
  kernels::cuda::DeviceMatrix embedding_, lm_head_;
  kernels::cuda::DeviceBuffer output_norm_;
  std::vector<Layer> layers_;
  Workspace ws_;
  int64_t keys_capacity_ = 0;  // of ws_.from / ws_.until, per KV head
  // Fork (the layer's projections are done) and one join per document of a pass.
  kernels::cuda::Event fork_;
  std::vector<kernels::cuda::Event> joins_;
};

}  // namespace longread::engine
