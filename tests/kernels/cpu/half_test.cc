#include "kernels/half.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "tests/kernels/cpu/test_weights.h"

namespace longread::kernels {
namespace {

using testing::BFloat16BitsToDouble;
using testing::HalfBitsToDouble;

// Nearest binary16 to `v` (ties to even) by exhaustive comparison against all finite halves of
// the same sign: slow but obviously right.
uint16_t NearestHalf(double v) {
  const uint16_t sign = std::signbit(v) ? 0x8000 : 0;
  const double a = std::fabs(v);
  if (a >= 65520.0) return sign | 0x7c00;
  uint16_t best = 0;
  double best_err = INFINITY;
  for (uint32_t bits = 0; bits < 0x7c00; ++bits) {
    const double err = std::fabs(HalfBitsToDouble(static_cast<uint16_t>(bits)) - a);
    if (err < best_err || (err == best_err && (bits & 1) == 0)) {
      best_err = err;
      best = static_cast<uint16_t>(bits);
    }
  }
  return sign | best;
}

TEST(HalfTest, EveryHalfDecodesExactly) {
  for (uint32_t bits = 0; bits <= 0xffff; ++bits) {
    const auto h = static_cast<uint16_t>(bits);
    const double expected = HalfBitsToDouble(h);
    const float got = HalfToFloat(h);
    if (std::isnan(expected)) {
      EXPECT_TRUE(std::isnan(got)) << bits;
      continue;
    }
    EXPECT_EQ(static_cast<double>(got), expected) << bits;
    EXPECT_EQ(std::signbit(got), (bits & 0x8000) != 0) << bits;
  }
}

TEST(HalfTest, EveryHalfRoundTrips) {
  for (uint32_t bits = 0; bits <= 0xffff; ++bits) {
    const auto h = static_cast<uint16_t>(bits);
    const uint16_t back = FloatToHalf(HalfToFloat(h));
    if (std::isnan(HalfBitsToDouble(h))) {
      EXPECT_TRUE(std::isnan(HalfBitsToDouble(back))) << bits;
      EXPECT_EQ(back & 0x8000, h & 0x8000);
    } else {
      EXPECT_EQ(back, h) << bits;
    }
  }
}

TEST(HalfTest, RoundsToNearestEven) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> log_mag(-27, 17);
  for (int i = 0; i < 300; ++i) {
    const float v = static_cast<float>((i % 2 ? -1 : 1) * std::exp2(log_mag(rng)));
    EXPECT_EQ(FloatToHalf(v), NearestHalf(v)) << v;
  }
  // Ties: halfway between 1 and 1+2^-10 goes to 1; halfway between the two smallest subnormals
  // goes to the even one.
  EXPECT_EQ(FloatToHalf(1.0f + 0x1p-11f), 0x3c00);
  EXPECT_EQ(FloatToHalf(1.0f + 3 * 0x1p-11f), 0x3c02);
  EXPECT_EQ(FloatToHalf(0x1p-25f), 0x0000);
  EXPECT_EQ(FloatToHalf(3 * 0x1p-25f), 0x0002);
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65519.0f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7c00);
  EXPECT_EQ(FloatToHalf(-std::numeric_limits<float>::infinity()), 0xfc00);
  EXPECT_TRUE(std::isnan(HalfToFloat(FloatToHalf(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_EQ(FloatToHalf(1e-10f), 0x0000);
  EXPECT_EQ(FloatToHalf(-0.0f), 0x8000);
}

TEST(BFloat16Test, DecodesAndRounds) {
  for (uint32_t bits = 0; bits <= 0xffff; ++bits) {
    const auto b = static_cast<uint16_t>(bits);
    const double expected = BFloat16BitsToDouble(b);
    if (std::isnan(expected)) {
      EXPECT_TRUE(std::isnan(BFloat16ToFloat(b)));
      EXPECT_TRUE(std::isnan(BFloat16ToFloat(FloatToBFloat16(BFloat16ToFloat(b)))));
    } else {
      EXPECT_EQ(static_cast<double>(BFloat16ToFloat(b)), expected) << bits;
      EXPECT_EQ(FloatToBFloat16(BFloat16ToFloat(b)), b) << bits;
    }
  }
  EXPECT_EQ(FloatToBFloat16(1.0f + 0x1p-8f), 0x3f80);      // tie to even (down)
  EXPECT_EQ(FloatToBFloat16(1.0f + 3 * 0x1p-8f), 0x3f82);  // tie to even (up)
  EXPECT_EQ(FloatToBFloat16(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);
  EXPECT_EQ(FloatToBFloat16(std::numeric_limits<float>::max()), 0x7f80);  // rounds to inf
}

}  // namespace
}  // namespace longread::kernels
