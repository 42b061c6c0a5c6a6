#include "engine/memory/cpu_backend.h"

#include <utility>

namespace longread::engine {
namespace {

// Shows each layer's input to `observe`, then lets `inner` attend.
class ObservedMemory : public AttentionMemory {
 public:
  ObservedMemory(AttentionMemory* inner, const QueryObserver* observe)
      : inner_(inner), observe_(observe) {}
  absl::Status AttendAndUpdate(const SegmentLayerInput& in, float* out,
                               kernels::ThreadPool* pool) override {
    (*observe_)(in.layer, in.n_tokens, in.q);  // before RoPE rotates q in place
    return inner_->AttendAndUpdate(in, out, pool);
  }
  void EndSegment(int64_t n) override { inner_->EndSegment(n); }
  int64_t next_position() const override { return inner_->next_position(); }

 private:
  AttentionMemory* inner_;
  const QueryObserver* observe_;
};

class CpuDocumentState : public DocumentState {
 public:
  CpuDocumentState(LlamaModel* model, const CpuBackendOptions& options, const MemoryConfig& config,
                   std::shared_ptr<const ScorerWeights> scorer, kernels::ThreadPool* pool)
      : model_(model),
        activations_(options.decode_activations),
        pool_(pool),
        memory_(model->config(), config, std::move(scorer)) {}

  absl::Status ReadSegment(std::span<const int32_t> tokens, LogitsMode mode,
                           std::vector<float>* logits, const QueryObserver* observe) override {
    if (observe == nullptr) {
      return model_->Forward(tokens, memory_, mode, logits, pool_, activations_);
    }
    ObservedMemory observed(&memory_, observe);
    return model_->Forward(tokens, observed, mode, logits, pool_, activations_);
  }
  int64_t next_position() const override { return memory_.next_position(); }
  int64_t max_slot_count() const override { return memory_.max_slot_count(); }
  int64_t slot_count(int32_t layer, int32_t kv_head) const override {
    return memory_.slot_count(layer, kv_head);
  }
  int64_t resident_bytes() const override { return memory_.resident_bytes(); }
  void set_archive(BlockArchive* archive) override { memory_.set_archive(archive); }
  const absl::Status& archive_status() const override { return memory_.archive_status(); }
  bool eviction_frozen() const override { return memory_.eviction_frozen(); }
  void set_eviction_frozen(bool frozen) override { memory_.set_eviction_frozen(frozen); }
  absl::Status Rewind(int64_t position) override { return memory_.Rewind(position); }
  void SetTaskQueries(std::vector<std::vector<float>> queries, int64_t n_task) override {
    memory_.SetTaskQueries(std::move(queries), n_task);
  }
  absl::Status FetchHeld() override { return absl::OkStatus(); }
  const HeadMemorySnapshot& held(int32_t layer, int32_t kv_head) const override {
    return memory_.held(layer, kv_head);
  }
  absl::StatusOr<int64_t> InsertRecalled(int32_t layer, int32_t kv_head,
                                         const std::vector<ArchivedBlock>& blocks) override {
    return memory_.InsertRecalled(layer, kv_head, blocks);
  }
  absl::Status ExportTo(MemorySnapshot* snapshot) const override {
    memory_.ExportTo(snapshot);
    return absl::OkStatus();
  }
  absl::Status ImportFrom(const MemorySnapshot& snapshot) override {
    return memory_.ImportFrom(snapshot);
  }
  const SparseKMemory* host_memory() const override { return &memory_; }

 private:
  LlamaModel* model_;
  kernels::DecodeActivations activations_;
  kernels::ThreadPool* pool_;
  SparseKMemory memory_;
};

}  // namespace

std::unique_ptr<DocumentState> CpuReadingBackend::NewCpuDocument(
    const MemoryConfig& config, std::shared_ptr<const ScorerWeights> scorer,
    kernels::ThreadPool* pool) {
  return std::make_unique<CpuDocumentState>(model_, options_, config, std::move(scorer), pool);
}

absl::StatusOr<std::unique_ptr<DocumentState>> CpuReadingBackend::NewDocument(
    const MemoryConfig& config, std::shared_ptr<const ScorerWeights> scorer,
    kernels::ThreadPool* pool) {
  return NewCpuDocument(config, std::move(scorer), pool);
}

int64_t CpuReadingBackend::weight_bytes() const {
  const ModelFile& file = model_->file();
  int64_t bytes = 0;
  for (const std::string& name : file.TensorNames()) {
    if (auto tensor = file.Tensor(name); tensor.ok()) bytes += static_cast<int64_t>(tensor->bytes);
  }
  return bytes;
}

absl::Status CpuReadingBackend::CaptureQueries(std::span<const int32_t> tokens,
                                               kernels::ThreadPool* pool,
                                               std::vector<std::vector<float>>* queries) {
  const ModelConfig& c = model_->config();
  const int64_t width = int64_t{c.n_heads} * c.head_dim;
  queries->assign(c.n_layers, {});
  SparseKMemory dense(c, MemoryConfig::Dense(), nullptr);
  const QueryObserver record = [&](int32_t layer, int64_t n, const float* q) {
    (*queries)[layer].assign(q, q + n * width);
  };
  ObservedMemory observed(&dense, &record);
  return model_->Forward(tokens, observed, LogitsMode::kNone, nullptr, pool,
                         options_.decode_activations);
}

}  // namespace longread::engine
