// Pre-tokenizers: split text into the pieces that BPE merges never cross. Each regex of the
// reference tokenizers is implemented as a hand-written scanner over Unicode character classes,
// matching the leftmost-first, backtracking semantics of the regex it replaces.
#pragma once

#include <string_view>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"

namespace longread::engine {

enum class PreTokenizerKind {
  // GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  kGpt2,
  // Hugging Face Sequence[Digits(individual_digits=True), ByteLevel(use_regex=True)]: every
  // \p{N} character becomes a piece of its own first, then the GPT-2 regex splits the rest.
  kSmolLm,
  // Llama 3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
  //          ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  kLlama3,
  // Qwen 2: as Llama 3 but \p{N} one digit at a time.
  kQwen2,
};

// Maps GGUF's tokenizer.ggml.pre ("smollm", "gpt2", "default", "llama-bpe", "qwen2") to a kind.
absl::StatusOr<PreTokenizerKind> PreTokenizerFromName(std::string_view name);

// Calls `emit` with each piece of `text` (valid UTF-8) in order; the pieces concatenate to
// `text`.
void PreTokenize(PreTokenizerKind kind, std::string_view text,
                 absl::FunctionRef<void(std::string_view)> emit);

}  // namespace longread::engine
