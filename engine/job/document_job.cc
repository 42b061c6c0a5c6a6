#include "engine/job/document_job.h"

#include "absl/strings/str_cat.h"
#include "engine/job/document_session.h"
#include "engine/memory/cpu_backend.h"
#include "engine/tokenizer/chat_template.h"

namespace longread::engine {
namespace {

// Marks where the document goes inside the rendered chat; never produced by a real template.
constexpr std::string_view kDocumentMarker = "\x01LONGREAD_DOCUMENT\x01";

}  // namespace

absl::StatusOr<Task> ParseTask(std::string_view name) {
  if (name == "summarize") return Task::kSummarize;
  if (name == "analyze_code" || name == "analyze-code") return Task::kAnalyzeCode;
  if (name == "question" || name == "ask") return Task::kQuestion;
  if (name == "custom") return Task::kCustom;
  return absl::InvalidArgumentError(absl::StrCat("unknown task '", std::string(name),
                                                 "' (expected summarize, analyze_code, question "
                                                 "or custom)"));
}

std::string_view TaskName(Task task) {
  switch (task) {
    case Task::kSummarize:
      return "summarize";
    case Task::kAnalyzeCode:
      return "analyze_code";
    case Task::kQuestion:
      return "question";
    case Task::kCustom:
      return "custom";
  }
  return "?";
}

std::string TaskInstruction(Task task, std::string_view question) {
  switch (task) {
    case Task::kSummarize:
      return "Summarize the document above in a few sentences: what it is, its main points, and "
             "its conclusions.";
    case Task::kAnalyzeCode:
      return "Analyze the source code above: what it does, how it is structured, and any bugs or "
             "risks you notice.";
    case Task::kQuestion:
      return absl::StrCat("Answer this question about the document above: ", std::string(question));
    case Task::kCustom:
      return std::string(question);
  }
  return "";
}

int64_t CountInvalidUtf8(std::string_view s) {
  int64_t invalid = 0;
  size_t i = 0;
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  while (i < s.size()) {
    const unsigned char c = p[i];
    int need = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c < 0x80) {
      ++i;
      continue;
    } else if (c >= 0xC2 && c <= 0xDF) {
      need = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
      need = 2;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      need = 3;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      ++invalid;
      ++i;
      continue;
    }
    size_t j = i + 1;
    int got = 0;
    while (got < need && j < s.size()) {
      const unsigned char b = p[j];
      if (b < (got == 0 ? lo : 0x80) || b > (got == 0 ? hi : 0xBF)) break;
      ++j;
      ++got;
    }
    if (got < need) ++invalid;  // a maximal invalid subpart: one replacement character
    i = j;
  }
  return invalid;
}

absl::StatusOr<TaskPrompt> BuildTaskPrompt(const Tokenizer& tokenizer,
                                           const std::string& chat_template, Task task,
                                           std::string_view question, bool instruction_first) {
  if (task == Task::kCustom && question.empty()) {
    return absl::InvalidArgumentError("the custom task needs an instruction");
  }
  if (task == Task::kQuestion && question.empty()) {
    return absl::InvalidArgumentError("the question task needs a question");
  }
  auto tmpl = ChatTemplate::FromSource(chat_template);
  if (!tmpl.ok()) return tmpl.status();
  const std::string instruction = TaskInstruction(task, question);
  const std::vector<ChatMessage> messages = {
      {"user",
       absl::StrCat(instruction_first ? instruction + "\n\n" : "", "Here is a document.\n\n",
                    std::string(kDocumentMarker), "\n\n", instruction)}};
  auto parts = tmpl->RenderParts(messages, /*add_generation_prompt=*/true);
  if (!parts.ok()) return parts.status();
  std::vector<PromptPart> before, after;
  bool found = false;
  for (const PromptPart& part : *parts) {
    const size_t at = part.markup ? std::string::npos : part.text.find(kDocumentMarker);
    if (at == std::string::npos) {
      (found ? after : before).push_back(part);
      continue;
    }
    found = true;
    before.push_back({part.text.substr(0, at), false});
    after.push_back({part.text.substr(at + kDocumentMarker.size()), false});
  }
  if (!found) return absl::InternalError("chat template dropped the document");
  return TaskPrompt{EncodePrompt(tokenizer, before), EncodePrompt(tokenizer, after)};
}

absl::StatusOr<DocumentJobResult> RunDocumentJob(LlamaModel& model, const Tokenizer& tokenizer,
                                                 std::string_view document,
                                                 const DocumentJobOptions& options,
                                                 std::shared_ptr<const ScorerWeights> scorer,
                                                 kernels::ThreadPool* pool,
                                                 const DocumentJobCallbacks& callbacks) {
  if (document.empty()) return absl::InvalidArgumentError("the document is empty");
  if (static_cast<int64_t>(document.size()) > options.max_document_bytes) {
    return absl::OutOfRangeError(absl::StrCat("the document has ", document.size(),
                                              " bytes, more than the limit of ",
                                              options.max_document_bytes));
  }
  // Document text never yields control tokens: "<|im_end|>" inside a document is plain text.
  const std::vector<int32_t> body = tokenizer.Encode(document, false);
  if (body.empty()) return absl::InvalidArgumentError("the document has no tokens");
  auto result =
      RunTokenizedDocumentJob(model, tokenizer, body, options, std::move(scorer), pool, callbacks);
  if (result.ok()) result->invalid_utf8_sequences = CountInvalidUtf8(document);
  return result;
}

absl::StatusOr<DocumentJobResult> RunTokenizedDocumentJob(
    LlamaModel& model, const Tokenizer& tokenizer, std::span<const int32_t> document_tokens,
    const DocumentJobOptions& options, std::shared_ptr<const ScorerWeights> scorer,
    kernels::ThreadPool* pool, const DocumentJobCallbacks& callbacks) {
  CpuReadingBackend cpu(&model);
  return RunTokenizedDocumentJob(cpu, tokenizer, document_tokens, options, std::move(scorer), pool,
                                 callbacks);
}

absl::StatusOr<DocumentJobResult> RunTokenizedDocumentJob(
    ReadingBackend& backend, const Tokenizer& tokenizer, std::span<const int32_t> document_tokens,
    const DocumentJobOptions& options, std::shared_ptr<const ScorerWeights> scorer,
    kernels::ThreadPool* pool, const DocumentJobCallbacks& callbacks) {
  if (document_tokens.empty()) return absl::InvalidArgumentError("the document has no tokens");
  auto session = DocumentSession::Create(backend, tokenizer, options, std::move(scorer), pool,
                                         static_cast<int64_t>(document_tokens.size()));
  if (!session.ok()) return session.status();
  DocumentSession& s = **session;
  while (!s.reading_done()) {
    const int64_t segments = s.segments_read();
    auto consumed = s.ReadStep(document_tokens.subspan(s.document_tokens_consumed()), true);
    if (!consumed.ok()) return consumed.status();
    if (callbacks.progress && s.segments_read() != segments) {
      callbacks.progress(s.runner().tokens_read(), s.read_tokens_total());
    }
  }
  if (auto st = s.BeginAnswer(callbacks.before_answer); !st.ok()) return st;
  while (!s.answer_done()) {
    auto step = s.NextToken();
    if (!step.ok()) return step.status();
    if (callbacks.answer_text && !step->text.empty()) callbacks.answer_text(step->text);
  }
  return s.result();
}

}  // namespace longread::engine
