// Decode matvec with 8-bit activations: x is quantized once per call to blocks of 32 int8 with
// one fp32 scale (as ggml's Q8_0 activations), and each weight block's dot product becomes an
// integer sum times one float. The portable path; kernels/cpu/quant_dot_avx2.cc is its twin.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>

#include "kernels/cpu/cpu_internal.h"
#include "kernels/ops.h"

namespace longread::kernels {
namespace cpu {
namespace {

// kInt8ActivationsDefault unless LONGREAD_INT8_ACTIVATIONS is set (1: on, else off); ops.h says
// why it is off by default.
bool InitialInt8Setting() {
  const char* env = std::getenv("LONGREAD_INT8_ACTIVATIONS");
  if (env == nullptr || *env == '\0') return kInt8ActivationsDefault;
  return env[0] == '1';
}

std::atomic<bool> int8_activations{InitialInt8Setting()};

bool InitialInt16Setting() {
  const char* env = std::getenv("LONGREAD_INT16_ACTIVATIONS");
  if (env == nullptr || *env == '\0') return kInt16ActivationsDefault;
  return env[0] == '1';
}

std::atomic<bool> int16_activations{InitialInt16Setting()};

}  // namespace

bool UseInt8Activations() { return int8_activations.load(std::memory_order_relaxed); }
bool UseInt16Activations() { return int16_activations.load(std::memory_order_relaxed); }

bool HasInt8Dot(DType type) {
  return type == DType::kQ4_0 || type == DType::kQ4_1 || type == DType::kQ8_0;
}

void QuantizeRowQ8Portable(const float* x, int64_t cols, int8_t* q, float* d, float* sum) {
  for (int64_t b = 0; b < cols / 32; ++b) {
    const float* xb = x + 32 * b;
    float amax = 0;
    for (int i = 0; i < 32; ++i) amax = std::max(amax, std::abs(xb[i]));
    const float scale = amax / 127.0f;
    const float inv = scale != 0.0f ? 1.0f / scale : 0.0f;
    for (int i = 0; i < 32; ++i) {
      q[32 * b + i] = static_cast<int8_t>(std::nearbyint(xb[i] * inv));
    }
    d[b] = scale;
    // The block sum in float, summed as the AVX2 twin does (4 vectors of 8, then across lanes),
    // so that both paths give the same number.
    float lane[8];
    for (int l = 0; l < 8; ++l) lane[l] = (xb[l] + xb[8 + l]) + (xb[16 + l] + xb[24 + l]);
    sum[b] =
        ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]));
  }
}

float DotInt8Portable(DType type, const uint8_t* w, const int8_t* q, const float* d,
                      const float* sum, int64_t cols) {
  float total = 0;
  for (int64_t b = 0; b < cols / 32; ++b) {
    const int8_t* qb = q + 32 * b;
    int32_t isum = 0;
    float dw = 0, offset = 0;
    switch (type) {
      case DType::kQ4_0:
      case DType::kQ4_1: {
        const bool has_min = type == DType::kQ4_1;
        const uint8_t* blk = w + b * (has_min ? sizeof(BlockQ4_1) : sizeof(BlockQ4_0));
        uint16_t h;
        std::memcpy(&h, blk, 2);
        dw = HalfToFloat(h);
        if (has_min) {
          std::memcpy(&h, blk + 2, 2);
          offset = HalfToFloat(h);
        } else {
          offset = -8.0f * dw;
        }
        const uint8_t* qs = blk + (has_min ? 4 : 2);
        for (int i = 0; i < 16; ++i) {
          isum += (qs[i] & 0x0f) * qb[i] + (qs[i] >> 4) * qb[16 + i];
        }
        break;
      }
      case DType::kQ8_0: {
        const uint8_t* blk = w + b * sizeof(BlockQ8_0);
        uint16_t h;
        std::memcpy(&h, blk, 2);
        dw = HalfToFloat(h);
        const int8_t* qs = reinterpret_cast<const int8_t*>(blk + 2);
        for (int i = 0; i < 32; ++i) isum += qs[i] * qb[i];
        break;
      }
      default:
        return 0.0f;  // callers check HasInt8Dot
    }
    total += dw * d[b] * static_cast<float>(isum) + offset * sum[b];
  }
  return total;
}

void QuantizeRowQ16Portable(const float* x, int64_t cols, int16_t* q, float* d, float* sum) {
  for (int64_t b = 0; b < cols / 32; ++b) {
    const float* xb = x + 32 * b;
    float amax = 0;
    for (int i = 0; i < 32; ++i) amax = std::max(amax, std::abs(xb[i]));
    const float scale = amax / 32767.0f;
    const float inv = scale != 0.0f ? 1.0f / scale : 0.0f;
    for (int i = 0; i < 32; ++i) {
      q[32 * b + i] = static_cast<int16_t>(std::nearbyint(xb[i] * inv));
    }
    d[b] = scale;
    float lane[8];
    for (int l = 0; l < 8; ++l) lane[l] = (xb[l] + xb[8 + l]) + (xb[16 + l] + xb[24 + l]);
    sum[b] =
        ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]));
  }
}

float DotInt16Portable(DType type, const uint8_t* w, const int16_t* q, const float* d,
                       const float* sum, int64_t cols) {
  float total = 0;
  for (int64_t b = 0; b < cols / 32; ++b) {
    const int16_t* qb = q + 32 * b;
    int32_t isum = 0;
    float dw = 0, offset = 0;
    uint16_t h;
    switch (type) {
      case DType::kQ4_0:
      case DType::kQ4_1: {
        const bool has_min = type == DType::kQ4_1;
        const uint8_t* blk = w + b * (has_min ? sizeof(BlockQ4_1) : sizeof(BlockQ4_0));
        std::memcpy(&h, blk, 2);
        dw = HalfToFloat(h);
        if (has_min) {
          std::memcpy(&h, blk + 2, 2);
          offset = HalfToFloat(h);
        } else {
          offset = -8.0f * dw;
        }
        const uint8_t* qs = blk + (has_min ? 4 : 2);
        for (int i = 0; i < 16; ++i) {
          isum += (qs[i] & 0x0f) * qb[i] + (qs[i] >> 4) * qb[16 + i];
        }
        break;
      }
      case DType::kQ8_0: {
        const uint8_t* blk = w + b * sizeof(BlockQ8_0);
        std::memcpy(&h, blk, 2);
        dw = HalfToFloat(h);
        const int8_t* qs = reinterpret_cast<const int8_t*>(blk + 2);
        for (int i = 0; i < 32; ++i) isum += qs[i] * qb[i];
        break;
      }
      default:
        return 0.0f;
    }
    total += dw * d[b] * static_cast<float>(isum) + offset * sum[b];
  }
  return total;
}

}  // namespace cpu

void SetInt16Activations(bool enabled) {
  cpu::int16_activations.store(enabled, std::memory_order_relaxed);
}

bool Int16ActivationsEnabled() { return cpu::UseInt16Activations(); }

DecodeActivations DefaultDecodeActivations() {
  if (cpu::UseInt8Activations()) return DecodeActivations::kInt8;
  if (cpu::UseInt16Activations()) return DecodeActivations::kInt16;
  return DecodeActivations::kFloat32;
}

}  // namespace longread::kernels
