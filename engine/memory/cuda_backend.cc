#include "engine/memory/cuda_backend.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/memory/cuda_sparsek_memory.h"
#include "kernels/half.h"

namespace longread::engine {
namespace cu = kernels::cuda;
namespace {

// Downloads each layer's queries (bf16, before RoPE) for `observe`, then lets `inner` attend.
class ObservedDeviceMemory : public DeviceAttentionMemory {
 public:
  ObservedDeviceMemory(cu::Context* ctx, const ModelConfig& model, DeviceAttentionMemory* inner,
                       const QueryObserver* observe)
      : ctx_(ctx),
        width_(int64_t{model.n_heads} * model.head_dim),
        inner_(inner),
        observe_(observe) {}
  absl::Status AttendAndUpdate(const DeviceSegmentLayerInput& in, cu::Bf16* out) override {
    const int64_t n = in.n_tokens * width_;
    bits_.resize(n);
    q_.resize(n);
    if (auto s = cu::Download(*ctx_, in.q, n * 2, bits_.data()); !s.ok()) return s;
    for (int64_t i = 0; i < n; ++i) q_[i] = kernels::BFloat16ToFloat(bits_[i]);
    (*observe_)(in.layer, in.n_tokens, q_.data());
    return inner_->AttendAndUpdate(in, out);
  }
  void EndSegment(int64_t n) override { inner_->EndSegment(n); }
  int64_t next_position() const override { return inner_->next_position(); }
  void* stream() const override { return inner_->stream(); }

 private:
  cu::Context* ctx_;
  int64_t width_;
  DeviceAttentionMemory* inner_;
  const QueryObserver* observe_;
  std::vector<uint16_t> bits_;
  std::vector<float> q_;
};

class CudaDocumentState : public DocumentState {
 public:
  CudaDocumentState(cu::Context* ctx, CudaLlamaModel* model,
                    std::unique_ptr<cu::Context> memory_ctx,
                    std::unique_ptr<CudaSparseKMemory> memory)
      : ctx_(ctx), model_(model), memory_ctx_(std::move(memory_ctx)), memory_(std::move(memory)) {}

  const CudaLlamaModel* model() const { return model_; }
  CudaSparseKMemory& memory() { return *memory_; }
  void ForgetHeld() { held_valid_ = false; }

  absl::Status ReadSegment(std::span<const int32_t> tokens, LogitsMode mode,
                           std::vector<float>* logits, const QueryObserver* observe) override {
    held_valid_ = false;
    if (observe == nullptr) return model_->Forward(tokens, *memory_, mode, logits);
    ObservedDeviceMemory observed(ctx_, model_->config(), memory_.get(), observe);
    return model_->Forward(tokens, observed, mode, logits);
  }
  int64_t next_position() const override { return memory_->next_position(); }
  int64_t max_slot_count() const override { return memory_->max_slot_count(); }
  int64_t slot_count(int32_t layer, int32_t kv_head) const override {
    return memory_->slot_count(layer, kv_head);
  }
  int64_t resident_bytes() const override { return memory_->resident_bytes(); }
  void set_archive(BlockArchive* archive) override { memory_->set_archive(archive); }
  const absl::Status& archive_status() const override { return memory_->archive_status(); }
  bool eviction_frozen() const override { return memory_->eviction_frozen(); }
  void set_eviction_frozen(bool frozen) override { memory_->set_eviction_frozen(frozen); }
  absl::Status Rewind(int64_t position) override {
    held_valid_ = false;
    return memory_->Rewind(position);
  }
  void SetTaskQueries(std::vector<std::vector<float>> queries, int64_t n_task) override {
    memory_->SetTaskQueries(std::move(queries), n_task);
  }
  absl::Status FetchHeld() override {
    if (held_valid_) return absl::OkStatus();
    if (auto s = memory_->ExportTo(&held_); !s.ok()) return s;
    held_valid_ = true;
    return absl::OkStatus();
  }
  const HeadMemorySnapshot& held(int32_t layer, int32_t kv_head) const override {
    return held_.heads[layer * held_.n_kv_heads + kv_head];
  }
  absl::StatusOr<int64_t> InsertRecalled(int32_t layer, int32_t kv_head,
                                         const std::vector<ArchivedBlock>& blocks) override {
    held_valid_ = false;
    return memory_->InsertRecalled(layer, kv_head, blocks);
  }
  absl::Status ExportTo(MemorySnapshot* snapshot) const override {
    return memory_->ExportTo(snapshot);
  }
  absl::Status ImportFrom(const MemorySnapshot& snapshot) override {
    held_valid_ = false;
    return memory_->ImportFrom(snapshot);
  }

 private:
  cu::Context* ctx_;
  CudaLlamaModel* model_;
  std::unique_ptr<cu::Context> memory_ctx_;  // the memory's own stream; outlives the memory
  std::unique_ptr<CudaSparseKMemory> memory_;
  MemorySnapshot held_;  // FetchHeld's download
  bool held_valid_ = false;
};

}  // namespace

absl::StatusOr<std::unique_ptr<CudaReadingBackend>> CudaReadingBackend::Create(
    const LlamaModel* model, int device) {
  if (!cu::DeviceAvailable()) {
    return absl::FailedPreconditionError(
        "--device cuda: no CUDA device is visible to this process (no driver or no GPU); use "
        "--device cpu");
  }
  auto ctx = cu::Context::Create(device);
  if (!ctx.ok()) return ctx.status();
  std::unique_ptr<CudaReadingBackend> backend(
      new CudaReadingBackend(model, std::move(*ctx), device));
  int64_t free_before = 0, free_after = 0, total = 0;
  if (auto s = backend->DeviceMemory(&free_before, &total); !s.ok()) return s;
  auto gpu_model = CudaLlamaModel::Create(*model, backend->ctx_.get());
  if (!gpu_model.ok()) return gpu_model.status();
  backend->gpu_model_ = std::move(*gpu_model);
  // Another process allocating meanwhile would be counted too: a gauge, not an invariant.
  if (auto s = backend->DeviceMemory(&free_after, &total); !s.ok()) return s;
  backend->weight_bytes_ = std::max<int64_t>(0, free_before - free_after);
  return backend;
}

absl::StatusOr<std::unique_ptr<DocumentState>> CudaReadingBackend::NewDocument(
    const MemoryConfig& config, std::shared_ptr<const ScorerWeights> scorer,
    kernels::ThreadPool* /*pool: the device does the work*/) {
  // Each document's memory enqueues on a stream of its own (a context without GEMM support: the
  // model's context multiplies the weights), so that documents read in one pass overlap.
  auto memory_ctx = cu::Context::Create(device_, /*gemm=*/false);
  if (!memory_ctx.ok()) return memory_ctx.status();
  auto memory =
      CudaSparseKMemory::Create(memory_ctx->get(), model_->config(), config, std::move(scorer));
  if (!memory.ok()) return memory.status();
  return std::make_unique<CudaDocumentState>(ctx_.get(), gpu_model_.get(), std::move(*memory_ctx),
                                             std::move(*memory));
}

absl::Status CudaReadingBackend::ReadSegments(std::span<const SegmentRead> reads) {
  if (auto s = CheckSegmentReads(reads); !s.ok()) return s;
  std::vector<CudaLlamaModel::DocumentSegment> segments;
  segments.reserve(reads.size());
  for (const SegmentRead& r : reads) {
    auto* document = dynamic_cast<CudaDocumentState*>(r.document);
    if (document == nullptr || document->model() != gpu_model_.get()) {
      return absl::InvalidArgumentError("ReadSegments: a document of another backend");
    }
    document->ForgetHeld();
    segments.push_back({r.tokens, &document->memory(), r.mode, r.logits});
  }
  return gpu_model_->ForwardBatch(segments);
}

absl::Status CudaReadingBackend::CaptureQueries(std::span<const int32_t> tokens,
                                                kernels::ThreadPool* /*pool*/,
                                                std::vector<std::vector<float>>* queries) {
  const ModelConfig& c = model_->config();
  const int64_t width = int64_t{c.n_heads} * c.head_dim;
  queries->assign(c.n_layers, {});
  auto dense = CudaSparseKMemory::Create(ctx_.get(), c, MemoryConfig::Dense(), nullptr);
  if (!dense.ok()) return dense.status();
  const QueryObserver record = [&](int32_t layer, int64_t n, const float* q) {
    (*queries)[layer].assign(q, q + n * width);
  };
  ObservedDeviceMemory observed(ctx_.get(), c, dense->get(), &record);
  return gpu_model_->Forward(tokens, observed, LogitsMode::kNone, nullptr);
}

absl::Status CudaReadingBackend::DeviceMemory(int64_t* free_bytes, int64_t* total_bytes) const {
  size_t free = 0, total = 0;
  if (const cudaError_t e = cudaMemGetInfo(&free, &total); e != cudaSuccess) {
    return absl::InternalError(absl::StrCat("cudaMemGetInfo: ", cudaGetErrorString(e)));
  }
  *free_bytes = static_cast<int64_t>(free);
  *total_bytes = static_cast<int64_t>(total);
  return absl::OkStatus();
}

}  // namespace longread::engine
