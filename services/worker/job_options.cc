#include "services/worker/job_options.h"

#include "absl/strings/str_cat.h"

namespace longread::worker {

absl::StatusOr<engine::DocumentJobOptions> ToDocumentJobOptions(
    const v1::DocumentAssignment& assignment) {
  engine::DocumentJobOptions options;
  const v1::Task& task = assignment.task();
  switch (task.kind()) {
    case v1::TASK_KIND_SUMMARIZE:
      options.task = engine::Task::kSummarize;
      break;
    case v1::TASK_KIND_ANALYZE_CODE:
      options.task = engine::Task::kAnalyzeCode;
      break;
    case v1::TASK_KIND_QUESTION:
      options.task = engine::Task::kQuestion;
      options.question = task.question();
      break;
    case v1::TASK_KIND_CUSTOM:
      // The engine knows three instructions; a custom one is asked as the question.
      options.task = engine::Task::kQuestion;
      options.question = task.instruction();
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("unknown task kind ", task.kind()));
  }
  if (options.task == engine::Task::kQuestion && options.question.empty()) {
    return absl::InvalidArgumentError("a question or custom task needs its text");
  }
  const v1::JobOptions& o = assignment.options();
  if (o.memory_k() < 0 || o.window() < 0 || o.sinks() < 0 || o.segment_tokens() < 0 ||
      o.block_tokens() < 0 || o.recall_blocks() < 0 || o.max_new_tokens() < 0 ||
      !(o.temperature() >= 0) || !(o.top_p() >= 0 && o.top_p() <= 1) || o.sinks() > (1 << 20)) {
    return absl::InvalidArgumentError("job options out of range");
  }
  engine::MemoryConfig& memory = options.runner.memory;
  if (o.memory_k() > 0) memory.top_k = o.memory_k();
  if (o.window() > 0) memory.window = o.window();
  if (o.sinks() > 0) memory.sinks = static_cast<int32_t>(o.sinks());
  // `longread run`'s defaults for what the engine defaults differently.
  memory.block_tokens = o.block_tokens() > 0 ? o.block_tokens() : 32;
  options.recall.blocks = o.has_recall_blocks() ? o.recall_blocks() : 4;
  if (o.segment_tokens() > 0) options.runner.segment_tokens = o.segment_tokens();
  options.generate.max_new_tokens = o.max_new_tokens() > 0 ? o.max_new_tokens() : 256;
  options.generate.sampling.temperature = o.temperature();
  options.generate.sampling.top_p = o.top_p() > 0 ? o.top_p() : 1.0f;
  options.generate.sampling.seed = o.seed();
  return options;
}

}  // namespace longread::worker
