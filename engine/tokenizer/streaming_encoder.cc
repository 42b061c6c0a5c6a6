#include "engine/tokenizer/streaming_encoder.h"

#include <algorithm>

#include "engine/tokenizer/pretokenizer.h"
#include "engine/tokenizer/unicode.h"

namespace longread::engine {
namespace {

// Push works through its input in slices of this size, so one huge chunk is not held at once.
constexpr size_t kSliceBytes = size_t{256} << 10;

bool IsContinuation(char c) { return (static_cast<uint8_t>(c) & 0xC0) == 0x80; }

// Start of the third-from-last run of characters of one class in `text` (valid UTF-8): pieces
// that start before it are final. 0 when `text` has fewer than four runs.
size_t StartOfThirdLastRun(std::string_view text) {
  size_t end = text.size();
  int changes = 0;
  bool have_class = false;
  unicode::CharClass current = unicode::CharClass::kOther;
  while (end > 0) {
    size_t start = end - 1;
    while (start > 0 && IsContinuation(text[start])) --start;
    int length = 0;
    const unicode::CharClass c = unicode::ClassOf(unicode::DecodeValid(text, start, &length));
    if (have_class && c != current) {
      if (++changes == 3) return end;
    }
    current = c;
    have_class = true;
    end = start;
  }
  return 0;
}

}  // namespace

StreamingEncoder::StreamingEncoder(const Tokenizer& tokenizer, StreamingEncoderOptions options)
    : tokenizer_(tokenizer), options_(options) {
  for (const auto& special : tokenizer_.specials_) {
    if (!special.control) max_special_bytes_ = std::max(max_special_bytes_, special.text.size());
  }
  next_attempt_ = std::max<size_t>(1, options_.drain_every_bytes);
}

void StreamingEncoder::Push(std::string_view bytes, std::vector<int32_t>* out) {
  if (finished_) {
    finished_ = false;
    bytes_pushed_ = invalid_utf8_ = forced_cuts_ = 0;
  }
  bytes_pushed_ += static_cast<int64_t>(bytes.size());
  while (!bytes.empty()) {
    const std::string_view slice = bytes.substr(0, kSliceBytes);
    bytes.remove_prefix(slice.size());
    Sanitize(slice, /*end=*/false);
    if (text_.size() >= next_attempt_ || text_.size() > options_.max_held_bytes) {
      Drain(/*end=*/false, out);
      next_attempt_ =
          std::clamp<size_t>(2 * text_.size(), std::max<size_t>(1, options_.drain_every_bytes),
                             std::max<size_t>(1, options_.max_held_bytes));
    }
  }
}

void StreamingEncoder::Finish(std::vector<int32_t>* out) {
  Sanitize({}, /*end=*/true);
  Drain(/*end=*/true, out);
  text_.clear();
  scan_ = 0;
  next_attempt_ = std::max<size_t>(1, options_.drain_every_bytes);
  finished_ = true;
}

void StreamingEncoder::Sanitize(std::string_view bytes, bool end) {
  auto replace = [&] {
    unicode::AppendUtf8(unicode::kReplacementChar, &text_);
    ++invalid_utf8_;
  };
  size_t i = 0;
  if (!utf8_tail_.empty()) {
    // The held bytes are a valid prefix: the next character (or maximal invalid subpart) starts
    // with them and takes at most 3 more bytes.
    std::string joined = utf8_tail_;
    joined.append(bytes.substr(0, 3));
    const unicode::Utf8Prefix p = unicode::ScanUtf8(joined);
    if (p.truncated && static_cast<size_t>(p.length) == joined.size() && !end) {
      utf8_tail_ = std::move(joined);
      return;
    }
    if (p.complete) {
      text_.append(joined, 0, p.length);
    } else {
      replace();
    }
    i = static_cast<size_t>(p.length) - utf8_tail_.size();
    utf8_tail_.clear();
  }
  const size_t n = bytes.size();
  while (i < n) {
    size_t ascii = i;
    while (ascii < n && static_cast<uint8_t>(bytes[ascii]) < 0x80) ++ascii;
    text_.append(bytes.substr(i, ascii - i));
    i = ascii;
    if (i == n) break;
    const unicode::Utf8Prefix p = unicode::ScanUtf8(bytes.substr(i));
    if (p.truncated && i + p.length == n && !end) {
      utf8_tail_.assign(bytes.substr(i));
      break;
    }
    if (p.complete) {
      text_.append(bytes.substr(i, p.length));
    } else {
      replace();
    }
    i += p.length;
  }
}

void StreamingEncoder::Drain(bool end, std::vector<int32_t>* out) {
  const size_t limit = SplitSpecials(end, out);
  const size_t done = EncodeFinalPieces(limit, end, out);
  if (!end && text_.size() > options_.max_held_bytes) ForceCut(limit - done, out);
}

size_t StreamingEncoder::SplitSpecials(bool end, std::vector<int32_t>* out) {
  if (max_special_bytes_ == 0) return text_.size();
  size_t q = scan_;
  while (q < text_.size()) {
    if (!tokenizer_.special_first_byte_[static_cast<uint8_t>(text_[q])]) {
      ++q;
      continue;
    }
    const std::string_view rest = std::string_view(text_).substr(q);
    if (!end && rest.size() < max_special_bytes_) {
      // More text could still make a special token start here (or a longer one).
      const bool open = std::any_of(
          tokenizer_.specials_.begin(), tokenizer_.specials_.end(), [&](const auto& special) {
            return !special.control && (std::string_view(special.text).starts_with(rest) ||
                                        rest.starts_with(special.text));
          });
      if (open) {
        scan_ = q;
        return q;
      }
      ++q;
      continue;
    }
    int32_t id = -1;
    const size_t length = tokenizer_.MatchSpecialAt(text_, q, /*parse_special=*/false, &id);
    if (length == 0) {
      ++q;
      continue;
    }
    // A special token splits the text as the end of the text would: the text before it is final.
    EncodeFinalPieces(q, /*end=*/true, out);
    out->push_back(id);
    Erase(length);
    q = 0;
  }
  scan_ = text_.size();
  return text_.size();
}

size_t StreamingEncoder::EncodeFinalPieces(size_t limit, bool end, std::vector<int32_t>* out) {
  if (limit == 0) return 0;
  const std::string_view considered(text_.data(), limit);
  const size_t final_before = end ? limit : StartOfThirdLastRun(considered);
  if (final_before == 0) return 0;
  std::vector<std::string_view> pieces;
  size_t cut = 0;
  PreTokenize(tokenizer_.pre_, considered, [&](std::string_view piece) {
    const size_t start = static_cast<size_t>(piece.data() - considered.data());
    if (start >= final_before) return;
    pieces.push_back(piece);
    cut = start + piece.size();
  });
  tokenizer_.EncodePieces(pieces, &word_cache_, out);
  Erase(cut);
  return cut;
}

void StreamingEncoder::ForceCut(size_t limit, std::vector<int32_t>* out) {
  const std::string_view considered(text_.data(), limit);
  std::vector<std::string_view> pieces;
  PreTokenize(tokenizer_.pre_, considered,
              [&](std::string_view piece) { pieces.push_back(piece); });
  size_t cut = 0;
  if (pieces.size() >= 2) {
    pieces.pop_back();
    cut = static_cast<size_t>(pieces.back().data() + pieces.back().size() - considered.data());
  } else if (!pieces.empty()) {
    // One piece longer than the bound: cut it in half at a character boundary.
    cut = limit / 2;
    while (cut > 0 && IsContinuation(text_[cut])) --cut;
    if (cut == 0) return;
    pieces.assign(1, considered.substr(0, cut));
  }
  if (cut == 0) return;
  ++forced_cuts_;
  tokenizer_.EncodePieces(pieces, &word_cache_, out);
  Erase(cut);
}

void StreamingEncoder::Erase(size_t n) {
  if (n == 0) return;
  text_.erase(0, n);
  scan_ = scan_ > n ? scan_ - n : 0;
}

}  // namespace longread::engine
