// The small part of Unicode that a byte-level BPE tokenizer needs: UTF-8 decoding with the
// replacement rules of Python's bytes.decode('utf-8', errors='replace'), and the character
// classes \p{L}, \p{N} and \s that the pre-tokenizer regexes are written with.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace longread::engine::unicode {

inline constexpr char32_t kReplacementChar = 0xFFFD;

enum class CharClass : uint8_t { kOther = 0, kLetter, kNumber, kWhitespace };

// \p{L} (Lu Ll Lt Lm Lo), \p{N} (Nd Nl No), \s (the White_Space property), else kOther.
CharClass ClassOf(char32_t cp);

// Length of the longest prefix of `bytes` (1..4) that is a valid UTF-8 sequence or a prefix of
// one ("maximal subpart"), and whether it is a complete character. A byte that cannot start a
// sequence gives {1, false}. `truncated`: the bytes ended inside a sequence that was valid so
// far (more input could complete it). `bytes` must not be empty.
struct Utf8Prefix {
  int length;
  bool complete;
  bool truncated = false;
};
Utf8Prefix ScanUtf8(std::string_view bytes);

// Decodes the character at text[pos]; text must be valid UTF-8 there. Sets *length to its byte
// count.
char32_t DecodeValid(std::string_view text, size_t pos, int* length);

// True when `text` is entirely valid UTF-8 (no surrogates, no overlongs, <= U+10FFFF).
bool IsValidUtf8(std::string_view text);

// Copy of `text` with each maximal invalid subpart replaced by U+FFFD, exactly as Python's
// bytes.decode('utf-8', errors='replace') does. Valid input comes back unchanged.
std::string ReplaceInvalidUtf8(std::string_view text);

void AppendUtf8(char32_t cp, std::string* out);

}  // namespace longread::engine::unicode
