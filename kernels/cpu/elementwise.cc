// RmsNorm, Rope, SiluMul, Add. These are a few percent of a forward pass, so they stay plain C++
// (the compiler vectorizes them) except SiluMul, whose exp gets an AVX2 twin.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_internal.h"
#include "kernels/ops.h"

namespace longread::kernels {

void RmsNorm(const float* x, const float* weight, int64_t n_tokens, int64_t dim, float eps,
             float* out) {
  for (int64_t t = 0; t < n_tokens; ++t) {
    const float* xt = x + t * dim;
    // Double accumulation: the norm feeds every layer, and dim is small.
    double sum_sq = 0;
    for (int64_t i = 0; i < dim; ++i) sum_sq += double{xt[i]} * xt[i];
    const float inv = static_cast<float>(1.0 / std::sqrt(sum_sq / dim + eps));
    float* ot = out + t * dim;
    for (int64_t i = 0; i < dim; ++i) ot[i] = xt[i] * inv * weight[i];
  }
}

namespace {

// cos/sin of every (token, pair) of the last Rope call on this thread. A forward pass rotates q
// and k of every layer at the same positions, so all but the first call of a pass reuse it.
struct RopeTable {
  float theta = 0;
  int64_t head_dim = 0;
  std::vector<int64_t> positions;
  std::vector<float> cos, sin;   // [token][head_dim / 2]
  std::vector<double> inv_freq;  // kept: decode recomputes the table for one new position a token

  const RopeTable& For(const int64_t* pos, int64_t n_tokens, int64_t dim, float base) {
    if (base == theta && dim == head_dim && static_cast<int64_t>(positions.size()) == n_tokens &&
        std::equal(pos, pos + n_tokens, positions.begin())) {
      return *this;
    }
    theta = base;
    head_dim = dim;
    positions.assign(pos, pos + n_tokens);
    const int64_t half = dim / 2;
    cos.resize(n_tokens * half);
    sin.resize(n_tokens * half);
    inv_freq.resize(half);
    for (int64_t i = 0; i < half; ++i) {
      inv_freq[i] = std::pow(static_cast<double>(base), -2.0 * static_cast<double>(i) / dim);
    }
    for (int64_t t = 0; t < n_tokens; ++t) {
      for (int64_t i = 0; i < half; ++i) {
        const double angle = static_cast<double>(pos[t]) * inv_freq[i];
        cos[t * half + i] = static_cast<float>(std::cos(angle));
        sin[t * half + i] = static_cast<float>(std::sin(angle));
      }
    }
    return *this;
  }
};

}  // namespace

void Rope(float* x, int64_t n_tokens, int64_t n_heads, int64_t head_dim, const int64_t* positions,
          float theta, RopeStyle style) {
  const int64_t half = head_dim / 2;
  thread_local RopeTable cache;
  const RopeTable& table = cache.For(positions, n_tokens, head_dim, theta);
  for (int64_t t = 0; t < n_tokens; ++t) {
    const float* cos_t = table.cos.data() + t * half;
    const float* sin_t = table.sin.data() + t * half;
    for (int64_t h = 0; h < n_heads; ++h) {
      float* v = x + (t * n_heads + h) * head_dim;
      if (style == RopeStyle::kInterleaved) {
        for (int64_t i = 0; i < half; ++i) {
          const float x0 = v[2 * i], x1 = v[2 * i + 1];
          v[2 * i] = x0 * cos_t[i] - x1 * sin_t[i];
          v[2 * i + 1] = x0 * sin_t[i] + x1 * cos_t[i];
        }
      } else {
        for (int64_t i = 0; i < half; ++i) {
          const float x0 = v[i], x1 = v[i + half];
          v[i] = x0 * cos_t[i] - x1 * sin_t[i];
          v[i + half] = x0 * sin_t[i] + x1 * cos_t[i];
        }
      }
    }
  }
}

void SiluMul(const float* gate, const float* up, int64_t n, float* out) {
  if (cpu::UseAvx2()) {
    cpu::SiluMulAvx2(gate, up, n, out);
    return;
  }
  for (int64_t i = 0; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void Add(const float* a, const float* b, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

}  // namespace longread::kernels
