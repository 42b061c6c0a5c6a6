#include "engine/tokenizer/unicode.h"

#include <algorithm>
#include <array>
#include <iterator>

namespace longread::engine::unicode {
namespace {

struct ClassRange {
  char32_t first;
  char32_t last;
  CharClass cls;
};

constexpr ClassRange kRanges[] = {
#include "engine/tokenizer/unicode_tables.inc"
};

constexpr std::array<CharClass, 128> MakeAsciiTable() {
  std::array<CharClass, 128> table{};
  for (const ClassRange& r : kRanges) {
    for (char32_t cp = r.first; cp <= r.last && cp < 128; ++cp) table[cp] = r.cls;
  }
  return table;
}
constexpr std::array<CharClass, 128> kAscii = MakeAsciiTable();

}  // namespace

CharClass ClassOf(char32_t cp) {
  if (cp < 128) return kAscii[cp];
  const ClassRange* end = std::end(kRanges);
  const ClassRange* it = std::upper_bound(
      std::begin(kRanges), end, cp, [](char32_t c, const ClassRange& r) { return c < r.first; });
  if (it == std::begin(kRanges)) return CharClass::kOther;
  --it;
  return cp <= it->last ? it->cls : CharClass::kOther;
}

Utf8Prefix ScanUtf8(std::string_view bytes) {
  const auto b0 = static_cast<uint8_t>(bytes[0]);
  if (b0 < 0x80) return {1, true};
  int need;           // continuation bytes after the lead
  uint8_t lo = 0x80;  // allowed range of the first continuation byte (excludes overlongs,
  uint8_t hi = 0xBF;  // surrogates and code points above U+10FFFF)
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return {1, false};
  }
  int len = 1;
  for (int k = 0; k < need; ++k) {
    if (static_cast<size_t>(len) >= bytes.size()) return {len, false, true};
    const auto b = static_cast<uint8_t>(bytes[len]);
    if (b < lo || b > hi) return {len, false};
    lo = 0x80;
    hi = 0xBF;
    ++len;
  }
  return {len, true};
}

char32_t DecodeValid(std::string_view text, size_t pos, int* length) {
  const auto b0 = static_cast<uint8_t>(text[pos]);
  if (b0 < 0x80) {
    *length = 1;
    return b0;
  }
  auto cont = [&](size_t k) {
    return static_cast<char32_t>(static_cast<uint8_t>(text[pos + k]) & 0x3F);
  };
  if (b0 < 0xE0) {
    *length = 2;
    return (static_cast<char32_t>(b0 & 0x1F) << 6) | cont(1);
  }
  if (b0 < 0xF0) {
    *length = 3;
    return (static_cast<char32_t>(b0 & 0x0F) << 12) | (cont(1) << 6) | cont(2);
  }
  *length = 4;
  return (static_cast<char32_t>(b0 & 0x07) << 18) | (cont(1) << 12) | (cont(2) << 6) | cont(3);
}

bool IsValidUtf8(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    if (static_cast<uint8_t>(text[pos]) < 0x80) {
      ++pos;
      continue;
    }
    const Utf8Prefix p = ScanUtf8(text.substr(pos));
    if (!p.complete) return false;
    pos += p.length;
  }
  return true;
}

std::string ReplaceInvalidUtf8(std::string_view text) {
  std::string out;
  out.reserve(text.size() + text.size() / 8);
  size_t pos = 0;
  while (pos < text.size()) {
    const Utf8Prefix p = ScanUtf8(text.substr(pos));
    if (p.complete) {
      out.append(text.substr(pos, p.length));
    } else {
      AppendUtf8(kReplacementChar, &out);
    }
    pos += p.length;
  }
  return out;
}

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

}  // namespace longread::engine::unicode
