// Scorer weights: one linear importance scorer per (layer, KV head) on the layer's normalized
// hidden state (the attention-norm output), u = w·x + b + λ·position (DESIGN.md §4). The file is
// small and keyed by the model's fingerprint so that weights fitted for one model are never
// applied to another.
//
// File format, version 1, all integers and floats little-endian:
//   offset 0   "LRSCORER"                      8 bytes
//          8   u32 format version (1)
//         12   u32 fingerprint length F (<= 4096), then F bytes
//              u32 provenance length P (<= 1 MiB), then P bytes (free form: how it was fitted)
//              i32 n_layers, i32 n_kv_heads, i32 d_model  (each >= 1)
//              f32 w[n_layers][n_kv_heads][d_model]
//              f32 b[n_layers][n_kv_heads]
//              f32 slope[n_layers][n_kv_heads]
//   end − 8    u64 XXH64 (seed 0) of every byte before it
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace longread::engine {

struct ScorerWeights {
  std::string model_fingerprint;
  int32_t n_layers = 0;
  int32_t n_kv_heads = 0;
  int32_t d_model = 0;
  std::vector<float> w;      // [layer][head][d_model]
  std::vector<float> b;      // [layer][head]
  std::vector<float> slope;  // [layer][head]; λ, 0 = no position term
  std::string provenance;    // e.g. the calibration command line
};

// Zero weights of the given shape (every score 0: selection falls back to the tie rule).
ScorerWeights ZeroScorerWeights(std::string model_fingerprint, int32_t n_layers, int32_t n_kv_heads,
                                int32_t d_model);

// Sizes consistent with the dimensions, dimensions >= 1, every weight finite.
absl::Status ValidateScorerWeights(const ScorerWeights& weights);

// Loads and checks everything: NotFound if the file is missing; DataLoss if it is truncated,
// corrupted (checksum) or malformed; FailedPrecondition, naming both sides, if its fingerprint
// or dimensions differ from the expected ones; InvalidArgument for non-finite weights.
absl::StatusOr<ScorerWeights> LoadScorerWeights(const std::string& path,
                                                std::string_view expected_fingerprint,
                                                int32_t n_layers, int32_t n_kv_heads,
                                                int32_t d_model);

// Writes to a temporary file beside `path`, fsyncs it and renames it over `path`: readers see
// the old file or the new one, never a partial one.
absl::Status SaveScorerWeights(const std::string& path, const ScorerWeights& weights);

// Scores for n_tokens tokens of one layer: out[t * n_kv_heads + h] =
// w[layer][h]·x_norm[t * d_model ...] + b[layer][h] + slope[layer][h] * positions[t].
// positions may be null (no position term). Only score differences matter for selection, so
// positions may be relative to any origin: keep them small to keep fp32 precision.
void ScoreTokens(const ScorerWeights& weights, int32_t layer, const float* x_norm, int64_t n_tokens,
                 const int64_t* positions, float* out);

}  // namespace longread::engine
