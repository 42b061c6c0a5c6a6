// Test documents for the quality bench: a haystack of real, varied text (licenses, package
// copyright files, C++ headers, this repository's sources) or of a repeated filler sentence, with
// a pass key buried at a chosen depth; and long documents with invented facts planted in them.
// Everything is a pure function of the corpus, the tokenizer and a seed, so that every memory
// method reads exactly the same tokens in a trial.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/tokenizer/tokenizer.h"

namespace longread::bench {

// A directory to draw text from; `name` keeps only files of that base name ("" = all), and at
// most `max_files` of them (evenly spaced over the sorted list: a slice, not a prefix).
struct CorpusSource {
  std::string dir;
  std::string name;
  int64_t max_files = 400;
};

// Parses "DIR[:NAME[:MAX_FILES]]".
absl::StatusOr<CorpusSource> ParseCorpusSource(const std::string& spec);

class Corpus {
 public:
  // Lists readable text files (no NUL byte in their first 4 KiB, at least 256 bytes) under each
  // source, in sorted order so that a seed means the same text on every machine with the same
  // files. Sources that do not exist are skipped and reported in `skipped`.
  static absl::StatusOr<Corpus> Build(const std::vector<CorpusSource>& sources);

  // About `min_bytes` of text: chunks of 1–4 KiB cut at random line starts of random files (a
  // random source first, so that no one source dominates), separated by blank lines.
  std::string Sample(std::mt19937_64& rng, int64_t min_bytes) const;

  int64_t file_count() const;
  const std::vector<std::string>& skipped() const { return skipped_; }
  // Per source: directory and number of files used.
  std::vector<std::pair<std::string, int64_t>> Summary() const;

 private:
  std::vector<std::string> source_dirs_;
  std::vector<std::vector<std::string>> files_;  // per source
  std::vector<std::string> skipped_;
};

enum class HaystackKind { kFiller, kReal };

// Exactly `n_tokens` tokens of haystack text.
std::vector<int32_t> HaystackTokens(const engine::Tokenizer& tokenizer, HaystackKind kind,
                                    const Corpus* corpus, std::mt19937_64& rng, int64_t n_tokens);

// The needle phrasings (each holds the key once or twice); `phrasing` indexes them.
int NeedlePhrasingCount();
std::string NeedleText(int phrasing, const std::string& key);

// Inserts `insert` into `haystack` at the line start nearest to `depth` (0..1) of its length and
// trims the end so that the result keeps the haystack's length. Returns the insert's offset.
int64_t InsertAtLineStart(const engine::Tokenizer& tokenizer, std::vector<int32_t>* haystack,
                          const std::vector<int32_t>& insert, double depth);

struct PasskeyDocument {
  std::vector<int32_t> tokens;
  std::string key;  // 5 digits
  int phrasing = 0;
  int64_t needle_at = 0;  // token offset of the needle
};

PasskeyDocument MakePasskeyDocument(const engine::Tokenizer& tokenizer, HaystackKind kind,
                                    const Corpus* corpus, std::mt19937_64& rng, int64_t n_tokens,
                                    double depth);

// An invented fact: "Captain Ilsa Marwick founded the harbor of Tessaly in 1742."
struct Fact {
  std::string sentence;
  std::string name;    // the invented surname: the fact counts as mentioned if it appears
  std::string number;  // ... or if this number does
};

// `count` facts with distinct surnames and numbers.
std::vector<Fact> MakeFacts(std::mt19937_64& rng, int count);

// A document of exactly `n_tokens` tokens with the facts spread evenly through it.
std::vector<int32_t> MakeFactsDocument(const engine::Tokenizer& tokenizer, const Corpus& corpus,
                                       std::mt19937_64& rng, int64_t n_tokens,
                                       const std::vector<Fact>& facts);

// How many facts the text mentions (by surname or number).
int CountMentionedFacts(const std::string& text, const std::vector<Fact>& facts,
                        std::vector<bool>* mentioned);

}  // namespace longread::bench
