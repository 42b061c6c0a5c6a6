// The SparseK operator (DESIGN.md §4) and the exact hard top-k selection that a segment needs.
//
// SparseK(z, k) = argmin_p ‖p − z‖² s.t. 0 ≤ p ≤ 1, Σp = k, solved by p_j = clip(z_j − τ, 0, 1).
// S(τ) = Σ_j clip(z_j − τ, 0, 1) is continuous, non-increasing and piecewise linear with
// breakpoints at z_j (entry j reaches 0) and z_j − 1 (entry j reaches 1). Where S is flat at k
// (integer k and a gap wider than 1 between two scores) many τ solve S(τ) = k; every function
// here returns the same one, the smallest:
//
//     τ(z, k) = min{τ : S(τ) ≤ k},   and τ = −∞ when m ≤ k (then every p is 1).
//
// Scores are fp32; thresholds are fp64 because they come from sums over many entries and are
// then compared against each score (a float τ would move Σp by up to m·ulp(τ)). The functions
// evaluate every sum in fp64, so Σp = k holds to ~1e-12 relative while the scores' spread is
// moderate; with spreads near 1e30 the fractional entry's z_j − τ is below fp64 resolution and
// only integer k is met exactly (the tests pin both behaviours).
#pragma once

#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace longread::kernels {

// τ when m ≤ k: every entry is selected with p = 1.
inline constexpr double kSparseKAllSelected = -std::numeric_limits<double>::infinity();

// Errors (all functions): a NaN or ±Inf score, or k that is not a finite number > 0, gives
// InvalidArgumentError naming the offending index or value.

// Exact τ by sorting: O(m log m), allocates a copy of z.
absl::StatusOr<double> SparseKThresholdSort(std::span<const float> z, double k);

// Exact τ by randomized selection over the breakpoints: expected O(m), allocates O(m). The
// pivots come from a fixed-seed generator, so the result is deterministic.
absl::StatusOr<double> SparseKThresholdSelect(std::span<const float> z, double k);

// The float64 reference: the sort algorithm on fp64 scores (for tests and tools).
absl::StatusOr<double> SparseKThresholdReference(std::span<const double> z, double k);

// Causal use: tau[i] = τ(z[0..i], k) for every prefix, in O(m log m) total. τ never decreases
// as entries join, so entries only move full → fractional → zero, each once (two heaps).
// tau.size() must equal z.size().
absl::Status SparseKPrefixThresholds(std::span<const float> z, double k, std::span<double> tau);

// p_j = clip(z_j − τ, 0, 1), evaluated in fp64. p.size() must equal z.size().
void SparseKProbabilities(std::span<const float> z, double tau, std::span<float> p);
std::vector<float> SparseKProbabilities(std::span<const float> z, double tau);

// Convenience: SparseKProbabilities(z, SparseKThresholdSelect(z, k)).
absl::StatusOr<std::vector<float>> SparseK(std::span<const float> z, double k);

// ---- Exact hard top-k selection over a segment, as intervals ------------------------------------
//
// Candidates arrive over "query time": candidate c has score[c] and joins at join_time[c]
// (any order; memory candidates join at 0, a segment key when it leaves the window). At time t
// the selected set is the top-k among candidates with join_time <= t, ranked by score, ties
// broken by LOWER INDEX FIRST (the caller numbers older candidates lower, so older wins). Since
// candidates only join, c is selected exactly for query times [join_time[c], exit_time[c]),
// possibly empty (exit == join: c arrived already beaten by k better candidates).

inline constexpr int32_t kNeverExits = std::numeric_limits<int32_t>::max();

// exit_time[c] = first time c is out of the top-k for good, kNeverExits if it stays in. k = 0
// selects nothing (exit == join); k >= n keeps everything. One pass in join order keeping the
// selected set in a heap (worst on top): a join that makes it k + 1 strong evicts the worst at
// that time. O(n log k), plus a stable sort when join_time is not already non-decreasing. Errors:
// size mismatch, k < 0, NaN score, join_time == kNeverExits.
absl::Status TopKExitTimes(std::span<const float> score, std::span<const int32_t> join_time,
                           int32_t k, std::span<int32_t> exit_time);

// Brute force for tests: the indices (ascending) selected at query time t.
std::vector<int32_t> TopKSelectedAt(std::span<const float> score,
                                    std::span<const int32_t> join_time, int32_t k, int32_t t);

// The memory update after a segment: indices (ascending) of the top-k of all candidates, ties
// to the lower index. Equal to {c : exit_time[c] == kNeverExits}. Error on NaN or k < 0.
absl::StatusOr<std::vector<int32_t>> TopKSurvivors(std::span<const float> score, int32_t k);

// ---- Block candidates ------------------------------------------------------------------------
//
// Block selection keeps whole runs of B tokens (DESIGN.md §4: keeping part of a 5-token number
// breaks copying). A block is one candidate for the functions above; these build its score and
// join time from its tokens. The last block may be shorter than B.

enum class BlockAggregate { kMean, kMax, kLogSumExp };

// ceil(n / B) block scores. Errors: B <= 0, NaN/Inf token score.
absl::StatusOr<std::vector<float>> BlockScores(std::span<const float> token_scores,
                                               int32_t block_size, BlockAggregate aggregate);

// A block becomes a candidate once all of its tokens have (max of their join times).
absl::StatusOr<std::vector<int32_t>> BlockJoinTimes(std::span<const int32_t> token_join_time,
                                                    int32_t block_size);

}  // namespace longread::kernels
