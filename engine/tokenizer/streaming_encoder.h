// Tokenizes a document that arrives as a stream of byte chunks of any size (a chunk may end inside
// a UTF-8 character, a word, a whitespace run or a number) without ever holding the whole
// document: the coordinator's path for huge documents. The concatenated output of Push... Finish
// equals Tokenizer::Encode(whole_document, /*parse_special=*/false) for every chunking, and
// invalid_utf8_sequences() equals CountInvalidUtf8(whole_document) (engine/job/document_job.h).
//
// What is held back, and why that is enough: invalid UTF-8 is replaced as in Encode (at most 3
// bytes of an unfinished character wait for the next chunk). Special tokens the document can
// contain (user-defined ones; control tokens are plain text here) split the text as in Encode; a
// possible special token at the end waits (at most the longest special's length). Pre-tokenizer
// pieces never cross, and every pre-tokenizer's regex, matching from a piece's start, reads at
// most three runs of characters of one class (letter, number, whitespace, other) plus one
// character: so a piece whose start is followed by at least three more class runs is final, and
// the held tail is the last three class runs (e.g. "word, then"-sized, or a whole whitespace run
// plus its neighbours).
//
// Bound: the held text is at most max_held_bytes (1 MiB) plus one internal slice (256 KiB). Text
// whose last three class runs are longer than that (a megabyte of letters or spaces without a
// break: not prose, code or data a reader would send) is cut at the last pre-tokenizer piece
// boundary, or, inside a single piece, at a character boundary, as if the text ended there; the
// tokens around such a cut may then differ from Encode's, and forced_cuts() counts them. Besides
// the text, a BPE cache of at most 65,536 distinct words is kept (a few MB), as Encode keeps one
// per call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/tokenizer/tokenizer.h"

namespace longread::engine {

struct StreamingEncoderOptions {
  // The bound on held text (see above). Tests lower it to reach the forced cut.
  size_t max_held_bytes = size_t{1} << 20;
  // Tokenize what is final once this much text is held (and at least every doubling of what was
  // held after the last time): big enough that re-scanning the held tail stays amortized O(1)
  // per byte, small enough to be irrelevant to memory. 1: after every Push (tests, fuzzer).
  size_t drain_every_bytes = size_t{64} << 10;
};

class StreamingEncoder {
 public:
  // `tokenizer` must outlive the encoder. Not thread-safe (one per stream); the tokenizer is
  // shared.
  explicit StreamingEncoder(const Tokenizer& tokenizer, StreamingEncoderOptions options = {});

  // Appends the tokens that `bytes` makes final to *out.
  void Push(std::string_view bytes, std::vector<int32_t>* out);
  // Ends the stream: appends the remaining tokens to *out. The counters below then describe the
  // whole document; a Push after Finish starts a new document (counters from zero).
  void Finish(std::vector<int32_t>* out);

  int64_t bytes_pushed() const { return bytes_pushed_; }
  // Maximal invalid UTF-8 subparts so far (each became one U+FFFD).
  int64_t invalid_utf8_sequences() const { return invalid_utf8_; }
  // Bytes held now (unfinished character + text not yet tokenized).
  size_t held_bytes() const { return utf8_tail_.size() + text_.size(); }
  // Times the bound forced a cut where Encode of the whole might not cut (see above).
  int64_t forced_cuts() const { return forced_cuts_; }

 private:
  // Replaces invalid UTF-8 in `bytes` (after what is in utf8_tail_) into text_.
  void Sanitize(std::string_view bytes, bool end);
  // Tokenizes what is final in text_ (everything when `end`), erasing it.
  void Drain(bool end, std::vector<int32_t>* out);
  // Where a special token may start at or after scan_ with the text so far (text_.size() when
  // nowhere); tokenizes the text before each determined special, and the special.
  size_t SplitSpecials(bool end, std::vector<int32_t>* out);
  // Tokenizes the final pieces of text_[0, limit) (`end`: all of it), erases them. Returns the
  // bytes tokenized.
  size_t EncodeFinalPieces(size_t limit, bool end, std::vector<int32_t>* out);
  // Cuts held text beyond the bound (see above).
  void ForceCut(size_t limit, std::vector<int32_t>* out);
  void Erase(size_t n);

  const Tokenizer& tokenizer_;
  const StreamingEncoderOptions options_;
  size_t max_special_bytes_ = 0;
  Tokenizer::WordCache word_cache_;  // kept across drains, as Encode keeps its own for a call
  std::string utf8_tail_;            // an unfinished but so far valid character, <= 3 bytes
  std::string text_;                 // valid UTF-8 not yet tokenized
  size_t scan_ = 0;                  // text_[0, scan_) holds no special token start
  size_t next_attempt_ = 0;
  int64_t bytes_pushed_ = 0;
  int64_t invalid_utf8_ = 0;
  int64_t forced_cuts_ = 0;
  bool finished_ = false;
};

}  // namespace longread::engine
