// AVX2 steps of the tiled attention (see AttentionSteps) and the AVX2 SiluMul.
#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cpu/avx2_math.h"
#include "kernels/cpu/cpu_internal.h"

namespace longread::kernels::cpu {
namespace {

// Two query rows x 32 keys per pass: 8 accumulators, 4 key vectors and 2 broadcasts in registers.
template <int R>
LONGREAD_AVX2 inline void ScoreRows(const float* q, const float* kt, int64_t head_dim,
                                    float* scores) {
  for (int jb = 0; jb < kKeyTile; jb += 32) {
    __m256 acc[R][4];
    for (int r = 0; r < R; ++r) {
      for (int v = 0; v < 4; ++v) acc[r][v] = _mm256_setzero_ps();
    }
    for (int64_t d = 0; d < head_dim; ++d) {
      const float* k_row = kt + d * kKeyTile + jb;
      const __m256 k0 = _mm256_load_ps(k_row), k1 = _mm256_load_ps(k_row + 8);
      const __m256 k2 = _mm256_load_ps(k_row + 16), k3 = _mm256_load_ps(k_row + 24);
      for (int r = 0; r < R; ++r) {
        const __m256 a = _mm256_broadcast_ss(q + r * head_dim + d);
        acc[r][0] = _mm256_fmadd_ps(a, k0, acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(a, k1, acc[r][1]);
        acc[r][2] = _mm256_fmadd_ps(a, k2, acc[r][2]);
        acc[r][3] = _mm256_fmadd_ps(a, k3, acc[r][3]);
      }
    }
    for (int r = 0; r < R; ++r) {
      for (int v = 0; v < 4; ++v) _mm256_store_ps(scores + r * kKeyTile + jb + 8 * v, acc[r][v]);
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

LONGREAD_AVX2 float ExpRow(float* s, float max) {
  const __m256 vmax = _mm256_set1_ps(max);
  const __m256 neg_inf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 sum = _mm256_setzero_ps();
  for (int j = 0; j < kKeyTile; j += 8) {
    const __m256 x = _mm256_load_ps(s + j);
    const __m256 visible = _mm256_cmp_ps(x, neg_inf, _CMP_NEQ_OQ);
    const __m256 p = _mm256_and_ps(Exp(_mm256_sub_ps(x, vmax)), visible);
    _mm256_store_ps(s + j, p);
    sum = _mm256_add_ps(sum, p);
  }
  return HorizontalSum(sum);
}

template <int NV>
LONGREAD_AVX2 inline void AccumulateChunk(const float* p, const float* v, int64_t n,
                                          int64_t head_dim, float* acc) {
  __m256 a[NV];
  for (int i = 0; i < NV; ++i) a[i] = _mm256_loadu_ps(acc + 8 * i);
  for (int64_t j = 0; j < n; ++j) {
    if (p[j] == 0.0f) continue;  // masked or underflowed keys: common with sparse intervals
    const __m256 pj = _mm256_broadcast_ss(p + j);
    const float* vj = v + j * head_dim;
    for (int i = 0; i < NV; ++i) a[i] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 8 * i), a[i]);
  }
  for (int i = 0; i < NV; ++i) _mm256_storeu_ps(acc + 8 * i, a[i]);
}

// head_dim is a multiple of 8 on this path; chunks of up to 64 dims stay in registers.
LONGREAD_AVX2 void Accumulate(const float* p, const float* v, int64_t n, int64_t head_dim,
                              float* acc) {
  for (int64_t d0 = 0; d0 < head_dim; d0 += 64) {
    switch (std::min<int64_t>(8, (head_dim - d0) / 8)) {
      case 8:
        AccumulateChunk<8>(p, v + d0, n, head_dim, acc + d0);
        break;
      case 7:
        AccumulateChunk<7>(p, v + d0, n, head_dim, acc + d0);
        break;
      case 6:
        AccumulateChunk<6>(p, v + d0, n, head_dim, acc + d0);
        break;
      case 5:
        AccumulateChunk<5>(p, v + d0, n, head_dim, acc + d0);
        break;
      case 4:
        AccumulateChunk<4>(p, v + d0, n, head_dim, acc + d0);
        break;
      case 3:
        AccumulateChunk<3>(p, v + d0, n, head_dim, acc + d0);
        break;
      case 2:
        AccumulateChunk<2>(p, v + d0, n, head_dim, acc + d0);
        break;
      default:
        AccumulateChunk<1>(p, v + d0, n, head_dim, acc + d0);
        break;
    }
  }
}

}  // namespace

const AttentionSteps& Avx2AttentionSteps() {
  static const AttentionSteps steps{&Scores, &ExpRow, &Accumulate};
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
