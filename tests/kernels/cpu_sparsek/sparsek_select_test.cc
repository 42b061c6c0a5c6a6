// Exact top-k as intervals: TopKExitTimes against the brute force at every query time; block
// scores and join times.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "kernels/sparsek.h"

namespace longread::kernels {
namespace {

// The interval [join, exit) must reproduce the brute-force selected set at every query time.
void CheckAgainstBruteForce(const std::vector<float>& score, const std::vector<int32_t>& join,
                            int32_t k) {
  const size_t n = score.size();
  std::vector<int32_t> exit(n, -7);
  ASSERT_TRUE(TopKExitTimes(score, join, k, exit).ok());
  int32_t horizon = 0;
  for (size_t c = 0; c < n; ++c) {
    EXPECT_GE(exit[c], join[c]) << "c=" << c;
    horizon = std::max(horizon, join[c] + 1);
    if (exit[c] != kNeverExits) horizon = std::max(horizon, exit[c] + 1);
  }
  for (int32_t t = -1; t <= horizon; ++t) {
    std::vector<int32_t> by_interval;
    for (size_t c = 0; c < n; ++c) {
      if (join[c] <= t && t < exit[c]) by_interval.push_back(static_cast<int32_t>(c));
    }
    ASSERT_EQ(by_interval, TopKSelectedAt(score, join, k, t)) << "t=" << t << " k=" << k;
  }
  // Survivors after the segment: the candidates that never leave.
  std::vector<int32_t> never_exit;
  for (size_t c = 0; c < n; ++c) {
    if (exit[c] == kNeverExits) never_exit.push_back(static_cast<int32_t>(c));
  }
  absl::StatusOr<std::vector<int32_t>> survivors = TopKSurvivors(score, k);
  ASSERT_TRUE(survivors.ok());
  EXPECT_EQ(*survivors, never_exit);
}

TEST(TopKExitTimesTest, RandomInputsMatchBruteForce) {
  for (uint64_t seed = 0; seed < 200; ++seed) {
    std::mt19937_64 rng(seed);
    const int32_t n = static_cast<int32_t>(rng() % 60);
    const int32_t max_time = 1 + static_cast<int32_t>(rng() % 40);  // Small: many simultaneous.
    const int score_levels = seed % 3 == 0 ? 4 : 1000;              // Few levels: many ties.
    std::vector<float> score(n);
    std::vector<int32_t> join(n);
    for (int32_t c = 0; c < n; ++c) {
      score[c] = static_cast<float>(rng() % score_levels) - 2.0f;
      // A third join at 0 like memory keys; the rest in arbitrary order like window exits.
      join[c] = rng() % 3 == 0 ? 0 : static_cast<int32_t>(rng() % max_time);
    }
    for (int32_t k : {0, 1, 2, 5, n / 2, n - 1, n, n + 3}) {
      if (k < 0) continue;
      SCOPED_TRACE(testing::Message() << "seed=" << seed << " n=" << n << " k=" << k);
      CheckAgainstBruteForce(score, join, k);
    }
  }
}

TEST(TopKExitTimesTest, TiesGoToTheOlderCandidate) {
  // All equal scores, joining one per step: with k = 2 the two oldest stay, each later one is
  // beaten on arrival (empty interval).
  const std::vector<float> score(5, 1.0f);
  const std::vector<int32_t> join = {0, 1, 2, 3, 4};
  std::vector<int32_t> exit(5);
  ASSERT_TRUE(TopKExitTimes(score, join, 2, exit).ok());
  EXPECT_EQ(exit, (std::vector<int32_t>{kNeverExits, kNeverExits, 2, 3, 4}));
  // Index order decides, not join order: candidate 0 joins last and still displaces 2.
  const std::vector<int32_t> late_join = {9, 1, 2};
  std::vector<int32_t> exit3(3);
  ASSERT_TRUE(TopKExitTimes(std::vector<float>(3, 0.0f), late_join, 2, exit3).ok());
  EXPECT_EQ(exit3, (std::vector<int32_t>{kNeverExits, kNeverExits, 9}));
}

TEST(TopKExitTimesTest, KnownSegment) {
  // Memory keys 0, 1 (join 0); segment keys 2..4 join as they leave the window.
  const std::vector<float> score = {5, 1, 3, 0, 9};
  const std::vector<int32_t> join = {0, 0, 10, 11, 12};
  std::vector<int32_t> exit(5);
  ASSERT_TRUE(TopKExitTimes(score, join, 2, exit).ok());
  // t=10: {5, 3} beat 1; t=11: 0 is beaten on arrival; t=12: 9 pushes out 3.
  EXPECT_EQ(exit, (std::vector<int32_t>{kNeverExits, 10, 12, 11, kNeverExits}));
  EXPECT_EQ(TopKSelectedAt(score, join, 2, 11), (std::vector<int32_t>{0, 2}));
}

TEST(TopKExitTimesTest, EdgeCases) {
  std::vector<int32_t> none;
  EXPECT_TRUE(TopKExitTimes({}, {}, 3, none).ok());
  const std::vector<float> score = {1, 2, 3};
  const std::vector<int32_t> join = {4, 5, 6};
  std::vector<int32_t> exit(3);
  ASSERT_TRUE(TopKExitTimes(score, join, 0, exit).ok());
  EXPECT_EQ(exit, join);  // k = 0: nothing is ever selected.
  ASSERT_TRUE(TopKExitTimes(score, join, 3, exit).ok());
  EXPECT_EQ(exit, std::vector<int32_t>(3, kNeverExits));
  // Infinite scores are legal ranks (only NaN has no place in the order).
  const float inf = std::numeric_limits<float>::infinity();
  ASSERT_TRUE(TopKExitTimes(std::vector<float>{-inf, inf, 0}, join, 1, exit).ok());
  EXPECT_EQ(exit, (std::vector<int32_t>{5, kNeverExits, 6}));
}

TEST(TopKExitTimesTest, RejectsBadInput) {
  const std::vector<float> score = {1, std::nanf(""), 3};
  const std::vector<int32_t> join = {0, 0, 0};
  std::vector<int32_t> exit(3);
  EXPECT_EQ(TopKExitTimes(score, join, 1, exit).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TopKSurvivors(score, 1).status().code(), absl::StatusCode::kInvalidArgument);
  const std::vector<float> ok = {1, 2, 3};
  EXPECT_EQ(TopKExitTimes(ok, join, -1, exit).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TopKSurvivors(ok, -1).status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<int32_t> short_exit(2);
  EXPECT_EQ(TopKExitTimes(ok, join, 1, short_exit).code(), absl::StatusCode::kInvalidArgument);
  const std::vector<int32_t> reserved = {0, kNeverExits, 0};
  EXPECT_EQ(TopKExitTimes(ok, reserved, 1, exit).code(), absl::StatusCode::kInvalidArgument);
}

TEST(TopKExitTimesTest, LargeInputMatchesSurvivors) {
  std::mt19937_64 rng(42);
  const int32_t n = 200000;
  std::vector<float> score(n);
  std::vector<int32_t> join(n);
  std::normal_distribution<float> normal;
  for (int32_t c = 0; c < n; ++c) {
    score[c] = normal(rng);
    join[c] = c < 4096 ? 0 : c;
  }
  std::vector<int32_t> exit(n);
  ASSERT_TRUE(TopKExitTimes(score, join, 2048, exit).ok());
  std::vector<int32_t> never_exit;
  for (int32_t c = 0; c < n; ++c) {
    if (exit[c] == kNeverExits) never_exit.push_back(c);
  }
  EXPECT_EQ(never_exit, *TopKSurvivors(score, 2048));
  // Spot checks against the brute force at a few query times.
  for (int32_t t : {0, 5000, 77777, n - 1}) {
    std::vector<int32_t> by_interval;
    for (int32_t c = 0; c < n; ++c) {
      if (join[c] <= t && t < exit[c]) by_interval.push_back(c);
    }
    EXPECT_EQ(by_interval, TopKSelectedAt(score, join, 2048, t)) << "t=" << t;
  }
}

TEST(BlockScoresTest, AggregatesMatchDefinitions) {
  const std::vector<float> tok = {1, 2, 3, 4, 5, -1, 0};
  const std::vector<float> mean = *BlockScores(tok, 3, BlockAggregate::kMean);
  EXPECT_EQ(mean, (std::vector<float>{2, 8.0f / 3, 0}));
  const std::vector<float> max = *BlockScores(tok, 3, BlockAggregate::kMax);
  EXPECT_EQ(max, (std::vector<float>{3, 5, 0}));
  const std::vector<float> lse = *BlockScores(tok, 3, BlockAggregate::kLogSumExp);
  ASSERT_EQ(lse.size(), 3u);
  EXPECT_NEAR(lse[0], std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0)), 1e-5);
  EXPECT_NEAR(lse[2], 0.0, 1e-6);  // A block of one token is that token.
  // Shifted by the max: no overflow where exp(x) alone would overflow.
  const std::vector<float> big = {1000, 1000};
  EXPECT_NEAR((*BlockScores(big, 2, BlockAggregate::kLogSumExp))[0], 1000 + std::log(2.0), 1e-3);
  EXPECT_TRUE(BlockScores({}, 4, BlockAggregate::kMax)->empty());
}

TEST(BlockScoresTest, RejectsBadInput) {
  const std::vector<float> tok = {1, 2};
  EXPECT_EQ(BlockScores(tok, 0, BlockAggregate::kMean).status().code(),
            absl::StatusCode::kInvalidArgument);
  const std::vector<float> bad = {1, std::numeric_limits<float>::infinity()};
  EXPECT_EQ(BlockScores(bad, 2, BlockAggregate::kMax).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BlockJoinTimes(std::vector<int32_t>{1}, -2).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(BlockScoresTest, BlocksAreCandidatesForTheSameSelection) {
  // Tokens leave a window of 4 one per step; a block of 3 joins when its last token has left.
  std::mt19937_64 rng(3);
  std::normal_distribution<float> normal;
  std::vector<float> tok(50);
  std::vector<int32_t> tok_join(50);
  for (int32_t j = 0; j < 50; ++j) {
    tok[j] = normal(rng);
    tok_join[j] = j + 4;
  }
  const std::vector<int32_t> block_join = *BlockJoinTimes(tok_join, 3);
  ASSERT_EQ(block_join.size(), 17u);
  EXPECT_EQ(block_join[0], 6);
  EXPECT_EQ(block_join[16], 53);  // The short last block (tokens 48, 49).
  for (BlockAggregate agg :
       {BlockAggregate::kMean, BlockAggregate::kMax, BlockAggregate::kLogSumExp}) {
    CheckAgainstBruteForce(*BlockScores(tok, 3, agg), block_join, 4);
  }
}

}  // namespace
}  // namespace longread::kernels
