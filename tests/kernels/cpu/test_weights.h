// Random weight matrices in every DType, together with the exact value of every element as the
// test itself decodes it (float64 math straight from the GGUF block definitions, independent of
// the kernels' decoders).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/dtype.h"
#include "kernels/half.h"

namespace longread::kernels::testing {

// IEEE binary16 bits to double by the textbook formula.
inline double HalfBitsToDouble(uint16_t h) {
  const int sign = (h >> 15) ? -1 : 1;
  const int exponent = (h >> 10) & 0x1f;
  const int mantissa = h & 0x3ff;
  if (exponent == 0) return sign * std::ldexp(mantissa, -24);
  if (exponent == 31) return mantissa == 0 ? sign * INFINITY : NAN;
  return sign * std::ldexp(1024 + mantissa, exponent - 25);
}

// bfloat16 bits to double: 8-bit exponent, 7-bit mantissa.
inline double BFloat16BitsToDouble(uint16_t b) {
  const int sign = (b >> 15) ? -1 : 1;
  const int exponent = (b >> 7) & 0xff;
  const int mantissa = b & 0x7f;
  if (exponent == 0) return sign * std::ldexp(mantissa, -133);
  if (exponent == 255) return mantissa == 0 ? sign * INFINITY : NAN;
  return sign * std::ldexp(128 + mantissa, exponent - 134);
}

struct TestMatrix {
  DType type;
  int64_t rows = 0, cols = 0;
  std::vector<uint8_t> bytes;
  std::vector<double> exact;  // rows x cols

  MatrixView view() const { return MatrixView{type, rows, cols, bytes.data()}; }
};

inline void PutU16(std::vector<uint8_t>& out, uint16_t v) {
  out.push_back(static_cast<uint8_t>(v & 0xff));
  out.push_back(static_cast<uint8_t>(v >> 8));
}

inline TestMatrix MakeMatrix(DType type, int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  std::uniform_real_distribution<float> scale(0.002f, 0.05f);
  std::uniform_int_distribution<int> nibble(0, 15), byte(-127, 127);
  TestMatrix m{type, rows, cols, {}, {}};
  m.exact.reserve(rows * cols);
  for (int64_t r = 0; r < rows; ++r) {
    switch (type) {
      case DType::kF32:
        for (int64_t c = 0; c < cols; ++c) {
          const float v = unit(rng);
          uint8_t raw[4];
          std::memcpy(raw, &v, 4);
          m.bytes.insert(m.bytes.end(), raw, raw + 4);
          m.exact.push_back(v);
        }
        break;
      case DType::kF16:
      case DType::kBF16:
        for (int64_t c = 0; c < cols; ++c) {
          const float v = unit(rng);
          const uint16_t bits = type == DType::kF16 ? FloatToHalf(v) : FloatToBFloat16(v);
          PutU16(m.bytes, bits);
          m.exact.push_back(type == DType::kF16 ? HalfBitsToDouble(bits)
                                                : BFloat16BitsToDouble(bits));
        }
        break;
      case DType::kQ8_0:
        for (int64_t b = 0; b < cols / 32; ++b) {
          const uint16_t d = FloatToHalf(scale(rng) / 10);
          PutU16(m.bytes, d);
          for (int i = 0; i < 32; ++i) {
            const int q = byte(rng);
            m.bytes.push_back(static_cast<uint8_t>(static_cast<int8_t>(q)));
            m.exact.push_back(q * HalfBitsToDouble(d));
          }
        }
        break;
      case DType::kQ4_0:
      case DType::kQ4_1: {
        for (int64_t b = 0; b < cols / 32; ++b) {
          const uint16_t d = FloatToHalf(scale(rng));
          const uint16_t mn = FloatToHalf(-8 * scale(rng));
          PutU16(m.bytes, d);
          if (type == DType::kQ4_1) PutU16(m.bytes, mn);
          int q[32];
          for (int& v : q) v = nibble(rng);
          for (int i = 0; i < 16; ++i)
            m.bytes.push_back(static_cast<uint8_t>(q[i] | q[16 + i] << 4));
          for (int i = 0; i < 32; ++i) {
            m.exact.push_back(type == DType::kQ4_0
                                  ? (q[i] - 8) * HalfBitsToDouble(d)
                                  : q[i] * HalfBitsToDouble(d) + HalfBitsToDouble(mn));
          }
        }
        break;
      }
    }
  }
  return m;
}

inline std::vector<float> RandomFloats(int64_t n, uint32_t seed, float lo = -1.0f,
                                       float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

}  // namespace longread::kernels::testing
