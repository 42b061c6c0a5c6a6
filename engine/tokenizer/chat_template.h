// Chat prompts without a Jinja interpreter: the model's template source is recognized by family
// and rendered by code that produces the same text.
//
// Families: ChatML ("<|im_start|>role\ncontent<|im_end|>\n"; a default system message written in
// the template, such as SmolLM2's, is extracted from the source and inserted when the first
// message is not a system one) and Llama 3 ("<|start_header_id|>role<|end_header_id|>\n\n"
// content "<|eot_id|>", content trimmed, BOS text first). Anything else is refused. An empty
// template falls back to plain ChatML, and says so.
//
// The rendered prompt keeps template markup apart from message text, so that EncodePrompt
// turns control tokens into ids only where the template wrote them: a message containing
// "<|im_end|>" stays text.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/tokenizer/tokenizer.h"

namespace longread::engine {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant", ...
  std::string content;
};

// A piece of a rendered prompt: template markup (may hold control tokens) or message text.
struct PromptPart {
  std::string text;
  bool markup;
};

enum class ChatTemplateFamily { kChatMl, kLlama3 };

class ChatTemplate {
 public:
  // Recognizes the family of a Jinja template source (TokenizerSpec::chat_template).
  static absl::StatusOr<ChatTemplate> FromSource(std::string_view source);

  // Errors: no messages, or a message with an empty role.
  absl::StatusOr<std::vector<PromptPart>> RenderParts(absl::Span<const ChatMessage> messages,
                                                      bool add_generation_prompt) const;
  // The prompt text, as the Jinja template would render it.
  absl::StatusOr<std::string> Render(absl::Span<const ChatMessage> messages,
                                     bool add_generation_prompt) const;

  ChatTemplateFamily family() const { return family_; }
  // True when the model had no template and plain ChatML is used instead.
  bool is_fallback() const { return is_fallback_; }
  // The system message the template inserts when none is given ("" for none).
  const std::string& default_system() const { return default_system_; }

 private:
  ChatTemplateFamily family_ = ChatTemplateFamily::kChatMl;
  bool is_fallback_ = false;
  std::string default_system_;
};

// Ids for a rendered prompt: control tokens are parsed in markup only; text runs that span
// markup and message text are encoded as one, as the reference encodes the whole prompt string.
std::vector<int32_t> EncodePrompt(const Tokenizer& tokenizer, absl::Span<const PromptPart> parts);

}  // namespace longread::engine
