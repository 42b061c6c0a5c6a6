// Byte-level BPE tokenizer (GPT-2 family) built from a model file's TokenizerSpec.
//
// Encoding: text -> (invalid UTF-8 replaced) -> special tokens split out -> pre-tokenizer pieces
// -> bytes mapped to GPT-2's printable characters -> BPE merges by rank -> ids. Results match
// Hugging Face `tokenizers` with the model's original pre-tokenizer (see DESIGN.md §3).
//
// Invalid UTF-8 in the input is replaced by U+FFFD, one per maximal invalid subpart, exactly as
// Python's bytes.decode('utf-8', errors='replace') does, and the result is tokenized; so
// Decode(Encode(x)) == x for valid UTF-8 x. The one exception: bytes the vocabulary has no
// token for (SmolLM2 lacks a few control characters such as 0x04) are dropped, as the reference
// tokenizers drop them.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/model_files/tokenizer_spec.h"
#include "engine/tokenizer/pretokenizer.h"

namespace longread::engine {

class Tokenizer {
 public:
  // Validates the spec (model "gpt2", known pre-tokenizer, unique tokens, types and special ids
  // in range, merges naming known tokens whose concatenation is a token) and builds the tables.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Create(const TokenizerSpec& spec);

  // Text to ids. With parse_special, control tokens written in the text ("<|im_start|>") become
  // their ids; without it they are tokenized as plain text, so document text cannot inject
  // them. User-defined tokens (type 4) are always matched, as in the reference tokenizers.
  // Thread-safe; the per-word cache lives for one call.
  std::vector<int32_t> Encode(std::string_view text, bool parse_special) const;

  // Length of the special token that starts at text[pos] (longest match), 0 if none; sets *id.
  // Control tokens count only with parse_special, user-defined tokens always.
  size_t MatchSpecialAt(std::string_view text, size_t pos, bool parse_special, int32_t* id) const;

  // Ids to bytes. Control and user-defined tokens decode to their text; ids out of range decode
  // to U+FFFD. The result may hold invalid UTF-8 when the ids split a character.
  std::string Decode(absl::Span<const int32_t> ids) const;

  // The bytes one id stands for ("" for an id out of range).
  std::string_view TokenBytes(int32_t id) const;

  int32_t vocab_size() const { return static_cast<int32_t>(token_types_.size()); }
  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }
  bool add_bos() const { return add_bos_; }
  bool IsControl(int32_t id) const;
  // Id of a token by its text as written in the spec (byte-level characters for normal tokens,
  // plain text for control tokens), or -1.
  int32_t TokenId(std::string_view spec_text) const;

 private:
  struct Merge {
    int32_t rank;
    int32_t result;
  };
  struct SpecialToken {
    std::string text;
    int32_t id;
    bool control;
  };
  struct Scratch;

  friend class StreamingEncoder;

  Tokenizer() = default;
  void EncodeText(std::string_view text, Scratch* scratch, std::vector<int32_t>* out) const;
  void EncodePiece(std::string_view piece, Scratch* scratch, std::vector<int32_t>* out) const;
  void Bpe(std::string_view piece, Scratch* scratch, std::vector<int32_t>* out) const;
  // BPE of pre-tokenizer pieces, in order (StreamingEncoder chooses the pieces). `cache` (piece
  // -> ids) outlives the call, unlike Encode's, and is filled up to the same number of words.
  using WordCache = absl::flat_hash_map<std::string, std::vector<int32_t>>;
  void EncodePieces(const std::vector<std::string_view>& pieces, WordCache* cache,
                    std::vector<int32_t>* out) const;

  PreTokenizerKind pre_ = PreTokenizerKind::kGpt2;
  bool ignore_merges_ = false;  // a piece that is itself a token skips BPE (Llama 3)
  std::vector<int32_t> token_types_;
  absl::flat_hash_map<std::string, int32_t> token_ids_;  // spec text -> id
  absl::flat_hash_map<uint64_t, Merge> merges_;          // (left << 32 | right) -> merge
  int32_t byte_token_[256];                              // byte -> its one-byte token, or -1
  std::string decoded_;                                  // all tokens' bytes, concatenated
  std::vector<uint32_t> decoded_offset_;                 // id -> [offset[id], offset[id + 1])
  std::vector<SpecialToken> specials_;                   // longest first
  bool special_first_byte_[256] = {};
  int32_t bos_id_ = -1;
  int32_t eos_id_ = -1;
  bool add_bos_ = false;
};

// Turns generated ids into text piece by piece, returning only complete UTF-8: a character
// split across tokens is held back until its last byte arrives. Invalid sequences come out as
// U+FFFD (same rule as the encoder's input); Flush() ends the stream.
class TokenDecoder {
 public:
  explicit TokenDecoder(const Tokenizer& tokenizer) : tokenizer_(tokenizer) {}

  std::string Push(int32_t id);
  std::string Flush();

 private:
  const Tokenizer& tokenizer_;
  std::string pending_;  // at most 3 bytes: a valid but incomplete character
};

}  // namespace longread::engine
