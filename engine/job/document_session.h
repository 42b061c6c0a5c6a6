// One document job as a sequence of small steps (DESIGN.md §1, the worker's unit of work): build
// the prompt and set the task, read the document one segment per ReadStep, recall and read the
// question (BeginAnswer), then generate one token per NextToken. Between steps the caller may do
// anything else with the model (interleave other documents' sessions), cancel (drop the session),
// or take a Checkpoint that a new session, on this or another process, resumes from
// bit-identically. RunTokenizedDocumentJob is this loop run to the end.
//
// Threading: a session is not thread-safe, and LlamaModel::Forward is not either (the model owns
// one activation workspace; so does a device backend, engine/memory/reading_backend.h). Every call
// that runs the model (Create, ReadStep, BeginAnswer, NextToken) must hold the caller's per-model
// lock. On the CPU backend Checkpoint, Restore and the accessors only touch the session; on a
// device backend Checkpoint and Restore move the memory over the backend's one stream, so they
// take the lock too. Many sessions may share one model (backend), tokenizer, scorer and pool.
//
// What a checkpoint holds: SessionCheckpoint::memory, the runner's MemorySnapshot (the memory's
// slots, where reading stopped, tokens of a partial segment). It does NOT hold the recall
// archive: blocks the memory evicted before the checkpoint live in options.archive. To resume
// elsewhere, the caller replays into the new session's (fresh) archive exactly the blocks that
// were put up to the checkpoint, in put order (engine/memory/recording_archive.h records them),
// then calls Restore. Checkpoints are taken only in the reading phase (between ReadSteps, or once
// reading is done and before BeginAnswer); a session interrupted during its answer resumes from
// its last reading checkpoint and generates its answer again from the start (greedy: the same
// text; the worker must not stream the tokens it already streamed twice, see answer_tokens()).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/job/document_job.h"
#include "engine/memory/reading_backend.h"
#include "engine/memory/runner.h"
#include "engine/memory/snapshot.h"
#include "engine/model/llama_model.h"
#include "engine/tokenizer/tokenizer.h"

namespace longread::engine {

struct SessionCheckpoint {
  // All that must be persisted (cache/snapshot_format encodes it). Its config_hash covers the
  // runner config and the task, so a checkpoint is refused by a session with other options.
  MemorySnapshot memory;
  // Derived from `memory` (for the caller's bookkeeping; Restore recomputes them):
  int64_t document_tokens_consumed = 0;  // where feeding resumes
  bool reading_done = false;
  // Non-empty when the archive failed before the checkpoint (the memory stopped archiving): the
  // resumed session answers without recall and reports this as recall_error. Persist it too.
  std::string archive_error;
};

struct AnswerStep {
  std::string text;    // new answer text: whole UTF-8 characters, may be empty
  int32_t token = -1;  // the generated id (a stop token included; it adds no text)
  bool done = false;   // the answer is complete (stop token or max_new_tokens)
};

class DocumentSession {
 public:
  // Builds the task prompt and sets the task (task-aware memory: one forward pass over the
  // instruction): everything before reading. `document_tokens` is the document's total token
  // count (> 0), known up front. `options.archive` (if any) must outlive the session; the runner
  // puts evicted blocks into it from the first ReadStep. Runs the model (take the lock).
  static absl::StatusOr<std::unique_ptr<DocumentSession>> Create(
      LlamaModel& model, const Tokenizer& tokenizer, const DocumentJobOptions& options,
      std::shared_ptr<const ScorerWeights> scorer, kernels::ThreadPool* pool,
      int64_t document_tokens);
  // The same on `backend` (not owned; outlives the session): the document's memory lives there.
  static absl::StatusOr<std::unique_ptr<DocumentSession>> Create(
      ReadingBackend& backend, const Tokenizer& tokenizer, const DocumentJobOptions& options,
      std::shared_ptr<const ScorerWeights> scorer, kernels::ThreadPool* pool,
      int64_t document_tokens);

  // Resumes from `checkpoint` (of a session created with the same model and options). Call on a
  // fresh session, before any ReadStep, after replaying into options.archive the blocks put up to
  // the checkpoint. FailedPrecondition for another model/config/task or a session that has read.
  absl::Status Restore(const SessionCheckpoint& checkpoint);

  // Where the caller continues feeding document tokens (0 for a fresh session).
  int64_t document_tokens_consumed() const { return document_consumed_; }
  int64_t document_tokens() const { return document_tokens_; }
  // Tokens read before the answer: the prompt's head and the document.
  int64_t read_tokens_total() const {
    return static_cast<int64_t>(prompt_.before_document.size()) + document_tokens_;
  }

  // Reads at most one segment through the model. `tokens` are the document's tokens starting at
  // document_tokens_consumed() (none of them control tokens); `end_of_document` says that no
  // tokens follow them (then their count must be exactly what remains). Returns how many of
  // `tokens` were consumed (0 <= n <= size): the ones that completed the current segment (it is
  // read), or all of them when they do not complete it (kept as the partial segment; it is read
  // at the end of the document). 0 is returned when the prompt's head alone filled the segment.
  // Segment boundaries are those of reading the prompt head + document in one go, so the result
  // does not depend on how the caller slices `tokens`. Call until reading_done().
  absl::StatusOr<int64_t> ReadStep(std::span<const int32_t> tokens, bool end_of_document);
  bool reading_done() const;
  int64_t segments_read() const { return runner_.segments_read(); }

  // The state to persist; valid while reading (between ReadSteps) and after reading_done()
  // until BeginAnswer. FailedPrecondition once the answer has begun.
  absl::StatusOr<SessionCheckpoint> Checkpoint() const;

  // After reading: answers without recall first if options.also_answer_without_recall (not
  // streamed, into result().answer_without_recall); recalls (when options.archive and
  // recall.blocks > 0; an archive error is recorded as result().recall_error, not returned);
  // calls `before_answer` with the runner; reads the question. Runs the model (take the lock).
  absl::Status BeginAnswer(const std::function<void(const RecurrentRunner&)>& before_answer = {});
  // One generated token. FailedPrecondition before BeginAnswer or after done. Runs the model.
  absl::StatusOr<AnswerStep> NextToken();
  bool answer_done() const { return answer_done_; }
  // Tokens generated so far in this session's answer (stop token included).
  int64_t answer_tokens() const { return result_.generated_tokens; }

  // Counters and timings so far (this session's own: a resumed session's read_seconds counts the
  // segments it read); answer text as generated. read_tokens, document_tokens and prompt_tokens
  // are the whole job's.
  const DocumentJobResult& result() const { return result_; }
  const RecurrentRunner& runner() const { return runner_; }
  // The document's segments are read through `batcher` (RecurrentRunner::set_batcher): ReadStep
  // then needs no model lock of the caller's (the batcher's pass takes it).
  void set_batcher(SegmentBatcher* batcher) { runner_.set_batcher(batcher); }

 private:
  static absl::StatusOr<std::unique_ptr<DocumentSession>> Create(
      std::unique_ptr<ReadingBackend> owned_backend, ReadingBackend& backend,
      const Tokenizer& tokenizer, const DocumentJobOptions& options,
      std::shared_ptr<const ScorerWeights> scorer, kernels::ThreadPool* pool,
      int64_t document_tokens);
  DocumentSession(std::unique_ptr<ReadingBackend> owned_backend, ReadingBackend& backend,
                  std::unique_ptr<DocumentState> state, const Tokenizer& tokenizer,
                  const DocumentJobOptions& options, kernels::ThreadPool* pool, TaskPrompt prompt,
                  int64_t document_tokens);
  // Reads the question and generates to the end (not streamed): the answer without recall.
  absl::StatusOr<std::string> AnswerToEnd(const GenerateOptions& generate);
  absl::Status StartGenerating();

  const Tokenizer& tokenizer_;
  DocumentJobOptions options_;
  TaskPrompt prompt_;
  GenerateOptions generate_;                       // options.generate + the model's stop tokens
  std::unique_ptr<ReadingBackend> owned_backend_;  // the CPU backend of the LlamaModel& Create
  RecurrentRunner runner_;
  int64_t document_tokens_ = 0;
  int64_t prefix_fed_ = 0;  // tokens of prompt_.before_document given to the runner
  int64_t document_consumed_ = 0;
  bool restored_or_read_ = false;
  bool answer_begun_ = false;
  bool answer_done_ = false;
  std::string archive_error_;
  std::optional<TokenDecoder> decoder_;
  DocumentJobResult result_;
};

}  // namespace longread::engine
