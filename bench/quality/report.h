// What the quality bench measured, as plain records; the tables it prints and the JSON it writes
// (every trial, plus per (method, length) and per (method, length, depth) summaries).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "bench/quality/haystack.h"

namespace longread::bench {

struct PasskeyTrial {
  std::string method;
  int64_t length = 0;  // tokens the model sees: chat prompt + document + answer room
  double depth = 0;
  int trial = 0;
  std::string key;
  int phrasing = 0;
  int64_t document_tokens = 0;
  int64_t needle_at = 0;
  uint64_t document_hash = 0;  // FNV-1a of the tokens: pairs trials across runs only if equal
  bool possible = true;        // false: dense attention beyond the model's context
  std::string answer;
  bool correct = false;
  int64_t read_tokens = 0, generated_tokens = 0;
  double read_seconds = 0, generate_seconds = 0;
  int64_t recalled_slots = 0;  // all (layer, KV head) together
  // Share of (layer, KV head) whose memory holds every token of the key when the answer starts
  // (-1: the key's tokens were not found in the document).
  double key_held_share = -1;
  std::string recall_error;  // recall failed: answered without it
  // --compare-*: the answer from the same read with other generation settings.
  bool compared = false;
  std::string compared_answer;
  bool compared_correct = false;
};

struct PerplexityResult {
  std::string method;
  std::string source;
  int64_t tokens = 0;
  int64_t first_counted = 0;  // NLL is averaged over positions >= this (after the first segment)
  bool possible = true;
  int64_t counted_tokens = 0;
  double mean_nll = 0, perplexity = 0, seconds = 0;
};

struct FactsResult {
  std::string method;
  int64_t total_tokens = 0;
  bool possible = true;
  std::vector<Fact> facts;
  std::string summary;
  std::vector<bool> mentioned;
  int mentioned_count = 0;
};

struct Report {
  std::string command, model, model_fingerprint, scorer, scorer_provenance, error;
  int64_t context_length = 0;
  int threads = 0;
  // Run settings as JSON values (already encoded), in the order they are printed.
  std::vector<std::pair<std::string, std::string>> config;
  // Each method's name and the scorer file it used ("none": keys scored without one).
  std::vector<std::pair<std::string, std::string>> method_scorers;
  std::vector<std::string> config_notes;
  std::vector<std::pair<std::string, int64_t>> corpus;  // source directory, files used
  std::vector<std::string> corpus_skipped;
  bool stopped_early = false;
  double elapsed_seconds = 0;
  std::vector<PasskeyTrial> passkey;
  std::vector<PerplexityResult> perplexity;
  std::vector<FactsResult> facts;

  // Date, CPU, load average, git commit (of LONGREAD_SOURCE_DIR or the working directory).
  void FillEnvironment();
  void PrintTables() const;
  // Writes to `path`, or bench/results/quality-<date>.json when empty; returns the path.
  std::string WriteJson(const std::string& path) const;

  std::string date, device, load_average, git_commit;
};

std::string JsonString(std::string_view s);

}  // namespace longread::bench
