// Exact hard top-k over a segment as per-candidate intervals, and block candidates; see
// kernels/sparsek.h.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "kernels/sparsek.h"

namespace longread::kernels {
namespace {

// Higher score first, then lower index (older wins): a strict total order on candidates.
struct BetterCandidate {
  std::span<const float> score;
  bool operator()(int32_t a, int32_t b) const {
    return score[a] > score[b] || (score[a] == score[b] && a < b);
  }
};

absl::Status ValidateSelection(std::span<const float> score, int32_t k) {
  if (score.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max() - 1)) {
    return absl::InvalidArgumentError(absl::StrCat("top-k: ", score.size(), " candidates"));
  }
  if (k < 0) return absl::InvalidArgumentError(absl::StrCat("top-k: k must be >= 0, got ", k));
  for (size_t c = 0; c < score.size(); ++c) {
    if (std::isnan(score[c])) {
      return absl::InvalidArgumentError(absl::StrCat("top-k: score[", c, "] is NaN"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status TopKExitTimes(std::span<const float> score, std::span<const int32_t> join_time,
                           int32_t k, std::span<int32_t> exit_time) {
  const size_t n = score.size();
  if (join_time.size() != n || exit_time.size() != n) {
    return absl::InvalidArgumentError(absl::StrCat("TopKExitTimes: ", n, " scores, ",
                                                   join_time.size(), " join times, ",
                                                   exit_time.size(), " exit times"));
  }
  if (absl::Status s = ValidateSelection(score, k); !s.ok()) return s;
  for (size_t c = 0; c < n; ++c) {
    if (join_time[c] == kNeverExits) {
      return absl::InvalidArgumentError(
          absl::StrCat("TopKExitTimes: join_time[", c, "] is INT32_MAX (reserved)"));
    }
  }
  // Join order; segment keys usually arrive sorted already, so skip the sort when they do.
  std::vector<int32_t> by_join(n);
  std::iota(by_join.begin(), by_join.end(), 0);
  if (!std::is_sorted(join_time.begin(), join_time.end())) {
    std::stable_sort(by_join.begin(), by_join.end(),
                     [&](int32_t a, int32_t b) { return join_time[a] < join_time[b]; });
  }
  // The selected set as a heap with its worst member on top: O(log k) per join, and k entries
  // stay in cache, unlike an order-statistics tree over all n ranks.
  const BetterCandidate better{score};
  std::vector<int32_t> selected;
  selected.reserve(std::min<size_t>(n, static_cast<size_t>(k)) + 1);
  std::fill(exit_time.begin(), exit_time.end(), kNeverExits);
  for (size_t i = 0; i < n;) {
    // All candidates joining at t are in before anyone leaves: simultaneous joins compete.
    const int32_t t = join_time[by_join[i]];
    for (; i < n && join_time[by_join[i]] == t; ++i) {
      selected.push_back(by_join[i]);
      std::push_heap(selected.begin(), selected.end(), better);
      // A candidate pushed out never returns: everything that beats it stays joined.
      if (selected.size() > static_cast<size_t>(k)) {
        std::pop_heap(selected.begin(), selected.end(), better);
        exit_time[selected.back()] = t;
        selected.pop_back();
      }
    }
  }
  return absl::OkStatus();
}

std::vector<int32_t> TopKSelectedAt(std::span<const float> score,
                                    std::span<const int32_t> join_time, int32_t k, int32_t t) {
  std::vector<int32_t> joined;
  for (size_t c = 0; c < score.size(); ++c) {
    if (join_time[c] <= t) joined.push_back(static_cast<int32_t>(c));
  }
  std::sort(joined.begin(), joined.end(), BetterCandidate{score});
  if (k >= 0 && joined.size() > static_cast<size_t>(k)) joined.resize(k);
  std::sort(joined.begin(), joined.end());
  return joined;
}

absl::StatusOr<std::vector<int32_t>> TopKSurvivors(std::span<const float> score, int32_t k) {
  if (absl::Status s = ValidateSelection(score, k); !s.ok()) return s;
  std::vector<int32_t> order(score.size());
  std::iota(order.begin(), order.end(), 0);
  if (order.size() > static_cast<size_t>(k)) {
    std::nth_element(order.begin(), order.begin() + k, order.end(), BetterCandidate{score});
    order.resize(k);
  }
  std::sort(order.begin(), order.end());
  return order;
}

absl::StatusOr<std::vector<float>> BlockScores(std::span<const float> token_scores,
                                               int32_t block_size, BlockAggregate aggregate) {
  if (block_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("BlockScores: block_size ", block_size));
  }
  for (size_t j = 0; j < token_scores.size(); ++j) {
    if (!std::isfinite(token_scores[j])) {
      return absl::InvalidArgumentError(
          absl::StrCat("BlockScores: token score [", j, "] is not finite"));
    }
  }
  const size_t b = static_cast<size_t>(block_size);
  const size_t n_blocks = (token_scores.size() + b - 1) / b;
  std::vector<float> out(n_blocks);
  for (size_t blk = 0; blk < n_blocks; ++blk) {
    const std::span<const float> tok =
        token_scores.subspan(blk * b, std::min(b, token_scores.size() - blk * b));
    const double max = *std::max_element(tok.begin(), tok.end());
    double value = max;
    if (aggregate == BlockAggregate::kMean) {
      value = std::accumulate(tok.begin(), tok.end(), 0.0) / static_cast<double>(tok.size());
    } else if (aggregate == BlockAggregate::kLogSumExp) {
      double sum = 0;  // Shifted by the max so exp never overflows.
      for (float x : tok) sum += std::exp(static_cast<double>(x) - max);
      value = max + std::log(sum);
    }
    out[blk] = static_cast<float>(value);
  }
  return out;
}

absl::StatusOr<std::vector<int32_t>> BlockJoinTimes(std::span<const int32_t> token_join_time,
                                                    int32_t block_size) {
  if (block_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("BlockJoinTimes: block_size ", block_size));
  }
  const size_t b = static_cast<size_t>(block_size);
  std::vector<int32_t> out((token_join_time.size() + b - 1) / b);
  for (size_t blk = 0; blk < out.size(); ++blk) {
    const auto tok =
        token_join_time.subspan(blk * b, std::min(b, token_join_time.size() - blk * b));
    out[blk] = *std::max_element(tok.begin(), tok.end());
  }
  return out;
}

}  // namespace longread::kernels
