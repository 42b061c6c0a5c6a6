// The CUDA backend (reading_backend.h): CudaLlamaModel + CudaSparseKMemory. The weights are
// uploaded once (bf16) and shared by every document; each document gets its own device memory.
// What crosses the bus per segment: the tokens, the memory's block selection round trips
// (cuda_sparsek_memory.h), evicted rows for the archive, and in generation one row of logits per
// token: sampling stays on the host (the CPU's Sampler, so both backends sample alike).
#pragma once

#include <memory>

#include "engine/memory/reading_backend.h"
#include "engine/model/cuda_llama_model.h"
#include "kernels/cuda/cuda_ops.h"

namespace longread::engine {

class CudaReadingBackend : public ReadingBackend {
 public:
  // Uploads the weights of `model` (not owned; outlives the backend: its file and tokenizer
  // metadata are read from it) to CUDA device `device`. FailedPrecondition when no CUDA device is
  // visible.
  static absl::StatusOr<std::unique_ptr<CudaReadingBackend>> Create(const LlamaModel* model,
                                                                    int device = 0);

  std::string_view device() const override { return "cuda"; }
  const LlamaModel& host_model() const override { return *model_; }
  int64_t weight_bytes() const override { return weight_bytes_; }
  absl::StatusOr<std::unique_ptr<DocumentState>> NewDocument(
      const MemoryConfig& config, std::shared_ptr<const ScorerWeights> scorer,
      kernels::ThreadPool* pool) override;
  absl::Status CaptureQueries(std::span<const int32_t> tokens, kernels::ThreadPool* pool,
                              std::vector<std::vector<float>>* queries) override;
  // One forward pass over every read's rows (CudaLlamaModel::ForwardBatch); each document's
  // memory has its own stream (NewDocument), so their memory work overlaps.
  absl::Status ReadSegments(std::span<const SegmentRead> reads) override;

  // Free and total bytes of the device (cudaMemGetInfo).
  absl::Status DeviceMemory(int64_t* free_bytes, int64_t* total_bytes) const;

 private:
  CudaReadingBackend(const LlamaModel* model, std::unique_ptr<kernels::cuda::Context> ctx,
                     int device)
      : model_(model), ctx_(std::move(ctx)), device_(device) {}

  const LlamaModel* model_;
  std::unique_ptr<kernels::cuda::Context> ctx_;
  int device_ = 0;
  std::unique_ptr<CudaLlamaModel> gpu_model_;
  int64_t weight_bytes_ = 0;
};

}  // namespace longread::engine
