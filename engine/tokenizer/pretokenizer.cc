#include "engine/tokenizer/pretokenizer.h"

#include <cstddef>
#include <string>

#include "absl/strings/str_cat.h"
#include "engine/tokenizer/unicode.h"

namespace longread::engine {
namespace {

using unicode::CharClass;

// A segment of valid UTF-8 with class lookups; positions are byte offsets and "past the end"
// reads as a class no alternative accepts, which is how the regexes see the end of input.
class Scanner {
 public:
  explicit Scanner(std::string_view s) : s_(s) {}

  size_t size() const { return s_.size(); }

  char32_t CharAt(size_t pos, int* len) const { return unicode::DecodeValid(s_, pos, len); }

  // Class of the character at pos, kNone past the end.
  static constexpr int kNone = -1;
  int ClassAt(size_t pos) const {
    if (pos >= s_.size()) return kNone;
    int len;
    return static_cast<int>(unicode::ClassOf(CharAt(pos, &len)));
  }

  size_t Next(size_t pos) const {
    int len;
    CharAt(pos, &len);
    return pos + len;
  }

  // End of the run of characters of class `cls` starting at pos; at most `max_chars` of them.
  size_t RunEnd(size_t pos, CharClass cls, int max_chars = 1 << 30) const {
    for (int n = 0; pos < s_.size() && n < max_chars; ++n) {
      int len;
      if (unicode::ClassOf(CharAt(pos, &len)) != cls) break;
      pos += len;
    }
    return pos;
  }

  bool IsNewline(size_t pos) const {
    return pos < s_.size() && (s_[pos] == '\r' || s_[pos] == '\n');
  }

  // \s+(?!\S)|\s+ at pos, where pos starts whitespace: the whole run when it reaches the end of
  // the segment, else the run less its last character (which then prefixes the next piece),
  // unless the run is a single character.
  size_t WhitespaceEnd(size_t pos) const {
    size_t last = pos;
    size_t end = pos;
    while (end < s_.size()) {
      int len;
      if (unicode::ClassOf(CharAt(end, &len)) != CharClass::kWhitespace) break;
      last = end;
      end += len;
    }
    if (end == s_.size() || last == pos) return end;
    return last;
  }

  // 's|'t|'re|'ve|'m|'ll|'d at pos (which holds '\''), optionally ASCII-case-insensitive;
  // returns pos when none matches.
  size_t ContractionEnd(size_t pos, bool ignore_case) const {
    auto lower = [&](size_t k) -> char {
      if (k >= s_.size()) return 0;
      char c = s_[k];
      if (ignore_case && c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
      return c;
    };
    const char a = lower(pos + 1);
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return pos + 2;
    const char b = lower(pos + 2);
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return pos + 3;
    return pos;
  }

 private:
  std::string_view s_;
};

constexpr int kL = static_cast<int>(CharClass::kLetter);
constexpr int kN = static_cast<int>(CharClass::kNumber);
constexpr int kO = static_cast<int>(CharClass::kOther);

size_t MatchGpt2(const Scanner& sc, std::string_view s, size_t pos) {
  if (s[pos] == '\'') {
    const size_t end = sc.ContractionEnd(pos, /*ignore_case=*/false);
    if (end != pos) return end;
  }
  size_t start = pos;
  int cls = sc.ClassAt(pos);
  if (s[pos] == ' ') {
    const int next = sc.ClassAt(pos + 1);
    if (next == kL || next == kN || next == kO) {
      start = pos + 1;
      cls = next;
    }
  }
  if (cls != static_cast<int>(CharClass::kWhitespace)) {
    return sc.RunEnd(start, static_cast<CharClass>(cls));
  }
  return sc.WhitespaceEnd(pos);
}

size_t MatchLlama3(const Scanner& sc, std::string_view s, size_t pos, int max_digits) {
  if (s[pos] == '\'') {
    const size_t end = sc.ContractionEnd(pos, /*ignore_case=*/true);
    if (end != pos) return end;
  }
  const int cls = sc.ClassAt(pos);
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (cls == kL) return sc.RunEnd(pos, CharClass::kLetter);
  const size_t next = sc.Next(pos);
  if (cls != kN && !sc.IsNewline(pos) && sc.ClassAt(next) == kL) {
    return sc.RunEnd(next, CharClass::kLetter);
  }
  // \p{N}{1,3}
  if (cls == kN) return sc.RunEnd(pos, CharClass::kNumber, max_digits);
  // ?[^\s\p{L}\p{N}]+[\r\n]*
  size_t start = pos;
  if (s[pos] == ' ' && sc.ClassAt(next) == kO) start = next;
  if (sc.ClassAt(start) == kO) {
    size_t end = sc.RunEnd(start, CharClass::kOther);
    while (sc.IsNewline(end)) ++end;
    return end;
  }
  // \s*[\r\n]+ : the whitespace run up to and including its last line break.
  size_t end = pos;
  size_t after_newline = pos;
  while (end < sc.size() && sc.ClassAt(end) == static_cast<int>(CharClass::kWhitespace)) {
    if (sc.IsNewline(end)) after_newline = end + 1;
    end = sc.Next(end);
  }
  if (after_newline != pos) return after_newline;
  return sc.WhitespaceEnd(pos);
}

void SplitWithRegex(PreTokenizerKind kind, std::string_view text,
                    absl::FunctionRef<void(std::string_view)> emit) {
  const Scanner sc(text);
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end;
    switch (kind) {
      case PreTokenizerKind::kLlama3:
        end = MatchLlama3(sc, text, pos, 3);
        break;
      case PreTokenizerKind::kQwen2:
        end = MatchLlama3(sc, text, pos, 1);
        break;
      default:
        end = MatchGpt2(sc, text, pos);
        break;
    }
    emit(text.substr(pos, end - pos));
    pos = end;
  }
}

}  // namespace

absl::StatusOr<PreTokenizerKind> PreTokenizerFromName(std::string_view name) {
  if (name == "smollm") return PreTokenizerKind::kSmolLm;
  if (name == "gpt2" || name == "default") return PreTokenizerKind::kGpt2;
  if (name == "llama-bpe" || name == "llama3") return PreTokenizerKind::kLlama3;
  if (name == "qwen2") return PreTokenizerKind::kQwen2;
  return absl::InvalidArgumentError(
      absl::StrCat("tokenizer.ggml.pre: unknown pre-tokenizer \"", std::string(name),
                   "\" (known: smollm, gpt2, default, llama-bpe, qwen2)"));
}

void PreTokenize(PreTokenizerKind kind, std::string_view text,
                 absl::FunctionRef<void(std::string_view)> emit) {
  if (kind != PreTokenizerKind::kSmolLm) {
    SplitWithRegex(kind, text, emit);
    return;
  }
  // Digits first: each \p{N} character is its own piece and the regex never sees across it.
  size_t run_start = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    int len;
    const char32_t c = unicode::DecodeValid(text, pos, &len);
    if (unicode::ClassOf(c) == CharClass::kNumber) {
      if (pos > run_start) SplitWithRegex(kind, text.substr(run_start, pos - run_start), emit);
      emit(text.substr(pos, len));
      run_start = pos + len;
    }
    pos += len;
  }
  if (pos > run_start) SplitWithRegex(kind, text.substr(run_start, pos - run_start), emit);
}

}  // namespace longread::engine
