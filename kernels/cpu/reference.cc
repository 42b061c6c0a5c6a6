// Plain loops, double accumulation. Deliberately free of tiling and SIMD.
#include "kernels/reference.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/cpu_internal.h"

namespace longread::kernels {
namespace cpu {

void DequantizeRowPortable(DType type, const uint8_t* row, int64_t cols, float* out) {
  switch (type) {
    case DType::kF32:
      std::memcpy(out, row, cols * sizeof(float));
      return;
    case DType::kF16:
      for (int64_t c = 0; c < cols; ++c) {
        uint16_t h;
        std::memcpy(&h, row + 2 * c, 2);
        out[c] = HalfToFloat(h);
      }
      return;
    case DType::kBF16:
      for (int64_t c = 0; c < cols; ++c) {
        uint16_t h;
        std::memcpy(&h, row + 2 * c, 2);
        out[c] = BFloat16ToFloat(h);
      }
      return;
    case DType::kQ8_0:
      for (int64_t b = 0; b < cols / 32; ++b) {
        const auto blk = LoadBlock<BlockQ8_0>(row + b * sizeof(BlockQ8_0));
        const float d = HalfToFloat(blk.d);
        for (int i = 0; i < 32; ++i) out[32 * b + i] = static_cast<float>(blk.qs[i]) * d;
      }
      return;
    case DType::kQ4_0:
      for (int64_t b = 0; b < cols / 32; ++b) {
        const auto blk = LoadBlock<BlockQ4_0>(row + b * sizeof(BlockQ4_0));
        const float d = HalfToFloat(blk.d);
        for (int i = 0; i < 16; ++i) {
          out[32 * b + i] = static_cast<float>((blk.qs[i] & 0x0f) - 8) * d;
          out[32 * b + 16 + i] = static_cast<float>((blk.qs[i] >> 4) - 8) * d;
        }
      }
      return;
    case DType::kQ4_1:
      for (int64_t b = 0; b < cols / 32; ++b) {
        const auto blk = LoadBlock<BlockQ4_1>(row + b * sizeof(BlockQ4_1));
        const float d = HalfToFloat(blk.d);
        const float m = HalfToFloat(blk.m);
        for (int i = 0; i < 16; ++i) {
          // nibble * d is exact in float (4 x 11 significant bits), so this rounds once, like
          // the fused multiply-add of the AVX2 path.
          out[32 * b + i] = static_cast<float>(blk.qs[i] & 0x0f) * d + m;
          out[32 * b + 16 + i] = static_cast<float>(blk.qs[i] >> 4) * d + m;
        }
      }
      return;
  }
}

}  // namespace cpu

namespace ref {

void DequantizeRow(const MatrixView& w, int64_t row, float* out) {
  cpu::DequantizeRowPortable(w.type, cpu::RowPointer(w, row), w.cols, out);
}

void MatMul(const MatrixView& w, const float* x, int64_t n_tokens, float* y) {
  std::vector<float> wrow(w.cols);
  for (int64_t r = 0; r < w.rows; ++r) {
    ref::DequantizeRow(w, r, wrow.data());
    for (int64_t t = 0; t < n_tokens; ++t) {
      double sum = 0;
      for (int64_t c = 0; c < w.cols; ++c) sum += double{wrow[c]} * x[t * w.cols + c];
      y[t * w.rows + r] = static_cast<float>(sum);
    }
  }
}

void RmsNorm(const float* x, const float* weight, int64_t n_tokens, int64_t dim, float eps,
             float* out) {
  for (int64_t t = 0; t < n_tokens; ++t) {
    double sum_sq = 0;
    for (int64_t i = 0; i < dim; ++i) sum_sq += double{x[t * dim + i]} * x[t * dim + i];
    const double inv = 1.0 / std::sqrt(sum_sq / dim + eps);
    for (int64_t i = 0; i < dim; ++i) {
      out[t * dim + i] = static_cast<float>(x[t * dim + i] * inv * weight[i]);
    }
  }
}

void Rope(float* x, int64_t n_tokens, int64_t n_heads, int64_t head_dim, const int64_t* positions,
          float theta, RopeStyle style) {
  const int64_t half = head_dim / 2;
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int64_t h = 0; h < n_heads; ++h) {
      float* v = x + (t * n_heads + h) * head_dim;
      for (int64_t i = 0; i < half; ++i) {
        const double angle = static_cast<double>(positions[t]) *
                             std::pow(static_cast<double>(theta), -2.0 * i / head_dim);
        const double c = std::cos(angle), s = std::sin(angle);
        const int64_t a = style == RopeStyle::kInterleaved ? 2 * i : i;
        const int64_t b = style == RopeStyle::kInterleaved ? 2 * i + 1 : i + half;
        const double x0 = v[a], x1 = v[b];
        v[a] = static_cast<float>(x0 * c - x1 * s);
        v[b] = static_cast<float>(x0 * s + x1 * c);
      }
    }
  }
}

void SiluMul(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const double g = gate[i];
    out[i] = static_cast<float>(g / (1.0 + std::exp(-g)) * up[i]);
  }
}

void Add(const float* a, const float* b, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

void Attention(const AttentionArgs& a) {
  const int64_t group = a.n_heads / a.n_kv_heads;
  std::vector<double> weights(a.n_keys);
  std::vector<double> acc(a.head_dim);
  for (int64_t i = 0; i < a.n_q; ++i) {
    for (int64_t h = 0; h < a.n_heads; ++h) {
      const int64_t g = h / group;
      const float* q = a.q + (i * a.n_heads + h) * a.head_dim;
      double max_logit = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < a.n_keys; ++j) {
        const int64_t key = g * a.n_keys + j;
        if (!(a.visible_from[key] <= i && i < a.visible_until[key])) {
          weights[j] = -std::numeric_limits<double>::infinity();
          continue;
        }
        const float* k =
            a.k_heads != nullptr ? a.k_heads[g] + j * a.head_dim : a.k + key * a.head_dim;
        double dot = 0;
        for (int64_t d = 0; d < a.head_dim; ++d) dot += double{q[d]} * k[d];
        weights[j] = dot * a.scale;
        max_logit = std::max(max_logit, weights[j]);
      }
      float* out = a.out + (i * a.n_heads + h) * a.head_dim;
      if (max_logit == -std::numeric_limits<double>::infinity()) {
        std::fill(out, out + a.head_dim, 0.0f);
        continue;
      }
      double denom = 0;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t j = 0; j < a.n_keys; ++j) {
        if (weights[j] == -std::numeric_limits<double>::infinity()) continue;
        const int64_t key = g * a.n_keys + j;
        const double p = std::exp(weights[j] - max_logit);
        denom += p;
        double gate = 1.0;
        if (a.score != nullptr && i >= a.gate_from[key]) {
          gate = std::clamp(double{a.score[key]} - a.tau[i * a.n_kv_heads + g], 0.0, 1.0);
        }
        const float* v =
            a.v_heads != nullptr ? a.v_heads[g] + j * a.head_dim : a.v + key * a.head_dim;
        for (int64_t d = 0; d < a.head_dim; ++d) acc[d] += p * gate * v[d];
      }
      for (int64_t d = 0; d < a.head_dim; ++d) out[d] = static_cast<float>(acc[d] / denom);
    }
  }
}

}  // namespace ref
}  // namespace longread::kernels
