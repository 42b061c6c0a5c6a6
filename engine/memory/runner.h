// Reads a document of any length segment by segment through the model and its SparseK memory,
// then answers: the recurrent loop of DESIGN.md §1 step 4–5 for one document. The runner's whole
// state is a MemorySnapshot value: it can be persisted after any segment (by cache/, which the
// engine does not know) and resumed bit-identically.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/memory/reading_backend.h"
#include "engine/memory/segment_batcher.h"
#include "engine/memory/snapshot.h"
#include "engine/memory/sparsek_memory.h"
#include "engine/model/llama_model.h"
#include "engine/model/sampler.h"
#include "engine/scorer/scorer.h"

namespace longread::engine {

struct RunnerConfig {
  MemoryConfig memory;
  int64_t segment_tokens = 2048;  // L: tokens read per forward pass
  uint64_t Hash() const;
};

struct GenerateOptions {
  int64_t max_new_tokens = 256;
  SamplingOptions sampling;
  std::vector<int32_t> stop_tokens;  // generation ends after emitting one of these
};

struct RecallOptions {
  int64_t blocks = 0;  // R: blocks recalled per (layer, KV head); 0: no recall
  // Blocks per head whose keys are read and ranked exactly; the bounds choose which. With
  // shared = false and candidates <= blocks the bounds alone decide.
  int64_t candidates = 64;
  // true: one choice for all heads, the R blocks with the highest peak over every (layer, KV
  // head) (each head recalls those among its candidates). false: each head its own R. A fact is
  // singled out by a few retrieval heads, and the model copies it only when the heads that copy
  // hold it: per-head choices put it in few heads. The shared choice is what the quality bench
  // measured (bench/quality/README.md); per-head is kept for comparison.
  bool shared = true;
};

class RecurrentRunner {
 public:
  // Called after each segment read: tokens read so far.
  using ProgressFn = std::function<void(int64_t tokens_read)>;
  // Called with each generated token; return false to stop.
  using TokenFn = std::function<bool(int32_t token)>;

  // On the CPU backend over `model` (not owned).
  RecurrentRunner(LlamaModel* model, const RunnerConfig& config,
                  std::shared_ptr<const ScorerWeights> scorer, kernels::ThreadPool* pool);
  // On `backend` (not owned; outlives the runner), reading into `state`, a fresh document of
  // `backend` made with config.memory (ReadingBackend::NewDocument).
  RecurrentRunner(ReadingBackend* backend, std::unique_ptr<DocumentState> state,
                  const RunnerConfig& config, kernels::ThreadPool* pool);
  // NewDocument on `backend`, then the runner.
  static absl::StatusOr<std::unique_ptr<RecurrentRunner>> Create(
      ReadingBackend* backend, const RunnerConfig& config,
      std::shared_ptr<const ScorerWeights> scorer, kernels::ThreadPool* pool);

  // Queues document tokens and reads every complete segment. A partial segment waits for more
  // tokens or for Flush().
  absl::Status Feed(std::span<const int32_t> tokens, const ProgressFn& progress = {});
  absl::Status Flush(const ProgressFn& progress = {});

  // Feed and Flush read the document's segments through `batcher` (not owned; null: alone),
  // sharing forward passes with other documents of the same backend. Only they do: recall,
  // generation and ReadWithLogits read alone, under the caller's model lock, as before (a
  // batcher's pass takes that lock itself).
  void set_batcher(SegmentBatcher* batcher) { batcher_ = batcher; }

  // Makes the memory task-aware: `task` (the instruction, e.g. the question) is read once on its
  // own and its query vectors add a task term to the score of every key read afterwards
  // (MemoryConfig::task_weight). Call before reading the document; an empty task is a no-op.
  absl::Status SetTask(std::span<const int32_t> task);

  // Evicted blocks go to `archive` (not owned) for Recall.
  void set_archive(BlockArchive* archive) {
    archive_ = archive;
    state_->set_archive(archive);
  }
  // After reading: brings back into the memory the archived blocks that `question` looks at
  // hardest. The question is read in context (after the memory, as the answer will read it; the
  // memory is rewound afterwards); its un-rotated query vectors first rank each head's archive by
  // the blocks' key bounds (BlockArchive::Recall, `candidates` per head), then rank those
  // candidates by their exact attention peak (BlockAttentionPeak). Returns the slots added; an
  // archive error is returned as is and leaves the memory unchanged (answer without recall).
  absl::StatusOr<int64_t> Recall(std::span<const int32_t> question, const RecallOptions& options);

  // Reads `prompt` (the task/question, after the document) and generates the answer:
  // BeginGenerate, then NextToken until done (or until `on_token` returns false).
  absl::StatusOr<std::vector<int32_t>> Generate(std::span<const int32_t> prompt,
                                                const GenerateOptions& options,
                                                const TokenFn& on_token = {});

  // Stepwise generation. BeginGenerate flushes the document, freezes eviction and reads `prompt`;
  // each NextToken first reads the previous token, then samples the next one, so the caller
  // has a token as soon as it is sampled. `done`: it was a stop token or the
  // max_new_tokens-th; NextToken after that is FailedPrecondition.
  struct GeneratedToken {
    int32_t token = -1;
    bool done = false;
  };
  absl::Status BeginGenerate(std::span<const int32_t> prompt, const GenerateOptions& options);
  absl::StatusOr<GeneratedToken> NextToken();
  // The logits (vocab_size floats) that the last NextToken sampled from, or after BeginGenerate
  // those of the prompt's last token; empty before. Read on the host on every backend.
  std::span<const float> last_logits() const { return logits_; }

  // Logits of every token of `tokens` read as one or more segments (evaluation: perplexity).
  absl::Status ReadWithLogits(std::span<const int32_t> tokens, std::vector<float>* logits);

  // The state to persist. A device backend downloads its memory: TakeSnapshot reports a failed
  // download, Snapshot returns an empty snapshot then (which no Restore accepts).
  absl::StatusOr<MemorySnapshot> TakeSnapshot() const;
  MemorySnapshot Snapshot() const;
  absl::Status Restore(const MemorySnapshot& snapshot);

  int64_t tokens_read() const { return state_->next_position(); }
  int64_t segments_read() const { return segments_read_; }
  // Tokens fed but not read yet (a partial segment).
  int64_t pending_tokens() const { return static_cast<int64_t>(pending_.size()); }
  // The document's memory on its backend.
  const DocumentState& document() const { return *state_; }
  const ReadingBackend& backend() const { return *backend_; }
  // The CPU memory itself (tests, benches); aborts on another backend.
  const SparseKMemory& memory() const;
  const RunnerConfig& config() const { return config_; }

 private:
  absl::Status ReadSegment(std::span<const int32_t> segment, LogitsMode mode,
                           std::vector<float>* logits, bool batched = false);
  absl::Status FlushPending(const ProgressFn& progress, bool batched);
  // OutOfRange when reading `n_tokens` more would put a query beyond the trained context.
  absl::Status CheckPositions(int64_t n_tokens) const;
  // Reads `tokens` after the memory and records each layer's un-rotated queries
  // ([n_layers][n_tokens x n_heads x head_dim]); the memory is left as it was.
  absl::Status CaptureQueriesInContext(std::span<const int32_t> tokens,
                                       std::vector<std::vector<float>>* queries);
  // config_.Hash() combined with the task: what a snapshot must match to be resumed.
  uint64_t StateHash() const;

  std::unique_ptr<ReadingBackend> owned_backend_;  // the CPU backend of the LlamaModel constructor
  ReadingBackend* backend_;
  RunnerConfig config_;
  kernels::ThreadPool* pool_;
  std::unique_ptr<DocumentState> state_;
  std::vector<int32_t> pending_;
  std::vector<int32_t> task_;
  BlockArchive* archive_ = nullptr;
  SegmentBatcher* batcher_ = nullptr;
  int64_t segments_read_ = 0;
  std::vector<float> logits_;
  // Stepwise generation state (BeginGenerate .. done).
  struct Generation {
    GenerateOptions options;
    Sampler sampler;
    int64_t generated = 0;
    int32_t unread = -1;  // the last token sampled, read at the next NextToken
    bool done = false;
  };
  std::optional<Generation> generation_;
};

}  // namespace longread::engine
