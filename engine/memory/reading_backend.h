// The backend seam (issue 19): where a document is read. A ReadingBackend holds the model's
// weights once per process (mmapped host blocks for the CPU, bf16 device buffers for CUDA); each
// document gets a DocumentState from it: its own SparseK memory in the backend's memory space and
// the forward pass of a segment through it. The runner drives a DocumentState and never sees
// where it lives. The seam is at the level of model + memory, as ggml's backend buffers are, not
// per op: a device backend keeps weights, activations and the memory on the device, and only
// tokens go in and one row of logits (generation) or a layer's queries (task, recall) come out.
//
// Threading is the model's: a backend runs one forward pass at a time (one activation
// workspace), so every DocumentState::ReadSegment, ReadingBackend::ReadSegments and
// ReadingBackend::CaptureQueries of one backend must hold the caller's per-model lock. Many
// DocumentStates share one backend; ReadSegments reads a segment of each of several of them in
// one pass.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/memory/block_archive.h"
#include "engine/memory/snapshot.h"
#include "engine/memory/sparsek_memory.h"
#include "engine/model/llama_model.h"
#include "engine/scorer/scorer.h"
#include "kernels/thread_pool.h"

namespace longread::engine {

// One layer's un-rotated query vectors, [n_tokens][n_heads][head_dim] fp32 on the host.
using QueryObserver = std::function<void(int32_t layer, int64_t n_tokens, const float* q)>;

// One document's memory on a backend, and the reading of segments through it. The operations
// are SparseKMemory's (sparsek_memory.h says what each means); a device backend moves data
// across the bus only where a signature has host data.
class DocumentState {
 public:
  virtual ~DocumentState() = default;

  // Reads `tokens`, the segment after what the memory holds, through the model and the memory.
  // `logits` receives 0, 1 or tokens.size() rows of vocab_size floats on the host, per `mode`.
  // `observe` (may be null) is shown each layer's queries before attention.
  virtual absl::Status ReadSegment(std::span<const int32_t> tokens, LogitsMode mode,
                                   std::vector<float>* logits, const QueryObserver* observe) = 0;

  virtual int64_t next_position() const = 0;
  virtual int64_t max_slot_count() const = 0;
  virtual int64_t slot_count(int32_t layer, int32_t kv_head) const = 0;
  // Bytes this document holds in the backend's memory space (device bytes for CUDA).
  virtual int64_t resident_bytes() const = 0;

  virtual void set_archive(BlockArchive* archive) = 0;
  virtual const absl::Status& archive_status() const = 0;
  virtual bool eviction_frozen() const = 0;
  virtual void set_eviction_frozen(bool frozen) = 0;
  virtual absl::Status Rewind(int64_t position) = 0;
  virtual void SetTaskQueries(std::vector<std::vector<float>> queries, int64_t n_task) = 0;

  // The slots a head holds, keys before RoPE, on the host (recall ranks candidates against
  // them). FetchHeld makes them current (a device backend downloads every slot once); call it
  // before held() after any read.
  virtual absl::Status FetchHeld() = 0;
  virtual const HeadMemorySnapshot& held(int32_t layer, int32_t kv_head) const = 0;
  virtual absl::StatusOr<int64_t> InsertRecalled(int32_t layer, int32_t kv_head,
                                                 const std::vector<ArchivedBlock>& blocks) = 0;

  // The memory as plain fp32 data (a device backend's keys and values are its bf16 numbers
  // widened) and back; runner fields are left at their defaults.
  virtual absl::Status ExportTo(MemorySnapshot* snapshot) const = 0;
  virtual absl::Status ImportFrom(const MemorySnapshot& snapshot) = 0;

  // The CPU memory itself, for tests and benches that inspect it; null on other backends.
  virtual const SparseKMemory* host_memory() const { return nullptr; }
};

// One document's next segment in ReadingBackend::ReadSegments: what DocumentState::ReadSegment
// takes (no query observer).
struct SegmentRead {
  DocumentState* document = nullptr;  // of this backend; each at most once per call
  std::span<const int32_t> tokens;    // not empty; lengths may differ between documents
  LogitsMode mode = LogitsMode::kNone;
  std::vector<float>* logits = nullptr;  // needed unless mode is kNone
};

class ReadingBackend {
 public:
  virtual ~ReadingBackend() = default;

  // "cpu" or "cuda": what a worker reports.
  virtual std::string_view device() const = 0;
  // The model as loaded on the host: its config, file (tokenizer metadata, chat template) and
  // fingerprint. A device backend keeps its own copy of the weights besides.
  virtual const LlamaModel& host_model() const = 0;
  const ModelConfig& config() const { return host_model().config(); }
  // Bytes of the weights in the backend's memory space: the file's tensors on the CPU (mmapped),
  // the bf16 copies on the device (measured around their upload).
  virtual int64_t weight_bytes() const = 0;
  const std::string& fingerprint() const { return host_model().fingerprint(); }

  // A fresh, empty memory for one document. `scorer` may be null; `pool` (may be null, not owned)
  // runs the CPU work of this document.
  virtual absl::StatusOr<std::unique_ptr<DocumentState>> NewDocument(
      const MemoryConfig& config, std::shared_ptr<const ScorerWeights> scorer,
      kernels::ThreadPool* pool) = 0;

  // Reads one segment of each document in `reads`, each as its ReadSegment would. A device
  // backend reads them in one forward pass (their rows share every weight's GEMM; each memory
  // attends on its own stream); this default, the CPU's, reads them one after another, in order.
  // An error is the pass's: every document of the pass is then as after a failed ReadSegment
  // (here, those before the failing one were read). Arguments are checked before any reading.
  virtual absl::Status ReadSegments(std::span<const SegmentRead> reads) {
    if (auto s = CheckSegmentReads(reads); !s.ok()) return s;
    for (const SegmentRead& r : reads) {
      if (auto s = r.document->ReadSegment(r.tokens, r.mode, r.logits, nullptr); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

  // Reads `tokens` on their own (dense attention from position 0, in one pass) and records each
  // layer's un-rotated queries into (*queries)[layer]: the task queries of a task-aware memory.
  virtual absl::Status CaptureQueries(std::span<const int32_t> tokens, kernels::ThreadPool* pool,
                                      std::vector<std::vector<float>>* queries) = 0;

 protected:
  // What every ReadSegments checks before reading anything: a document, tokens and a logits
  // vector where asked for in each read; no document twice.
  static absl::Status CheckSegmentReads(std::span<const SegmentRead> reads) {
    for (size_t i = 0; i < reads.size(); ++i) {
      const SegmentRead& r = reads[i];
      if (r.document == nullptr || r.tokens.empty()) {
        return absl::InvalidArgumentError("ReadSegments: a read without a document or tokens");
      }
      if (r.mode != LogitsMode::kNone && r.logits == nullptr) {
        return absl::InvalidArgumentError("ReadSegments: logits asked for without a vector");
      }
      for (size_t j = 0; j < i; ++j) {
        if (reads[j].document == r.document) {
          return absl::InvalidArgumentError("ReadSegments: a document twice in one pass");
        }
      }
    }
    return absl::OkStatus();
  }
};

}  // namespace longread::engine
