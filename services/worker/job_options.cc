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
      options.task = engine::Task::kCustom;
      options.question = task.instruction();
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("unknown task kind ", task.kind()));
  }
  if ((options.task == engine::Task::kQuestion || options.task == engine::Task::kCustom) &&
      options.question.empty()) {
    return absl::InvalidArgumentError("a question or custom task needs its text");
  }
  const v1::JobOptions& o = assignment.options();
  if (o.memory_k() < 0 || o.window() < 0 || o.sinks() < 0 || o.segment_tokens() < 0 ||
      o.block_tokens() < 0 || o.recall_blocks() < 0 || o.max_new_tokens() < 0 ||
      !(o.temperature() >= 0) || !(o.top_p() >= 0 && o.top_p() <= 1) || o.sinks() > (1 << 20)) {
    return absl::InvalidArgumentError("job options out of range");
  }
  engine::MemoryConfig& memory = options.runner.memory;
  if (o.has_memory_k()) memory.top_k = o.memory_k();
  if (o.window() > 0) memory.window = o.window();
  if (o.has_sinks()) memory.sinks = static_cast<int32_t>(o.sinks());
  // `longread run`'s defaults for what the engine defaults differently.
  memory.block_tokens = o.block_tokens() > 0 ? o.block_tokens() : 32;
  options.recall.blocks = o.has_recall_blocks() ? o.recall_blocks() : 4;
  if (o.segment_tokens() > 0) options.runner.segment_tokens = o.segment_tokens();
  options.generate.max_new_tokens = o.max_new_tokens() > 0 ? o.max_new_tokens() : 256;
  options.generate.sampling.temperature = o.temperature();
  options.generate.sampling.top_p = o.has_top_p() ? o.top_p() : 1.0f;
  options.generate.sampling.seed = o.seed();
  // The rest of `longread run`'s options; unset keeps its defaults (the engine's, with
  // `longread run`'s block and recall settings above).
  if (o.positions() == "original") {
    memory.position_mode = engine::PositionMode::kOriginal;
  } else if (!o.positions().empty() && o.positions() != "slot") {
    return absl::InvalidArgumentError("positions must be slot or original");
  }
  if (o.block_score() == "mean") {
    memory.block_score = engine::BlockScore::kMean;
  } else if (!o.block_score().empty() && o.block_score() != "max") {
    return absl::InvalidArgumentError("block_score must be max or mean");
  }
  if (o.task_score() == "max-dot") {
    memory.task_score = engine::TaskScore::kMaxDot;
  } else if (!o.task_score().empty() && o.task_score() != "segment-mass") {
    return absl::InvalidArgumentError("task_score must be segment-mass or max-dot");
  }
  if (o.mask() == "soft") {
    memory.mask_mode = engine::MaskMode::kSoft;
  } else if (!o.mask().empty() && o.mask() != "hard") {
    return absl::InvalidArgumentError("mask must be hard or soft");
  }
  if (o.recall_scope() == "head") {
    options.recall.shared = false;
  } else if (!o.recall_scope().empty() && o.recall_scope() != "shared") {
    return absl::InvalidArgumentError("recall_scope must be shared or head");
  }
  if ((o.has_task_weight() && !(o.task_weight() >= 0)) ||
      (o.has_recall_candidates() && o.recall_candidates() < 0) ||
      (o.has_no_repeat_ngram() && o.no_repeat_ngram() < 0) ||
      (o.has_repeat_penalty() && !(o.repeat_penalty() > 0)) ||
      (o.has_repeat_last_n() && o.repeat_last_n() < 0)) {
    return absl::InvalidArgumentError("job options out of range");
  }
  if (o.has_task_weight()) memory.task_weight = o.task_weight();
  if (o.has_recall_candidates()) options.recall.candidates = o.recall_candidates();
  engine::SamplingOptions& sampling = options.generate.sampling;
  if (o.has_no_repeat_ngram()) sampling.no_repeat_ngram = o.no_repeat_ngram();
  if (o.has_repeat_penalty()) sampling.repeat_penalty = o.repeat_penalty();
  if (o.has_repeat_last_n()) sampling.repeat_last_n = o.repeat_last_n();
  options.instruction_first = o.instruction_first();
  if (o.dense()) memory = engine::MemoryConfig::Dense();
  return options;
}

}  // namespace longread::worker
