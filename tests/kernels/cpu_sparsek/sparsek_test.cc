// The SparseK threshold: sort, selection and prefix sweep against a bisection oracle.
#include "kernels/sparsek.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <span>
#include <vector>

namespace longread::kernels {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

long double SumClipped(std::span<const float> z, long double tau) {
  long double s = 0;
  for (float x : z) s += std::clamp(static_cast<long double>(x) - tau, 0.0L, 1.0L);
  return s;
}

// Oracle: inf{τ : S(τ) <= k} by bisection in long double; S(min−1) = m > k, S(max) = 0.
double BisectThreshold(std::span<const float> z, double k) {
  if (static_cast<double>(z.size()) <= k) return kSparseKAllSelected;
  long double lo = *std::min_element(z.begin(), z.end()) - 1.0L;
  long double hi = *std::max_element(z.begin(), z.end());
  for (int it = 0; it < 300 && lo < hi; ++it) {
    const long double mid = lo + (hi - lo) / 2;
    if (mid <= lo || mid >= hi) break;
    if (SumClipped(z, mid) <= k) {
      hi = mid;
    } else {
      lo = mid;
    }
  }
  return static_cast<double>(hi);
}

double Scale(std::span<const float> z) {
  double s = 1;
  for (float x : z) s = std::max(s, std::fabs(static_cast<double>(x)));
  return s;
}

struct AllThresholds {
  double sort, select, prefix_last, reference;
};

AllThresholds Solve(std::span<const float> z, double k) {
  AllThresholds t{};
  absl::StatusOr<double> s = SparseKThresholdSort(z, k);
  EXPECT_TRUE(s.ok()) << s.status();
  t.sort = *s;
  s = SparseKThresholdSelect(z, k);
  EXPECT_TRUE(s.ok()) << s.status();
  t.select = *s;
  std::vector<double> zd(z.begin(), z.end());
  s = SparseKThresholdReference(zd, k);
  EXPECT_TRUE(s.ok()) << s.status();
  t.reference = *s;
  std::vector<double> prefix(z.size());
  EXPECT_TRUE(SparseKPrefixThresholds(z, k, prefix).ok());
  t.prefix_last = prefix.back();
  return t;
}

void ExpectNear(double got, double want, double tol, const char* what) {
  if (std::isinf(want)) {
    EXPECT_EQ(got, want) << what;
  } else {
    EXPECT_NEAR(got, want, tol) << what;
  }
}

// Σp = k (or all ones when m <= k), 0 <= p <= 1, and every algorithm matches the oracle.
void CheckAll(std::span<const float> z, double k) {
  const double scale = Scale(z);
  const double oracle = BisectThreshold(z, k);
  const AllThresholds t = Solve(z, k);
  const double tol = 1e-9 * scale;
  ExpectNear(t.sort, oracle, tol, "sort");
  ExpectNear(t.select, oracle, tol, "select");
  ExpectNear(t.prefix_last, oracle, tol, "prefix");
  ExpectNear(t.reference, oracle, tol, "reference");
  for (double tau : {t.sort, t.select, t.prefix_last}) {
    const std::vector<float> p = SparseKProbabilities(z, tau);
    double sum = 0;
    for (float x : p) {
      ASSERT_GE(x, 0.0f);
      ASSERT_LE(x, 1.0f);
      sum += x;
    }
    if (static_cast<double>(z.size()) <= k) {
      EXPECT_EQ(sum, static_cast<double>(z.size()));
    } else {
      EXPECT_NEAR(sum, k, 1e-5 * k) << "m=" << z.size() << " tau=" << tau;
    }
  }
}

std::vector<float> RandomScores(std::mt19937_64& rng, size_t m, int kind) {
  std::vector<float> z(m);
  std::normal_distribution<float> normal;
  std::uniform_int_distribution<int> small_int(-3, 3);
  for (float& x : z) {
    switch (kind) {
      case 0:
        x = normal(rng);
        break;
      case 1:
        x = 10 * normal(rng);  // Gaps wider than 1: flat pieces of S.
        break;
      case 2:
        x = static_cast<float>(small_int(rng));  // Many ties, breakpoints coincide.
        break;
      case 3:
        x = 0.05f * normal(rng);  // All within one unit: every entry fractional.
        break;
      default:
        x = 1e5f + 3 * normal(rng);  // Far from 0: float ulp 1/128, fp64 sums must not drift.
    }
  }
  return z;
}

TEST(SparseKTest, RandomInputsAgreeWithBisection) {
  const size_t sizes[] = {1, 2, 3, 4, 7, 16, 50, 129, 500, 1000, 2000};
  for (uint64_t seed = 0; seed < 12; ++seed) {
    std::mt19937_64 rng(seed);
    for (size_t m : sizes) {
      for (int kind = 0; kind < 5; ++kind) {
        const std::vector<float> z = RandomScores(rng, m, kind);
        std::uniform_real_distribution<double> frac_k(0.01, static_cast<double>(m) + 2);
        std::uniform_int_distribution<int> int_k(1, static_cast<int>(m) + 1);
        SCOPED_TRACE(testing::Message() << "seed=" << seed << " m=" << m << " kind=" << kind);
        CheckAll(z, frac_k(rng));
        CheckAll(z, int_k(rng));
        CheckAll(z, 1.0);
      }
    }
  }
}

TEST(SparseKTest, PrefixMatchesIndependentSolves) {
  for (uint64_t seed = 0; seed < 20; ++seed) {
    std::mt19937_64 rng(100 + seed);
    const size_t m = 1 + rng() % 300;
    const std::vector<float> z = RandomScores(rng, m, static_cast<int>(seed % 5));
    const double k = seed % 2 ? 1 + static_cast<double>(rng() % 20) : 0.3 + (rng() % 1000) / 97.0;
    std::vector<double> prefix(m);
    ASSERT_TRUE(SparseKPrefixThresholds(z, k, prefix).ok());
    for (size_t i = 0; i < m; ++i) {
      const std::span<const float> head(z.data(), i + 1);
      const double want = *SparseKThresholdSort(head, k);
      ExpectNear(prefix[i], want, 1e-9 * Scale(head), "prefix");
      if (i > 0) {
        EXPECT_GE(prefix[i], prefix[i - 1]);  // τ never decreases as keys join.
      }
    }
  }
}

TEST(SparseKTest, KnownValues) {
  // All fractional: τ = (Σz − k) / m.
  const std::vector<float> z = {0.5f, 0.2f, 0.1f};
  EXPECT_NEAR(*SparseKThresholdSort(z, 1.0), (0.5 + 0.2 + 0.1 - 1.0) / 3, 1e-7);
  // Flat piece: any τ in [0, 4] gives Σp = 1; the smallest, 0, is returned.
  const std::vector<float> gap = {5.0f, 0.0f};
  EXPECT_EQ(*SparseKThresholdSort(gap, 1.0), 0.0);
  EXPECT_EQ(*SparseKThresholdSelect(gap, 1.0), 0.0);
  // Fractional k across a gap: the second entry carries the 0.5.
  EXPECT_DOUBLE_EQ(*SparseKThresholdSelect(gap, 1.5), -0.5);
}

TEST(SparseKTest, AllEqualScoresShareTheBudget) {
  const std::vector<float> z(10, 2.5f);
  for (double k : {1.0, 3.0, 9.99}) {
    const double tau = *SparseKThresholdSelect(z, k);
    EXPECT_NEAR(tau, 2.5 - k / 10, 1e-12);
    for (float p : SparseKProbabilities(z, tau)) EXPECT_NEAR(p, k / 10, 1e-6);
    CheckAll(z, k);
  }
}

TEST(SparseKTest, BudgetCoveringAllSelectsEverything) {
  const std::vector<float> z = {3.0f, -1.0f, 7.0f};
  for (double k : {3.0, 3.5, 100.0}) {
    EXPECT_EQ(*SparseKThresholdSort(z, k), kSparseKAllSelected);
    EXPECT_EQ(*SparseKThresholdSelect(z, k), kSparseKAllSelected);
    const absl::StatusOr<std::vector<float>> p = SparseK(z, k);
    ASSERT_TRUE(p.ok());
    for (float x : *p) EXPECT_EQ(x, 1.0f);
  }
  std::vector<double> prefix(3);
  ASSERT_TRUE(SparseKPrefixThresholds(z, 2.0, prefix).ok());
  EXPECT_EQ(prefix[0], kSparseKAllSelected);
  EXPECT_EQ(prefix[1], kSparseKAllSelected);
  EXPECT_EQ(prefix[2], -1.0);  // Smallest τ leaving {3, 7} at 1 and -1 at 0.
}

TEST(SparseKTest, HugeScoreRange) {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<float> u(-1e30f, 1e30f);
  std::vector<float> z(1000);
  for (float& x : z) x = u(rng);
  z[3] = 3.0e38f;
  z[4] = -3.0e38f;
  // Integer k: the top k entries at exactly 1, the rest at exactly 0.
  for (double k : {1.0, 17.0, 999.0}) CheckAll(z, k);
  // Fractional k: the fractional entry's z − τ is below fp64 resolution at 1e30, so Σp lands
  // on floor(k) or ceil(k); τ still agrees with the oracle relative to the scores' scale.
  const double k = 17.25;
  const AllThresholds t = Solve(z, k);
  for (double tau : {t.sort, t.select, t.prefix_last}) {
    EXPECT_NEAR(tau, BisectThreshold(z, k), 1e-9 * Scale(z));
    double sum = 0;
    for (float p : SparseKProbabilities(z, tau)) {
      ASSERT_TRUE(p >= 0 && p <= 1);
      sum += p;
    }
    EXPECT_GE(sum, 17.0);
    EXPECT_LE(sum, 18.0);
  }
}

TEST(SparseKTest, TinyScoreRange) {
  std::mt19937_64 rng(8);
  std::normal_distribution<float> normal;
  std::vector<float> z(777);
  for (float& x : z) x = 1e-30f * normal(rng);
  for (double k : {1.0, 2.5, 100.0, 776.5}) CheckAll(z, k);
  // Scores equal to within 1e-30 split the budget evenly.
  const double tau = *SparseKThresholdSelect(z, 2.5);
  EXPECT_NEAR(tau, -2.5 / 777, 1e-12);
}

TEST(SparseKTest, SelectHandlesALargeVector) {
  std::mt19937_64 rng(9);
  const std::vector<float> z = RandomScores(rng, 1 << 20, 1);
  const double by_select = *SparseKThresholdSelect(z, 4096);
  EXPECT_NEAR(by_select, *SparseKThresholdSort(z, 4096), 1e-9 * Scale(z));
  double sum = 0;
  for (float p : SparseKProbabilities(z, by_select)) sum += p;
  EXPECT_NEAR(sum, 4096, 4096 * 1e-5);
}

TEST(SparseKTest, RejectsNonFiniteScoresAndBadBudgets) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  for (float bad : {nan, inf, -inf}) {
    const std::vector<float> z = {1.0f, bad, 2.0f};
    std::vector<double> tau(3);
    EXPECT_EQ(SparseKThresholdSort(z, 1).status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(SparseKThresholdSelect(z, 1).status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(SparseKPrefixThresholds(z, 1, tau).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(SparseK(z, 1).status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(SparseKThresholdSort(z, 1).status().message().find("z[1]"), std::string::npos);
  }
  const std::vector<double> zd = {1.0, std::nan("")};
  EXPECT_EQ(SparseKThresholdReference(zd, 1).status().code(), absl::StatusCode::kInvalidArgument);
  const std::vector<float> z = {1.0f, 2.0f};
  for (double k : {0.0, -1.0, std::nan(""), kInf}) {
    EXPECT_EQ(SparseKThresholdSort(z, k).status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(SparseKThresholdSelect(z, k).status().code(), absl::StatusCode::kInvalidArgument);
  }
  std::vector<double> short_tau(1);
  EXPECT_EQ(SparseKPrefixThresholds(z, 1, short_tau).code(), absl::StatusCode::kInvalidArgument);
}

TEST(SparseKTest, EmptyInputSelectsNothing) {
  const std::vector<float> z;
  EXPECT_EQ(*SparseKThresholdSort(z, 1), kSparseKAllSelected);
  const absl::StatusOr<std::vector<float>> p = SparseK(z, 1);
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(p->empty());
}

}  // namespace
}  // namespace longread::kernels
