// AVX2 steps of the tiled attention (see AttentionSteps) and the AVX2 SiluMul.
#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cpu/avx2_math.h"
#include "kernels/cpu/cpu_internal.h"

namespace longread::kernels::cpu {
namespace {

// Rows [0, 8) of k (row stride head_dim) at columns [d0, d0 + 8) into kt[d0 + i][j0 + r].
LONGREAD_AVX2 inline void Transpose8x8(const float* k, int64_t ld, float* kt) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(k + i * ld);
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {
    r[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int j = 0; j < 4; ++j) {
    _mm256_store_ps(kt + j * kKeyTile, _mm256_permute2f128_ps(r[j], r[4 + j], 0x20));
    _mm256_store_ps(kt + (4 + j) * kKeyTile, _mm256_permute2f128_ps(r[j], r[4 + j], 0x31));
  }
}

LONGREAD_AVX2 void TransposeKeys(const float* k, int64_t n, int64_t head_dim, float* kt) {
  int64_t j0 = 0;
  for (; j0 + 8 <= n; j0 += 8) {
    for (int64_t d0 = 0; d0 < head_dim; d0 += 8) {
      Transpose8x8(k + j0 * head_dim + d0, head_dim, kt + d0 * kKeyTile + j0);
    }
  }
  for (int64_t d = 0; d < head_dim; ++d) {
    for (int64_t j = j0; j < kKeyTile; ++j) kt[d * kKeyTile + j] = j < n ? k[j * head_dim + d] : 0;
  }
}

// R query rows x 32 keys per pass: 4R accumulators, 4 key vectors and R broadcasts in registers.
template <int R>
LONGREAD_AVX2 inline void ScoreRows(const float* q, const float* kt, int64_t head_dim,
                                    float* scores) {
  for (int jb = 0; jb < kKeyTile; jb += 32) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    for (int64_t d = 0; d < head_dim; ++d) {
      const float* k_row = kt + d * kKeyTile + jb;
      const __m256 k0 = _mm256_load_ps(k_row), k1 = _mm256_load_ps(k_row + 8);
      const __m256 k2 = _mm256_load_ps(k_row + 16), k3 = _mm256_load_ps(k_row + 24);
      const __m256 qa = _mm256_broadcast_ss(q + d);
      a0 = _mm256_fmadd_ps(qa, k0, a0);
      a1 = _mm256_fmadd_ps(qa, k1, a1);
      a2 = _mm256_fmadd_ps(qa, k2, a2);
      a3 = _mm256_fmadd_ps(qa, k3, a3);
      if constexpr (R == 2) {
        const __m256 qb = _mm256_broadcast_ss(q + head_dim + d);
        b0 = _mm256_fmadd_ps(qb, k0, b0);
        b1 = _mm256_fmadd_ps(qb, k1, b1);
        b2 = _mm256_fmadd_ps(qb, k2, b2);
        b3 = _mm256_fmadd_ps(qb, k3, b3);
      }
    }
    float* s = scores + jb;
    _mm256_store_ps(s, a0);
    _mm256_store_ps(s + 8, a1);
    _mm256_store_ps(s + 16, a2);
    _mm256_store_ps(s + 24, a3);
    if constexpr (R == 2) {
      _mm256_store_ps(s + kKeyTile, b0);
      _mm256_store_ps(s + kKeyTile + 8, b1);
      _mm256_store_ps(s + kKeyTile + 16, b2);
      _mm256_store_ps(s + kKeyTile + 24, b3);
    }
  }
}

LONGREAD_AVX2 void Scores(const float* q_tile, int64_t rows, const float* kt, int64_t head_dim,
                          float* scores) {
  int64_t r = 0;
  for (; r + 2 <= rows; r += 2) {
    ScoreRows<2>(q_tile + r * head_dim, kt, head_dim, scores + r * kKeyTile);
  }
  if (r < rows) ScoreRows<1>(q_tile + r * head_dim, kt, head_dim, scores + r * kKeyTile);
}

LONGREAD_AVX2 float SoftmaxRow(float* s, float* row_max, float* row_sum) {
  const __m256 neg_inf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 mx = neg_inf;
  for (int j = 0; j < kKeyTile; j += 8) mx = _mm256_max_ps(mx, _mm256_load_ps(s + j));
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  const float tile_max = _mm_cvtss_f32(m4);
  if (tile_max == -std::numeric_limits<float>::infinity()) return -1.0f;
  const float new_max = std::max(*row_max, tile_max);
  const float correction = std::exp(*row_max - new_max);  // 0 on the row's first visible tile
  const __m256 vmax = _mm256_set1_ps(new_max);
  __m256 sum = _mm256_setzero_ps();
  for (int j = 0; j < kKeyTile; j += 8) {
    const __m256 x = _mm256_load_ps(s + j);
    const __m256 visible = _mm256_cmp_ps(x, neg_inf, _CMP_NEQ_OQ);
    const __m256 p = _mm256_and_ps(Exp(_mm256_sub_ps(x, vmax)), visible);
    _mm256_store_ps(s + j, p);
    sum = _mm256_add_ps(sum, p);
  }
  *row_sum = *row_sum * correction + HorizontalSum(sum);
  *row_max = new_max;
  return correction;
}

// Two rows x NV*8 dims (NV <= 4) of acc += p . v, accumulators in named registers.
template <int NV, int R>
LONGREAD_AVX2 inline void AccumulateBlock(const float* p, const float* v, int64_t n,
                                          int64_t head_dim, float* acc) {
  static_assert(NV >= 1 && NV <= 4 && (R == 1 || R == 2));
  const float* p1 = p + kKeyTile;
  float* acc1 = acc + head_dim;
  __m256 a0 = _mm256_loadu_ps(acc), a1 = a0, a2 = a0, a3 = a0;
  __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
  if constexpr (NV > 1) a1 = _mm256_loadu_ps(acc + 8);
  if constexpr (NV > 2) a2 = _mm256_loadu_ps(acc + 16);
  if constexpr (NV > 3) a3 = _mm256_loadu_ps(acc + 24);
  if constexpr (R == 2) {
    b0 = _mm256_loadu_ps(acc1);
    if constexpr (NV > 1) b1 = _mm256_loadu_ps(acc1 + 8);
    if constexpr (NV > 2) b2 = _mm256_loadu_ps(acc1 + 16);
    if constexpr (NV > 3) b3 = _mm256_loadu_ps(acc1 + 24);
  }
  for (int64_t j = 0; j < n; ++j) {
    const float* vj = v + j * head_dim;
    const __m256 v0 = _mm256_loadu_ps(vj);
    __m256 v1, v2, v3;
    if constexpr (NV > 1) v1 = _mm256_loadu_ps(vj + 8);
    if constexpr (NV > 2) v2 = _mm256_loadu_ps(vj + 16);
    if constexpr (NV > 3) v3 = _mm256_loadu_ps(vj + 24);
    const __m256 pa = _mm256_broadcast_ss(p + j);
    a0 = _mm256_fmadd_ps(pa, v0, a0);
    if constexpr (NV > 1) a1 = _mm256_fmadd_ps(pa, v1, a1);
    if constexpr (NV > 2) a2 = _mm256_fmadd_ps(pa, v2, a2);
    if constexpr (NV > 3) a3 = _mm256_fmadd_ps(pa, v3, a3);
    if constexpr (R == 2) {
      const __m256 pb = _mm256_broadcast_ss(p1 + j);
      b0 = _mm256_fmadd_ps(pb, v0, b0);
      if constexpr (NV > 1) b1 = _mm256_fmadd_ps(pb, v1, b1);
      if constexpr (NV > 2) b2 = _mm256_fmadd_ps(pb, v2, b2);
      if constexpr (NV > 3) b3 = _mm256_fmadd_ps(pb, v3, b3);
    }
  }
  _mm256_storeu_ps(acc, a0);
  if constexpr (NV > 1) _mm256_storeu_ps(acc + 8, a1);
  if constexpr (NV > 2) _mm256_storeu_ps(acc + 16, a2);
  if constexpr (NV > 3) _mm256_storeu_ps(acc + 24, a3);
  if constexpr (R == 2) {
    _mm256_storeu_ps(acc1, b0);
    if constexpr (NV > 1) _mm256_storeu_ps(acc1 + 8, b1);
    if constexpr (NV > 2) _mm256_storeu_ps(acc1 + 16, b2);
    if constexpr (NV > 3) _mm256_storeu_ps(acc1 + 24, b3);
  }
}

template <int R>
LONGREAD_AVX2 inline void AccumulateRows(const float* p, const float* v, int64_t n,
                                         int64_t head_dim, float* acc) {
  int64_t d0 = 0;
  for (; d0 + 32 <= head_dim; d0 += 32) {
    AccumulateBlock<4, R>(p, v + d0, n, head_dim, acc + d0);
  }
  switch ((head_dim - d0) / 8) {
    case 3:
      AccumulateBlock<3, R>(p, v + d0, n, head_dim, acc + d0);
      break;
    case 2:
      AccumulateBlock<2, R>(p, v + d0, n, head_dim, acc + d0);
      break;
    case 1:
      AccumulateBlock<1, R>(p, v + d0, n, head_dim, acc + d0);
      break;
    default:
      break;
  }
}

// head_dim is a multiple of 8 on this path.
LONGREAD_AVX2 void Accumulate(const float* p, int64_t rows, const float* v, int64_t n,
                              int64_t head_dim, float* acc) {
  int64_t r = 0;
  for (; r + 2 <= rows; r += 2) {
    AccumulateRows<2>(p + r * kKeyTile, v, n, head_dim, acc + r * head_dim);
  }
  if (r < rows) AccumulateRows<1>(p + r * kKeyTile, v, n, head_dim, acc + r * head_dim);
}

}  // namespace

const AttentionSteps& Avx2AttentionSteps() {
  static const AttentionSteps steps{&TransposeKeys, &Scores, &SoftmaxRow, &Accumulate};
  return steps;
}

LONGREAD_AVX2 void SiluMulAvx2(const float* gate, const float* up, int64_t n, float* out) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 e = Exp(_mm256_xor_ps(g, sign));  // exp(-g)
    const __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(silu, _mm256_loadu_ps(up + i)));
  }
  for (; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

}  // namespace longread::kernels::cpu
