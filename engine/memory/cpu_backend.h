// The CPU backend (reading_backend.h): LlamaModel + SparseKMemory, the reference. A document's
// state is a SparseKMemory driven exactly as the runner drove it before the seam, so results are
// bit-identical to the CPU engine's.
#pragma once

#include <memory>

#include "engine/memory/reading_backend.h"

namespace longread::engine {

// Options of one CPU backend (one worker serves many documents with them; nothing process-wide).
struct CpuBackendOptions {
  // The decode matvec's activation format (kernels/ops.h). kDefault: the process default
  // (LONGREAD_INT8_ACTIVATIONS / LONGREAD_INT16_ACTIVATIONS, else fp32).
  kernels::DecodeActivations decode_activations = kernels::DecodeActivations::kDefault;
};

class CpuReadingBackend : public ReadingBackend {
 public:
  // `model` (not owned) must outlive the backend and every document made from it.
  explicit CpuReadingBackend(LlamaModel* model, const CpuBackendOptions& options = {})
      : model_(model), options_(options) {}
  const CpuBackendOptions& options() const { return options_; }

  std::string_view device() const override { return "cpu"; }
  const LlamaModel& host_model() const override { return *model_; }
  int64_t weight_bytes() const override;
  absl::StatusOr<std::unique_ptr<DocumentState>> NewDocument(
      const MemoryConfig& config, std::shared_ptr<const ScorerWeights> scorer,
      kernels::ThreadPool* pool) override;
  absl::Status CaptureQueries(std::span<const int32_t> tokens, kernels::ThreadPool* pool,
                              std::vector<std::vector<float>>* queries) override;

  // The same as NewDocument, which cannot fail on the CPU.
  std::unique_ptr<DocumentState> NewCpuDocument(const MemoryConfig& config,
                                                std::shared_ptr<const ScorerWeights> scorer,
                                                kernels::ThreadPool* pool);

 private:
  LlamaModel* model_;
  CpuBackendOptions options_;
};

}  // namespace longread::engine
