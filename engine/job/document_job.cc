#include "engine/job/document_job.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "engine/tokenizer/chat_template.h"

namespace longread::engine {
namespace {

// Marks where the document goes inside the rendered chat; never produced by a real template.
constexpr std::string_view kDocumentMarker = "\x01LONGREAD_DOCUMENT\x01";

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

absl::StatusOr<Task> ParseTask(std::string_view name) {
  if (name == "summarize") return Task::kSummarize;
  if (name == "analyze_code" || name == "analyze-code") return Task::kAnalyzeCode;
  if (name == "question" || name == "ask") return Task::kQuestion;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown task '", std::string(name), "' (expected summarize, analyze_code or question)"));
}

std::string_view TaskName(Task task) {
  switch (task) {
    case Task::kSummarize:
      return "summarize";
    case Task::kAnalyzeCode:
      return "analyze_code";
    case Task::kQuestion:
      return "question";
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
  if (document_tokens.empty()) return absl::InvalidArgumentError("the document has no tokens");
  auto prompt = BuildTaskPrompt(tokenizer, model.file().tokenizer().chat_template, options.task,
                                options.question, options.instruction_first);
  if (!prompt.ok()) return prompt.status();

  DocumentJobResult result;
  std::vector<int32_t> tokens = prompt->before_document;
  const int64_t prefix = static_cast<int64_t>(tokens.size());
  tokens.insert(tokens.end(), document_tokens.begin(), document_tokens.end());
  result.document_tokens = static_cast<int64_t>(document_tokens.size());
  const std::vector<int32_t>& question = prompt->after_document;
  result.prompt_tokens = prefix + static_cast<int64_t>(question.size());

  // Dense attention (and original positions) give every token its own position, so the whole
  // read and the longest answer must fit the trained context: known now, not after reading.
  const MemoryConfig& memory = options.runner.memory;
  const int64_t context = model.config().context_length;
  if (memory.is_dense() || memory.position_mode == PositionMode::kOriginal) {
    // The last answer token is emitted, never read.
    const int64_t needed = prefix + result.document_tokens + static_cast<int64_t>(question.size()) +
                           std::max<int64_t>(options.generate.max_new_tokens - 1, 0);
    if (needed > context) {
      return absl::OutOfRangeError(absl::StrCat(
          "the document has ", result.document_tokens, " tokens; with the prompt's ",
          result.prompt_tokens, " and up to ", options.generate.max_new_tokens,
          " answer tokens it needs ", needed, " positions, beyond the model's trained context of ",
          context, " tokens (", memory.is_dense() ? "dense attention" : "original positions",
          "); use the SparseK memory (the default) for longer inputs"));
    }
  }

  RecurrentRunner runner(&model, options.runner, std::move(scorer), pool);
  const std::vector<int32_t> instruction =
      tokenizer.Encode(TaskInstruction(options.task, options.question), false);
  if (options.task_aware) {
    if (auto s = runner.SetTask(instruction); !s.ok()) return s;
  }
  if (options.archive != nullptr) runner.set_archive(options.archive);
  const auto read_start = std::chrono::steady_clock::now();
  const int64_t total = static_cast<int64_t>(tokens.size());
  auto progress = [&](int64_t read) {
    if (callbacks.progress) callbacks.progress(read, total);
  };
  if (auto s = runner.Feed(tokens, progress); !s.ok()) return s;
  if (auto s = runner.Flush(progress); !s.ok()) return s;
  result.read_seconds = SecondsSince(read_start);
  result.read_tokens = total;

  GenerateOptions generate = options.generate;
  for (const char* stop : {"<|im_end|>", "<|endoftext|>", "<|eot_id|>"}) {
    const int32_t id = tokenizer.TokenId(stop);
    if (id >= 0) generate.stop_tokens.push_back(id);
  }
  if (tokenizer.eos_id() >= 0) generate.stop_tokens.push_back(tokenizer.eos_id());
  // Reads the question and generates; `stream` says whether the text goes to the callbacks.
  auto answer = [&](bool stream, std::string* text,
                    const GenerateOptions& with) -> absl::StatusOr<int64_t> {
    TokenDecoder decoder(tokenizer);
    auto on_token = [&](int32_t token) {
      for (int32_t stop : generate.stop_tokens) {
        if (token == stop) return true;
      }
      std::string piece = decoder.Push(token);
      *text += piece;
      if (stream && callbacks.answer_text && !piece.empty()) callbacks.answer_text(piece);
      return true;
    };
    auto generated = runner.Generate(question, with, on_token);
    if (!generated.ok()) return generated.status();
    std::string tail = decoder.Flush();
    *text += tail;
    if (stream && callbacks.answer_text && !tail.empty()) callbacks.answer_text(tail);
    return static_cast<int64_t>(generated->size());
  };

  const bool recall = options.archive != nullptr && options.recall.blocks > 0;
  if (recall && options.also_answer_without_recall) {
    const MemorySnapshot before_answer = runner.Snapshot();
    if (auto n = answer(false, &result.answer_without_recall, generate); !n.ok()) {
      return n.status();
    }
    if (auto s = runner.Restore(before_answer); !s.ok()) return s;
  }
  auto recall_into_memory = [&] {
    if (!recall) return;
    // A broken archive costs the recall, not the answer.
    // The question is scored as the answer will read it: the chat turn after the document.
    const auto recall_start = std::chrono::steady_clock::now();
    auto recalled = runner.Recall(question, options.recall);
    result.recall_seconds = SecondsSince(recall_start);
    if (recalled.ok()) {
      result.recalled_slots = *recalled;
    } else {
      result.recall_error = std::string(recalled.status().message());
    }
  };
  if (options.also_answer_with_sampling.has_value()) {
    // Recalled blocks overfill the memory, so the snapshot is taken before recall, and recall
    // (read-only on the archive) is repeated for the answer itself.
    const MemorySnapshot before_recall = runner.Snapshot();
    recall_into_memory();
    GenerateOptions other = generate;
    other.sampling = *options.also_answer_with_sampling;
    if (auto n = answer(false, &result.answer_with_other_sampling, other); !n.ok()) {
      return n.status();
    }
    if (auto s = runner.Restore(before_recall); !s.ok()) return s;
  }
  recall_into_memory();

  if (callbacks.before_answer) callbacks.before_answer(runner);
  const auto gen_start = std::chrono::steady_clock::now();
  auto generated = answer(true, &result.answer, generate);
  if (!generated.ok()) return generated.status();
  result.generated_tokens = *generated;
  result.generate_seconds = SecondsSince(gen_start);
  return result;
}

}  // namespace longread::engine
