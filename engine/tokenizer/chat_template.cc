#include "engine/tokenizer/chat_template.h"

#include "absl/strings/str_cat.h"
#include "engine/tokenizer/unicode.h"

namespace longread::engine {
namespace {

constexpr char kImStart[] = "<|im_start|>";
constexpr char kImEnd[] = "<|im_end|>";

// Jinja string literals write a newline either raw or as "\n".
std::string UnescapeJinja(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) {
      const char c = s[++i];
      out.push_back(c == 'n' ? '\n' : c == 't' ? '\t' : c);
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

// The literal text of "<|im_start|>system\n...<|im_end|>" in a ChatML template, when the
// template writes one as a fixed string (a default system message); "" otherwise.
std::string ExtractDefaultSystem(std::string_view source) {
  for (std::string_view head : {"<|im_start|>system\n", "<|im_start|>system\\n"}) {
    const size_t start = source.find(head);
    if (start == std::string_view::npos) continue;
    const size_t text_start = start + head.size();
    const size_t end = source.find(kImEnd, text_start);
    if (end == std::string_view::npos) return "";
    const std::string_view text = source.substr(text_start, end - text_start);
    // A Jinja expression or a string break means the system text comes from the messages.
    if (text.find_first_of("'\"{}") != std::string_view::npos) return "";
    return UnescapeJinja(text);
  }
  return "";
}

// Jinja's |trim (Python str.strip()).
std::string_view Trim(std::string_view s) {
  auto is_space = [](std::string_view t, size_t pos, int* len) {
    const char32_t c = unicode::DecodeValid(t, pos, len);
    return unicode::ClassOf(c) == unicode::CharClass::kWhitespace || (c >= 0x1C && c <= 0x1F);
  };
  if (!unicode::IsValidUtf8(s)) return s;
  size_t begin = 0;
  int len;
  while (begin < s.size() && is_space(s, begin, &len)) begin += len;
  size_t end = begin;
  size_t pos = begin;
  while (pos < s.size()) {
    const bool space = is_space(s, pos, &len);
    pos += len;
    if (!space) end = pos;
  }
  return s.substr(begin, end - begin);
}

}  // namespace

absl::StatusOr<ChatTemplate> ChatTemplate::FromSource(std::string_view source) {
  ChatTemplate t;
  if (source.find_first_not_of(" \t\r\n") == std::string_view::npos) {
    t.family_ = ChatTemplateFamily::kChatMl;
    t.is_fallback_ = true;
    return t;
  }
  if (source.find(kImStart) != std::string_view::npos) {
    t.family_ = ChatTemplateFamily::kChatMl;
    t.default_system_ = ExtractDefaultSystem(source);
    if (source.find("tools") != std::string_view::npos) {
      return absl::UnimplementedError(
          "chat_template: a ChatML template with tool calling is not supported");
    }
    return t;
  }
  if (source.find("<|start_header_id|>") != std::string_view::npos) {
    if (source.find("Cutting Knowledge Date") != std::string_view::npos) {
      return absl::UnimplementedError(
          "chat_template: the Llama 3.1+ template (dated system block, tools) is not supported; "
          "only the plain Llama 3 header template is");
    }
    t.family_ = ChatTemplateFamily::kLlama3;
    return t;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "chat_template: not a recognized family (ChatML with <|im_start|>, or Llama 3 with "
      "<|start_header_id|>); it begins \"",
      std::string(source.substr(0, 80)), "\""));
}

absl::StatusOr<std::vector<PromptPart>> ChatTemplate::RenderParts(
    absl::Span<const ChatMessage> messages, bool add_generation_prompt) const {
  if (messages.empty()) return absl::InvalidArgumentError("chat: no messages");
  for (size_t i = 0; i < messages.size(); ++i) {
    if (messages[i].role.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("chat: messages[", i, "].role is empty"));
    }
  }
  std::vector<PromptPart> parts;
  auto markup = [&](std::string text) { parts.push_back({std::move(text), true}); };
  auto text = [&](std::string_view t) { parts.push_back({std::string(t), false}); };

  if (family_ == ChatTemplateFamily::kChatMl) {
    if (!default_system_.empty() && messages[0].role != "system") {
      markup(absl::StrCat(kImStart, "system\n", default_system_, kImEnd, "\n"));
    }
    for (const ChatMessage& m : messages) {
      markup(kImStart);
      text(m.role);
      markup("\n");
      text(m.content);
      markup(absl::StrCat(kImEnd, "\n"));
    }
    if (add_generation_prompt) markup(absl::StrCat(kImStart, "assistant\n"));
    return parts;
  }

  markup("<|begin_of_text|>");
  for (const ChatMessage& m : messages) {
    markup("<|start_header_id|>");
    text(m.role);
    markup("<|end_header_id|>\n\n");
    text(Trim(m.content));
    markup("<|eot_id|>");
  }
  if (add_generation_prompt) markup("<|start_header_id|>assistant<|end_header_id|>\n\n");
  return parts;
}

absl::StatusOr<std::string> ChatTemplate::Render(absl::Span<const ChatMessage> messages,
                                                 bool add_generation_prompt) const {
  auto parts = RenderParts(messages, add_generation_prompt);
  if (!parts.ok()) return parts.status();
  std::string out;
  for (const PromptPart& p : *parts) out += p.text;
  return out;
}

std::vector<int32_t> EncodePrompt(const Tokenizer& tokenizer, absl::Span<const PromptPart> parts) {
  std::vector<int32_t> ids;
  std::string run;  // plain text not yet encoded
  auto flush = [&] {
    const std::vector<int32_t> more = tokenizer.Encode(run, /*parse_special=*/false);
    ids.insert(ids.end(), more.begin(), more.end());
    run.clear();
  };
  for (const PromptPart& part : parts) {
    if (!part.markup) {
      run += part.text;
      continue;
    }
    size_t pos = 0;
    while (pos < part.text.size()) {
      int32_t id;
      const size_t length = tokenizer.MatchSpecialAt(part.text, pos, /*parse_special=*/true, &id);
      if (length == 0) {
        run.push_back(part.text[pos++]);
        continue;
      }
      flush();
      ids.push_back(id);
      pos += length;
    }
  }
  flush();
  return ids;
}

}  // namespace longread::engine
