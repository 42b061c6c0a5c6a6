// A hand-made byte-level vocabulary for tests: ids 0..255 are the single bytes.
#pragma once

#include <string>
#include <vector>

#include "engine/model_files/tokenizer_spec.h"
#include "engine/tokenizer/unicode.h"

namespace longread::engine {

// GPT-2's byte -> printable character map, written out independently of the tokenizer's own.
inline std::string ByteChar(int b) {
  const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
  char32_t cp = static_cast<char32_t>(b);
  if (!printable) {
    int n = 0;
    for (int k = 0; k < b; ++k) {
      if (!((k >= '!' && k <= '~') || (k >= 0xA1 && k <= 0xAC) || k >= 0xAE)) ++n;
    }
    cp = 256 + n;
  }
  std::string s;
  unicode::AppendUtf8(cp, &s);
  return s;
}

// A tiny vocabulary: ids 0..255 are the single bytes, then the extra tokens in order.
inline TokenizerSpec TinySpec(std::vector<std::string> extra, std::vector<std::string> merges,
                              std::string pre = "gpt2") {
  TokenizerSpec spec;
  spec.model = "gpt2";
  spec.pre = std::move(pre);
  for (int b = 0; b < 256; ++b) spec.tokens.push_back(ByteChar(b));
  for (std::string& t : extra) spec.tokens.push_back(std::move(t));
  spec.token_types.assign(spec.tokens.size(), 1);
  spec.merges = std::move(merges);
  return spec;
}

// Byte tokens plus merges across every kind of pre-tokenizer piece boundary (so a boundary in
// the wrong place changes the ids), two user-defined tokens (one a prefix of the other) and a
// control token. `pre`: the pre-tokenizer name (gpt2, smollm, llama-bpe, qwen2).
inline TokenizerSpec BoundarySpec(std::string pre) {
  const std::string sp = ByteChar(' '), nl = ByteChar('\n');
  TokenizerSpec spec = TinySpec(
      {sp + sp, sp + "a", "aa", "'s", nl + nl, "ab", "12", "..", sp + "1", "<x>", "<x>y", "<|c|>"},
      {sp + " " + sp, sp + " a", "a a", "' s", nl + " " + nl, "a b", "1 2", ". .", sp + " 1"},
      std::move(pre));
  spec.token_types[256 + 9] = 4;   // <x>: user-defined, matched in document text
  spec.token_types[256 + 10] = 4;  // <x>y
  spec.token_types[256 + 11] = 3;  // <|c|>: control, plain text in documents
  return spec;
}

}  // namespace longread::engine
