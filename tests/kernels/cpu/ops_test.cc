// RmsNorm, Rope, SiluMul, Add: fast and reference against float64 math written here.
#include "kernels/ops.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_internal.h"
#include "kernels/reference.h"
#include "tests/kernels/cpu/test_weights.h"

namespace longread::kernels {
namespace {

using testing::RandomFloats;

TEST(RmsNormTest, MatchesFloat64) {
  for (int64_t n_tokens : {1, 3, 17}) {
    for (int64_t dim : {1, 7, 576}) {
      const auto x = RandomFloats(n_tokens * dim, 1, -3, 3);
      const auto weight = RandomFloats(dim, 2, 0.5, 1.5);
      std::vector<float> fast(x.size()), reference(x.size()), in_place = x;
      RmsNorm(x.data(), weight.data(), n_tokens, dim, 1e-5f, fast.data());
      ref::RmsNorm(x.data(), weight.data(), n_tokens, dim, 1e-5f, reference.data());
      RmsNorm(in_place.data(), weight.data(), n_tokens, dim, 1e-5f, in_place.data());
      for (int64_t t = 0; t < n_tokens; ++t) {
        double ss = 0;
        for (int64_t i = 0; i < dim; ++i) ss += double{x[t * dim + i]} * x[t * dim + i];
        const double inv = 1 / std::sqrt(ss / dim + 1e-5);
        for (int64_t i = 0; i < dim; ++i) {
          const double want = x[t * dim + i] * inv * weight[i];
          const size_t k = t * dim + i;
          ASSERT_NEAR(reference[k], want, 1e-7 * std::fabs(want) + 1e-30);
          ASSERT_NEAR(fast[k], want, 4e-7 * std::fabs(want) + 1e-30);  // two float roundings
          ASSERT_EQ(in_place[k], fast[k]);
        }
      }
    }
  }
}

TEST(RopeTest, BothStylesMatchFloat64) {
  const int64_t n_tokens = 5, n_heads = 3, head_dim = 64;
  const int64_t positions[n_tokens] = {0, 1, 17, 4095, 100000};
  const float theta = 100000.0f;
  for (RopeStyle style : {RopeStyle::kInterleaved, RopeStyle::kHalf}) {
    const auto x = RandomFloats(n_tokens * n_heads * head_dim, 3);
    std::vector<float> fast = x, reference = x;
    Rope(fast.data(), n_tokens, n_heads, head_dim, positions, theta, style);
    ref::Rope(reference.data(), n_tokens, n_heads, head_dim, positions, theta, style);
    for (int64_t t = 0; t < n_tokens; ++t) {
      for (int64_t h = 0; h < n_heads; ++h) {
        const int64_t base = (t * n_heads + h) * head_dim;
        for (int64_t i = 0; i < head_dim / 2; ++i) {
          const double angle = positions[t] * std::pow(double{theta}, -2.0 * i / head_dim);
          const int64_t a = base + (style == RopeStyle::kInterleaved ? 2 * i : i);
          const int64_t b = base + (style == RopeStyle::kInterleaved ? 2 * i + 1 : i + 32);
          const double want_a = x[a] * std::cos(angle) - x[b] * std::sin(angle);
          const double want_b = x[a] * std::sin(angle) + x[b] * std::cos(angle);
          ASSERT_NEAR(reference[a], want_a, 1e-7);
          ASSERT_NEAR(reference[b], want_b, 1e-7);
          ASSERT_NEAR(fast[a], want_a, 3e-7);
          ASSERT_NEAR(fast[b], want_b, 3e-7);
        }
      }
    }
  }
}

// Rope caches its cos/sin table between calls: changed positions, lengths or theta must not
// reuse a stale one.
TEST(RopeTest, TableFollowsPositionsLengthAndTheta) {
  const int64_t n_heads = 2, head_dim = 16;
  const int64_t calls[][3] = {{5, 6, 7}, {5, 6, 8}, {5, 6, 8}, {9, 9, 9}};
  const float thetas[] = {10000.0f, 10000.0f, 500000.0f, 10000.0f};
  for (int64_t n_tokens : {int64_t{3}, int64_t{2}}) {
    for (int c = 0; c < 4; ++c) {
      const auto x = RandomFloats(n_tokens * n_heads * head_dim, 8 + c);
      std::vector<float> fast = x, reference = x;
      Rope(fast.data(), n_tokens, n_heads, head_dim, calls[c], thetas[c], RopeStyle::kHalf);
      ref::Rope(reference.data(), n_tokens, n_heads, head_dim, calls[c], thetas[c],
                RopeStyle::kHalf);
      for (size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(fast[i], reference[i], 3e-7) << c;
    }
  }
}

TEST(SiluMulTest, MatchesFloat64OnBothPaths) {
  for (bool portable : {false, true}) {
    cpu::ForcePortable(portable);
    for (int64_t n : {1, 7, 8, 100, 1537}) {
      auto gate = RandomFloats(n, 4, -20, 20);
      if (n > 10) {
        gate[0] = -100.0f;  // exp(-g) overflows float: silu must go to -0, not NaN
        gate[1] = 100.0f;
        gate[2] = 0.0f;
      }
      const auto up = RandomFloats(n, 5, -2, 2);
      std::vector<float> fast(n), reference(n), in_place = gate;
      SiluMul(gate.data(), up.data(), n, fast.data());
      ref::SiluMul(gate.data(), up.data(), n, reference.data());
      SiluMul(in_place.data(), up.data(), n, in_place.data());
      for (int64_t i = 0; i < n; ++i) {
        const double g = gate[i];
        const double want = g / (1 + std::exp(-g)) * up[i];
        ASSERT_NEAR(reference[i], want, 1e-7 * std::fabs(want) + 1e-30);
        ASSERT_NEAR(fast[i], want, 1e-6 * std::fabs(want) + 1e-30) << "g=" << g;
        ASSERT_EQ(in_place[i], fast[i]);
      }
    }
  }
  cpu::ForcePortable(false);
}

TEST(AddTest, Elementwise) {
  const auto a = RandomFloats(101, 6), b = RandomFloats(101, 7);
  std::vector<float> out(101), reference(101);
  Add(a.data(), b.data(), 101, out.data());
  ref::Add(a.data(), b.data(), 101, reference.data());
  for (int i = 0; i < 101; ++i) {
    EXPECT_EQ(out[i], a[i] + b[i]);
    EXPECT_EQ(reference[i], out[i]);
  }
}

}  // namespace
}  // namespace longread::kernels
