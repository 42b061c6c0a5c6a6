// MatMul and DequantizeRow: reference, fast path (AVX2 when the CPU has it) and forced portable
// path against float64 math over the exactly decoded weights; thread-count independence.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/cpu_internal.h"
#include "kernels/ops.h"
#include "kernels/reference.h"
#include "tests/kernels/cpu/test_weights.h"

namespace longread::kernels {
namespace {

using testing::MakeMatrix;
using testing::RandomFloats;
using testing::TestMatrix;

constexpr DType kAllTypes[] = {DType::kF32,  DType::kF16,  DType::kBF16,
                               DType::kQ8_0, DType::kQ4_0, DType::kQ4_1};

// Error allowed relative to sum_c |W[r][c] x[t][c]|: fp32 accumulation over K <= 2048 stays
// well below this (about sqrt(K) * 2^-24 in practice).
constexpr double kFastTolerance = 1e-5;
// The reference accumulates in double; only the final rounding to float (and, for Q4_1, the
// rounding of q*d+m to float) separate it from the exact value.
constexpr double kReferenceTolerance = 2e-7;

struct Expected {
  std::vector<double> y, magnitude;
};

Expected ExactProduct(const TestMatrix& w, const std::vector<float>& x, int64_t n_tokens) {
  Expected e{std::vector<double>(n_tokens * w.rows), std::vector<double>(n_tokens * w.rows)};
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int64_t r = 0; r < w.rows; ++r) {
      double sum = 0, mag = 0;
      for (int64_t c = 0; c < w.cols; ++c) {
        const double p = w.exact[r * w.cols + c] * x[t * w.cols + c];
        sum += p;
        mag += std::fabs(p);
      }
      e.y[t * w.rows + r] = sum;
      e.magnitude[t * w.rows + r] = mag;
    }
  }
  return e;
}

void ExpectClose(const std::vector<float>& got, const Expected& e, double tolerance,
                 const std::string& what) {
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_LE(std::fabs(got[i] - e.y[i]), tolerance * e.magnitude[i] + 1e-30)
        << what << " at " << i << ": got " << got[i] << " want " << e.y[i];
  }
}

class PortableGuard {
 public:
  explicit PortableGuard(bool portable) { cpu::ForcePortable(portable); }
  ~PortableGuard() { cpu::ForcePortable(false); }
};

TEST(DequantizeRowTest, AllTypesMatchExactDecoding) {
  for (DType type : kAllTypes) {
    for (int64_t cols : {32, 96, 576}) {
      const TestMatrix w = MakeMatrix(type, 3, cols, 11 + cols);
      for (bool portable : {false, true}) {
        PortableGuard guard(portable);
        for (int64_t r = 0; r < w.rows; ++r) {
          std::vector<float> fast(cols), reference(cols);
          DequantizeRow(w.view(), r, fast.data());
          ref::DequantizeRow(w.view(), r, reference.data());
          for (int64_t c = 0; c < cols; ++c) {
            const double exact = w.exact[r * cols + c];
            // One rounding to float at most (Q4_1: q*d + m); all other types are exact.
            ASSERT_LE(std::fabs(reference[c] - exact), std::fabs(exact) * 0x1p-24)
                << DTypeName(type) << " r" << r << " c" << c;
            ASSERT_EQ(fast[c], reference[c]) << DTypeName(type) << " portable=" << portable;
          }
        }
      }
    }
  }
}

TEST(DequantizeRowTest, FloatTypesWithOddWidths) {
  for (DType type : {DType::kF32, DType::kF16, DType::kBF16}) {
    const TestMatrix w = MakeMatrix(type, 2, 13, 5);
    std::vector<float> fast(13);
    DequantizeRow(w.view(), 1, fast.data());
    for (int c = 0; c < 13; ++c) EXPECT_EQ(fast[c], w.exact[13 + c]) << DTypeName(type);
  }
}

struct Shape {
  int64_t rows, cols, n_tokens;
};

std::vector<Shape> Shapes(DType type) {
  const bool quantized = BlockElements(type) > 1;
  std::vector<Shape> shapes = {{17, 64, 1},
                               {1, 32, 3},
                               {33, 96, 4},
                               {5, 576, 17},
                               {40, 576, 64},
                               {23, 160, 300},
                               {16, 32, 6},
                               {100, 1536, 5},
                               {64, 2048, 2},
                               {48, 64, 13},
                               // Crosses the prefill's cache blocks: panel groups (K = 2048:
                               // 8 panels), 252-token tiles and 256-deep tiles.
                               {200, 2048, 7},
                               {20, 1024, 259}};
  if (!quantized) {
    shapes.push_back({7, 13, 1});
    shapes.push_back({19, 37, 9});
    shapes.push_back({3, 8, 300});
  }
  return shapes;
}

TEST(MatMulTest, ReferenceMatchesFloat64) {
  for (DType type : kAllTypes) {
    for (const Shape& s : Shapes(type)) {
      const TestMatrix w = MakeMatrix(type, s.rows, s.cols, 100 + s.rows);
      const auto x = RandomFloats(s.n_tokens * s.cols, 7 + s.cols);
      std::vector<float> y(s.n_tokens * s.rows);
      ref::MatMul(w.view(), x.data(), s.n_tokens, y.data());
      ExpectClose(y, ExactProduct(w, x, s.n_tokens), kReferenceTolerance,
                  std::string(DTypeName(type)));
    }
  }
}

// fp32 paths only: quantized activations are checked by the Int8/Int16 tests below.
TEST(MatMulTest, FastAndPortableMatchFloat64AndAreThreadCountIndependent) {
  constexpr DecodeActivations fp32 = DecodeActivations::kFloat32;
  ThreadPool pool2(2), pool3(3);
  for (int mode = 0; mode < 3; ++mode) {
    // 0: AVX2 path (when the CPU has it), 1: the same with small prefill cache blocks (12 tokens x
    // 64 deep, 16K-float panel groups), 2: portable path.
    const bool portable = mode == 2;
    PortableGuard guard(portable);
    cpu::SetPrefillBlocking(mode == 1 ? cpu::PrefillBlocking{12, 64, 1 << 14}
                                      : cpu::PrefillBlocking{});
    for (DType type : kAllTypes) {
      for (const Shape& s : Shapes(type)) {
        const TestMatrix w = MakeMatrix(type, s.rows, s.cols, 200 + s.cols);
        const auto x = RandomFloats(s.n_tokens * s.cols, 3 + s.rows);
        const Expected e = ExactProduct(w, x, s.n_tokens);
        std::vector<float> y1(s.n_tokens * s.rows, NAN), y2(y1.size(), NAN), y3(y1.size(), NAN);
        MatMul(w.view(), x.data(), s.n_tokens, y1.data(), nullptr, fp32);
        MatMul(w.view(), x.data(), s.n_tokens, y2.data(), &pool2, fp32);
        MatMul(w.view(), x.data(), s.n_tokens, y3.data(), &pool3, fp32);
        const std::string what =
            std::string(DTypeName(type)) + " portable=" + std::to_string(portable) +
            " rows=" + std::to_string(s.rows) + " cols=" + std::to_string(s.cols) +
            " tokens=" + std::to_string(s.n_tokens);
        ExpectClose(y1, e, kFastTolerance, what);
        ASSERT_EQ(0, std::memcmp(y1.data(), y2.data(), y1.size() * sizeof(float))) << what;
        ASSERT_EQ(0, std::memcmp(y1.data(), y3.data(), y1.size() * sizeof(float))) << what;
      }
    }
  }
  cpu::SetPrefillBlocking(cpu::PrefillBlocking{});
}

// Cache blocking splits each dot product into depth tiles but keeps one FMA chain per output, so
// it must not change a single bit.
TEST(MatMulTest, PrefillBlockingIsBitIdentical) {
  const TestMatrix w = MakeMatrix(DType::kQ4_1, 70, 1024, 4);
  const auto x = RandomFloats(37 * 1024, 2);
  std::vector<float> plain(37 * 70), blocked(37 * 70);
  cpu::SetPrefillBlocking(cpu::PrefillBlocking{});
  MatMul(w.view(), x.data(), 37, plain.data(), nullptr);
  cpu::SetPrefillBlocking(cpu::PrefillBlocking{18, 96, 1 << 15});
  MatMul(w.view(), x.data(), 37, blocked.data(), nullptr);
  cpu::SetPrefillBlocking(cpu::PrefillBlocking{});
  EXPECT_EQ(0, std::memcmp(plain.data(), blocked.data(), plain.size() * sizeof(float)));
}

TEST(MatMulTest, DoesNotWriteOutsideOutput) {
  const TestMatrix w = MakeMatrix(DType::kQ4_1, 21, 64, 9);
  const auto x = RandomFloats(7 * 64, 1);
  std::vector<float> y(7 * 21 + 16, -123.0f);
  MatMul(w.view(), x.data(), 7, y.data(), nullptr);
  for (size_t i = 7 * 21; i < y.size(); ++i) EXPECT_EQ(y[i], -123.0f);
}

// Quantizing activations to 8 (16) bits moves element c of x by at most half a step, d_b / 2
// with d_b = max|x| / levels over its block b (levels 127 or 32767), so
// |y - exact| <= sum_c |W[r][c]| d_b / 2 (the stated tolerance), plus fp32 accumulation
// (kFastTolerance of sum |W x|).
double QuantBound(const TestMatrix& w, const std::vector<float>& x, int64_t t, int64_t r,
                  double levels) {
  double bound = 0;
  for (int64_t b = 0; b < w.cols / 32; ++b) {
    double amax = 0, wsum = 0;
    for (int i = 0; i < 32; ++i) {
      amax = std::max(amax, std::fabs(double{x[t * w.cols + 32 * b + i]}));
      wsum += std::fabs(w.exact[r * w.cols + 32 * b + i]);
    }
    bound += wsum * amax / levels / 2.0;
  }
  return bound;
}

TEST(MatMulTest, Int8AndInt16ActivationsWithinQuantizationBoundAndPathsAgree) {
  for (const bool int8 : {true, false}) {
    const DecodeActivations mode = int8 ? DecodeActivations::kInt8 : DecodeActivations::kInt16;
    const double levels = int8 ? 127.0 : 32767.0;
    ThreadPool pool2(2), pool3(3);
    struct DecodeShape {
      int64_t rows, cols, n_tokens;
    };
    const DecodeShape shapes[] = {{17, 64, 1}, {1, 32, 3},     {33, 96, 3},
                                  {5, 576, 1}, {100, 1536, 2}, {64, 2048, 1}};
    for (DType type : {DType::kQ8_0, DType::kQ4_0, DType::kQ4_1}) {
      for (const DecodeShape& s : shapes) {
        const TestMatrix w = MakeMatrix(type, s.rows, s.cols, 300 + s.cols);
        auto x = RandomFloats(s.n_tokens * s.cols, 5 + s.rows);
        for (int i = 0; i < 32 && i < s.cols; ++i) x[i] = 0.0f;  // an all-zero block
        const Expected e = ExactProduct(w, x, s.n_tokens);
        std::vector<float> fast(s.n_tokens * s.rows, NAN), portable(fast.size(), NAN);
        std::vector<float> fast2(fast.size(), NAN), fast3(fast.size(), NAN);
        MatMul(w.view(), x.data(), s.n_tokens, fast.data(), nullptr, mode);
        MatMul(w.view(), x.data(), s.n_tokens, fast2.data(), &pool2, mode);
        MatMul(w.view(), x.data(), s.n_tokens, fast3.data(), &pool3, mode);
        {
          PortableGuard guard(true);
          MatMul(w.view(), x.data(), s.n_tokens, portable.data(), &pool2, mode);
        }
        const std::string what = std::string(DTypeName(type)) + " rows=" + std::to_string(s.rows) +
                                 " cols=" + std::to_string(s.cols) + (int8 ? " int8" : " int16");
        for (int64_t t = 0; t < s.n_tokens; ++t) {
          for (int64_t r = 0; r < s.rows; ++r) {
            const size_t i = t * s.rows + r;
            const double bound = QuantBound(w, x, t, r, levels) + kFastTolerance * e.magnitude[i];
            ASSERT_LE(std::fabs(fast[i] - e.y[i]), bound) << what << " at " << i;
            ASSERT_LE(std::fabs(portable[i] - e.y[i]), bound) << what << " at " << i;
            // Same integers, same scales: only the order of fp32 additions differs.
            ASSERT_LE(std::fabs(fast[i] - portable[i]), kFastTolerance * e.magnitude[i] + 1e-30)
                << what << " at " << i;
          }
        }
        ASSERT_EQ(0, std::memcmp(fast.data(), fast2.data(), fast.size() * sizeof(float))) << what;
        ASSERT_EQ(0, std::memcmp(fast.data(), fast3.data(), fast.size() * sizeof(float))) << what;
      }
    }
  }
}

// The AVX2 quantizers round like the portable ones (nearest even, same scale), bit for bit.
TEST(MatMulTest, ActivationQuantizationIsIdenticalOnBothPaths) {
  if (!cpu::CpuHasAvx2Fma()) GTEST_SKIP() << "no AVX2";
  auto x = RandomFloats(8 * 32, 11);
  for (int i = 0; i < 32; ++i) x[32 + i] = 0.0f;                     // all zero
  for (int i = 0; i < 32; ++i) x[64 + i] = (i - 16) * 0.5f;          // ties after scaling
  for (int i = 0; i < 32; ++i) x[96 + i] = i == 5 ? -3.0f : 1e-30f;  // one large element
  std::vector<int8_t> q1(x.size()), q2(x.size());
  std::vector<float> d1(8), d2(8), s1(8), s2(8);
  cpu::QuantizeRowQ8Portable(x.data(), x.size(), q1.data(), d1.data(), s1.data());
  cpu::QuantizeRowQ8Avx2(x.data(), x.size(), q2.data(), d2.data(), s2.data());
  EXPECT_EQ(q1, q2);
  EXPECT_EQ(0, std::memcmp(d1.data(), d2.data(), d1.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(s1.data(), s2.data(), s1.size() * sizeof(float)));
  for (int i = 0; i < 32; ++i) EXPECT_EQ(q1[32 + i], 0);
  EXPECT_EQ(q1[96 + 5], -127);
  std::vector<int16_t> w1(x.size()), w2(x.size());
  cpu::QuantizeRowQ16Portable(x.data(), x.size(), w1.data(), d1.data(), s1.data());
  cpu::QuantizeRowQ16Avx2(x.data(), x.size(), w2.data(), d2.data(), s2.data());
  EXPECT_EQ(w1, w2);
  EXPECT_EQ(0, std::memcmp(d1.data(), d2.data(), d1.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(s1.data(), s2.data(), s1.size() * sizeof(float)));
  EXPECT_EQ(w1[96 + 5], -32767);
}

}  // namespace
}  // namespace longread::kernels
