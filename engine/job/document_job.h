// One document, one task, one answer: the unit of work that `longread run` executes in-process
// and that a worker will execute for the coordinator. Builds the task prompt around the document,
// reads the document through the recurrent runner, and generates the answer.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/memory/runner.h"
#include "engine/model/llama_model.h"
#include "engine/tokenizer/tokenizer.h"

namespace longread::engine {

// kCustom: the user's own instruction (in `question`), placed after the document as is.
enum class Task { kSummarize, kAnalyzeCode, kQuestion, kCustom };

absl::StatusOr<Task> ParseTask(std::string_view name);
std::string_view TaskName(Task task);

struct DocumentJobOptions {
  Task task = Task::kSummarize;
  std::string question;  // required for Task::kQuestion; the instruction of Task::kCustom
  RunnerConfig runner;
  GenerateOptions generate;
  int64_t max_document_bytes = int64_t{1} << 30;
  // Task-aware memory: the instruction's query vectors add a task term to every key's score
  // (MemoryConfig::task_weight). Known before reading starts, as in a batch job.
  bool task_aware = true;
  // Also place the instruction before the document in the prompt (the model then reads the
  // document knowing the question).
  bool instruction_first = false;
  // Evicted blocks go to `archive` (not owned; null: no archive) and the best `recall.blocks`
  // per (layer, KV head) come back before the answer (RecurrentRunner::Recall).
  BlockArchive* archive = nullptr;
  RecallOptions recall;  // recall.blocks = 0: no recall
  // Evaluation: with recall on, also answer from the memory as it stands before recall (the read
  // is shared; the memory is snapshotted and restored between the two answers).
  bool also_answer_without_recall = false;
  // Evaluation: also answer with these sampling options from the same memory (snapshotted and
  // restored), so that generation settings are compared on one read.
  std::optional<SamplingOptions> also_answer_with_sampling;
};

struct DocumentJobResult {
  std::string answer;
  int64_t document_tokens = 0;
  int64_t prompt_tokens = 0;
  int64_t read_tokens = 0;  // prompt head + document, read before the answer
  int64_t generated_tokens = 0;
  int64_t invalid_utf8_sequences = 0;      // replaced by U+FFFD before tokenizing
  int64_t recalled_slots = 0;              // slots brought back from the archive, all heads
  std::string recall_error;                // why recall was skipped, if it failed
  std::string answer_without_recall;       // DocumentJobOptions::also_answer_without_recall
  std::string answer_with_other_sampling;  // DocumentJobOptions::also_answer_with_sampling
  double read_seconds = 0;
  double recall_seconds = 0;  // the question read in context + archive reads + ranking
  double generate_seconds = 0;
};

struct DocumentJobCallbacks {
  std::function<void(int64_t tokens_read, int64_t total_tokens)> progress;
  std::function<void(std::string_view text)> answer_text;  // streamed, whole UTF-8 characters
  // After reading (and recall), before the answer: what the memory holds (evaluation, tracing).
  std::function<void(const RecurrentRunner& runner)> before_answer;
};

// The instruction text of a task (what the user message asks after the document).
std::string TaskInstruction(Task task, std::string_view question);

// The chat prompt around the document, as tokens: template markup may hold control tokens, the
// user's text never does.
struct TaskPrompt {
  std::vector<int32_t> before_document;
  std::vector<int32_t> after_document;
};
absl::StatusOr<TaskPrompt> BuildTaskPrompt(const Tokenizer& tokenizer,
                                           const std::string& chat_template, Task task,
                                           std::string_view question,
                                           bool instruction_first = false);

absl::StatusOr<DocumentJobResult> RunDocumentJob(LlamaModel& model, const Tokenizer& tokenizer,
                                                 std::string_view document,
                                                 const DocumentJobOptions& options,
                                                 std::shared_ptr<const ScorerWeights> scorer,
                                                 kernels::ThreadPool* pool,
                                                 const DocumentJobCallbacks& callbacks = {});

// The same job on a document that is already tokens (none of them control tokens), e.g. the
// quality bench's documents, whose planted facts sit at exact token offsets.
absl::StatusOr<DocumentJobResult> RunTokenizedDocumentJob(
    LlamaModel& model, const Tokenizer& tokenizer, std::span<const int32_t> document_tokens,
    const DocumentJobOptions& options, std::shared_ptr<const ScorerWeights> scorer,
    kernels::ThreadPool* pool, const DocumentJobCallbacks& callbacks = {});
// The same on `backend` (engine/memory/reading_backend.h), e.g. the GPU.
absl::StatusOr<DocumentJobResult> RunTokenizedDocumentJob(
    ReadingBackend& backend, const Tokenizer& tokenizer, std::span<const int32_t> document_tokens,
    const DocumentJobOptions& options, std::shared_ptr<const ScorerWeights> scorer,
    kernels::ThreadPool* pool, const DocumentJobCallbacks& callbacks = {});

// Number of maximal invalid UTF-8 subparts (each becomes one U+FFFD when tokenized).
int64_t CountInvalidUtf8(std::string_view text);

}  // namespace longread::engine
