#include "engine/job/document_session.h"

#include <algorithm>
#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/memory/cpu_backend.h"

namespace longread::engine {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

DocumentSession::DocumentSession(std::unique_ptr<ReadingBackend> owned_backend,
                                 ReadingBackend& backend, std::unique_ptr<DocumentState> state,
                                 const Tokenizer& tokenizer, const DocumentJobOptions& options,
                                 kernels::ThreadPool* pool, TaskPrompt prompt,
                                 int64_t document_tokens)
    : tokenizer_(tokenizer),
      options_(options),
      prompt_(std::move(prompt)),
      generate_(options.generate),
      owned_backend_(std::move(owned_backend)),
      runner_(&backend, std::move(state), options.runner, pool),
      document_tokens_(document_tokens) {
  for (const char* stop : {"<|im_end|>", "<|endoftext|>", "<|eot_id|>"}) {
    const int32_t id = tokenizer.TokenId(stop);
    if (id >= 0) generate_.stop_tokens.push_back(id);
  }
  if (tokenizer.eos_id() >= 0) generate_.stop_tokens.push_back(tokenizer.eos_id());
  const int64_t prefix = static_cast<int64_t>(prompt_.before_document.size());
  result_.document_tokens = document_tokens;
  result_.prompt_tokens = prefix + static_cast<int64_t>(prompt_.after_document.size());
}

absl::StatusOr<std::unique_ptr<DocumentSession>> DocumentSession::Create(
    LlamaModel& model, const Tokenizer& tokenizer, const DocumentJobOptions& options,
    std::shared_ptr<const ScorerWeights> scorer, kernels::ThreadPool* pool,
    int64_t document_tokens) {
  auto backend = std::make_unique<CpuReadingBackend>(&model);
  ReadingBackend& cpu = *backend;
  return Create(std::move(backend), cpu, tokenizer, options, std::move(scorer), pool,
                document_tokens);
}

absl::StatusOr<std::unique_ptr<DocumentSession>> DocumentSession::Create(
    ReadingBackend& backend, const Tokenizer& tokenizer, const DocumentJobOptions& options,
    std::shared_ptr<const ScorerWeights> scorer, kernels::ThreadPool* pool,
    int64_t document_tokens) {
  return Create(nullptr, backend, tokenizer, options, std::move(scorer), pool, document_tokens);
}

absl::StatusOr<std::unique_ptr<DocumentSession>> DocumentSession::Create(
    std::unique_ptr<ReadingBackend> owned_backend, ReadingBackend& backend,
    const Tokenizer& tokenizer, const DocumentJobOptions& options,
    std::shared_ptr<const ScorerWeights> scorer, kernels::ThreadPool* pool,
    int64_t document_tokens) {
  const LlamaModel& model = backend.host_model();
  if (document_tokens <= 0) return absl::InvalidArgumentError("the document has no tokens");
  if (options.runner.segment_tokens <= 0) {
    return absl::InvalidArgumentError("segment_tokens must be positive");
  }
  auto prompt = BuildTaskPrompt(tokenizer, model.file().tokenizer().chat_template, options.task,
                                options.question, options.instruction_first);
  if (!prompt.ok()) return prompt.status();
  // Dense attention (and original positions) give every token its own position, so the whole
  // read and the longest answer must fit the trained context: known now, not after reading.
  const MemoryConfig& memory = options.runner.memory;
  if (memory.is_dense() || memory.position_mode == PositionMode::kOriginal) {
    const int64_t context = model.config().context_length;
    const int64_t prompt_tokens =
        static_cast<int64_t>(prompt->before_document.size() + prompt->after_document.size());
    // The last answer token is emitted, never read.
    const int64_t needed =
        prompt_tokens + document_tokens + std::max<int64_t>(options.generate.max_new_tokens - 1, 0);
    if (needed > context) {
      return absl::OutOfRangeError(absl::StrCat(
          "the document has ", document_tokens, " tokens; with the prompt's ", prompt_tokens,
          " and up to ", options.generate.max_new_tokens, " answer tokens it needs ", needed,
          " positions, beyond the model's trained context of ", context, " tokens (",
          memory.is_dense() ? "dense attention" : "original positions",
          "); use the SparseK memory (the default) for longer inputs"));
    }
  }
  // Every refusal above comes before the document's memory is allocated (on a device backend,
  // device memory).
  auto state = backend.NewDocument(options.runner.memory, std::move(scorer), pool);
  if (!state.ok()) return state.status();
  std::unique_ptr<DocumentSession> session(
      new DocumentSession(std::move(owned_backend), backend, std::move(*state), tokenizer, options,
                          pool, std::move(*prompt), document_tokens));
  if (options.task_aware) {
    const std::vector<int32_t> instruction =
        tokenizer.Encode(TaskInstruction(options.task, options.question), false);
    if (auto s = session->runner_.SetTask(instruction); !s.ok()) return s;
  }
  if (options.archive != nullptr) session->runner_.set_archive(options.archive);
  return session;
}

bool DocumentSession::reading_done() const {
  return prefix_fed_ == static_cast<int64_t>(prompt_.before_document.size()) &&
         document_consumed_ == document_tokens_ && runner_.pending_tokens() == 0;
}

absl::StatusOr<int64_t> DocumentSession::ReadStep(std::span<const int32_t> tokens,
                                                  bool end_of_document) {
  if (answer_begun_ || reading_done()) {
    return absl::FailedPreconditionError("session: reading is done");
  }
  const int64_t remaining = document_tokens_ - document_consumed_;
  const int64_t given = static_cast<int64_t>(tokens.size());
  if (given > remaining || (end_of_document && given != remaining)) {
    return absl::InvalidArgumentError(absl::StrCat("session: ", given, " tokens given at ",
                                                   document_consumed_, " of a document of ",
                                                   document_tokens_, " tokens"));
  }
  restored_or_read_ = true;
  const auto start = std::chrono::steady_clock::now();
  const int64_t L = options_.runner.segment_tokens;
  const int64_t segments_before = runner_.segments_read();
  const auto& head = prompt_.before_document;
  int64_t room = L - runner_.pending_tokens();
  if (prefix_fed_ < static_cast<int64_t>(head.size())) {
    const int64_t take = std::min(room, static_cast<int64_t>(head.size()) - prefix_fed_);
    const auto part = std::span<const int32_t>(head).subspan(prefix_fed_, take);
    if (auto s = runner_.Feed(part); !s.ok()) return s;
    prefix_fed_ += take;
    room -= take;
  }
  int64_t consumed = 0;
  if (room > 0) {
    consumed = std::min(room, given);
    if (auto s = runner_.Feed(tokens.first(consumed)); !s.ok()) return s;
    document_consumed_ += consumed;
  }
  // The last, partial segment is read as soon as the document has no more tokens.
  if (runner_.segments_read() == segments_before &&
      prefix_fed_ == static_cast<int64_t>(head.size()) && document_consumed_ == document_tokens_) {
    if (auto s = runner_.Flush(); !s.ok()) return s;
  }
  result_.read_seconds += SecondsSince(start);
  if (reading_done()) result_.read_tokens = runner_.tokens_read();
  return consumed;
}

absl::StatusOr<SessionCheckpoint> DocumentSession::Checkpoint() const {
  if (answer_begun_) {
    return absl::FailedPreconditionError("session: checkpoints are taken before the answer");
  }
  SessionCheckpoint checkpoint;
  auto memory = runner_.TakeSnapshot();
  if (!memory.ok()) return memory.status();
  checkpoint.memory = std::move(*memory);
  checkpoint.document_tokens_consumed = document_consumed_;
  checkpoint.reading_done = reading_done();
  if (!archive_error_.empty()) {
    checkpoint.archive_error = archive_error_;
  } else if (!runner_.document().archive_status().ok()) {
    checkpoint.archive_error = std::string(runner_.document().archive_status().message());
  }
  return checkpoint;
}

absl::Status DocumentSession::Restore(const SessionCheckpoint& checkpoint) {
  if (restored_or_read_ || answer_begun_) {
    return absl::FailedPreconditionError("session: restore a fresh session only");
  }
  const MemorySnapshot& m = checkpoint.memory;
  // Where reading stopped, in the stream prompt head + document.
  const int64_t fed = m.token_offset + static_cast<int64_t>(m.pending_tokens.size());
  const int64_t head = static_cast<int64_t>(prompt_.before_document.size());
  const int64_t document = std::max<int64_t>(0, fed - head);
  if (document > document_tokens_ || m.token_offset < 0) {
    return absl::InvalidArgumentError(absl::StrCat("session: the checkpoint is at token ", fed,
                                                   ", beyond this document of ", document_tokens_,
                                                   " tokens"));
  }
  if (auto s = runner_.Restore(m); !s.ok()) return s;
  prefix_fed_ = std::min(fed, head);
  document_consumed_ = document;
  restored_or_read_ = true;
  if (!checkpoint.archive_error.empty()) {
    // The memory had stopped archiving: so does the resumed one, and recall is skipped with the
    // same error as the uninterrupted run reports.
    archive_error_ = checkpoint.archive_error;
    runner_.set_archive(nullptr);
  }
  if (reading_done()) result_.read_tokens = runner_.tokens_read();
  return absl::OkStatus();
}

absl::StatusOr<std::string> DocumentSession::AnswerToEnd(const GenerateOptions& generate) {
  if (auto s = runner_.BeginGenerate(prompt_.after_document, generate); !s.ok()) return s;
  TokenDecoder decoder(tokenizer_);
  std::string text;
  while (generate.max_new_tokens > 0) {
    auto next = runner_.NextToken();
    if (!next.ok()) return next.status();
    const auto& stops = generate.stop_tokens;
    if (std::find(stops.begin(), stops.end(), next->token) == stops.end()) {
      text += decoder.Push(next->token);
    }
    if (next->done) break;
  }
  text += decoder.Flush();
  return text;
}

absl::Status DocumentSession::BeginAnswer(
    const std::function<void(const RecurrentRunner&)>& before_answer) {
  if (answer_begun_) return absl::FailedPreconditionError("session: the answer has begun");
  if (!reading_done()) return absl::FailedPreconditionError("session: reading is not done");
  answer_begun_ = true;
  const bool recall = options_.archive != nullptr && options_.recall.blocks > 0;
  if (recall && options_.also_answer_without_recall) {
    auto before = runner_.TakeSnapshot();
    if (!before.ok()) return before.status();
    auto text = AnswerToEnd(generate_);
    if (!text.ok()) return text.status();
    result_.answer_without_recall = std::move(*text);
    if (auto s = runner_.Restore(*before); !s.ok()) return s;
  }
  auto recall_into_memory = [&] {
    if (!recall) return;
    // A broken archive costs the recall, not the answer. The question is scored as the answer
    // will read it: the chat turn after the document.
    const auto recall_start = std::chrono::steady_clock::now();
    if (!archive_error_.empty()) {
      result_.recall_error = archive_error_;
    } else {
      auto recalled = runner_.Recall(prompt_.after_document, options_.recall);
      if (recalled.ok()) {
        result_.recalled_slots = *recalled;
      } else {
        result_.recall_error = std::string(recalled.status().message());
      }
    }
    result_.recall_seconds = SecondsSince(recall_start);
  };
  if (options_.also_answer_with_sampling.has_value()) {
    // Recalled blocks overfill the memory, so the snapshot is taken before recall, and recall
    // (read-only on the archive) is repeated for the answer itself.
    auto before_recall = runner_.TakeSnapshot();
    if (!before_recall.ok()) return before_recall.status();
    recall_into_memory();
    GenerateOptions other = generate_;
    other.sampling = *options_.also_answer_with_sampling;
    auto text = AnswerToEnd(other);
    if (!text.ok()) return text.status();
    result_.answer_with_other_sampling = std::move(*text);
    if (auto s = runner_.Restore(*before_recall); !s.ok()) return s;
  }
  recall_into_memory();
  if (before_answer) before_answer(runner_);
  const auto start = std::chrono::steady_clock::now();
  auto s = runner_.BeginGenerate(prompt_.after_document, generate_);
  result_.generate_seconds += SecondsSince(start);
  if (!s.ok()) return s;
  decoder_.emplace(tokenizer_);
  answer_done_ = generate_.max_new_tokens <= 0;
  return absl::OkStatus();
}

absl::StatusOr<AnswerStep> DocumentSession::NextToken() {
  if (!answer_begun_ || !decoder_.has_value() || answer_done_) {
    return absl::FailedPreconditionError("session: no answer in progress");
  }
  const auto start = std::chrono::steady_clock::now();
  auto next = runner_.NextToken();
  if (!next.ok()) return next.status();
  AnswerStep step;
  step.token = next->token;
  step.done = next->done;
  ++result_.generated_tokens;
  const auto& stops = generate_.stop_tokens;
  if (std::find(stops.begin(), stops.end(), next->token) == stops.end()) {
    step.text = decoder_->Push(next->token);
  }
  if (step.done) {
    step.text += decoder_->Flush();
    answer_done_ = true;
  }
  result_.answer += step.text;
  result_.generate_seconds += SecondsSince(start);
  return step;
}

}  // namespace longread::engine
