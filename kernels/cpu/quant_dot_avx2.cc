// AVX2 twin of kernels/cpu/quant_dot.cc: 8-bit activation blocks against Q4_0/Q4_1/Q8_0 weight
// blocks with _mm256_maddubs_epi16 (unsigned x signed bytes -> int16 pairs, which cannot saturate
// here: 15 * 127 * 2 and 128 * 127 * 2 fit) and _mm256_madd_epi16 (-> int32), one float multiply
// per block.
#include "kernels/cpu/avx2_math.h"
#include "kernels/cpu/cpu_internal.h"

namespace longread::kernels::cpu {
namespace {

LONGREAD_AVX2 inline float HalfAt(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

// The 32 nibbles of a Q4 block as bytes in element order (low nibbles are elements 0..15).
LONGREAD_AVX2 inline __m256i Nibbles(const uint8_t* qs) {
  const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m256i both = _mm256_set_m128i(_mm_srli_epi16(q, 4), q);
  return _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
}

// Sum of unsigned-by-signed byte products as 8 int32 lanes converted to float.
LONGREAD_AVX2 inline __m256 ProductSums(__m256i unsigned_bytes, __m256i signed_bytes) {
  const __m256i pairs = _mm256_maddubs_epi16(unsigned_bytes, signed_bytes);
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

template <DType kType>
LONGREAD_AVX2 inline __m256 BlockProducts(const uint8_t* blk, const int8_t* qx, float* dw,
                                          float* offset) {
  const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qx));
  *dw = HalfAt(blk);
  if constexpr (kType == DType::kQ8_0) {
    *offset = 0.0f;
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
    // maddubs wants one unsigned operand: |w| times x with w's sign.
    return ProductSums(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
  } else if constexpr (kType == DType::kQ4_1) {
    *offset = HalfAt(blk + 2);
    return ProductSums(Nibbles(blk + 4), x);
  } else {
    *offset = -8.0f * *dw;
    return ProductSums(Nibbles(blk + 2), x);
  }
}

template <DType kType>
LONGREAD_AVX2 float DotInt8T(const uint8_t* w, const int8_t* q, const float* d, const float* sum,
                             int64_t n_blocks) {
  constexpr int64_t kBytes = BlockBytes(kType);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  float off0 = 0, off1 = 0;
  int64_t b = 0;
  for (; b + 2 <= n_blocks; b += 2) {
    float dw0, o0, dw1, o1;
    const __m256 p0 = BlockProducts<kType>(w + b * kBytes, q + 32 * b, &dw0, &o0);
    const __m256 p1 = BlockProducts<kType>(w + (b + 1) * kBytes, q + 32 * b + 32, &dw1, &o1);
    acc0 = _mm256_fmadd_ps(p0, _mm256_set1_ps(dw0 * d[b]), acc0);
    acc1 = _mm256_fmadd_ps(p1, _mm256_set1_ps(dw1 * d[b + 1]), acc1);
    off0 += o0 * sum[b];
    off1 += o1 * sum[b + 1];
  }
  if (b < n_blocks) {
    float dw0, o0;
    const __m256 p0 = BlockProducts<kType>(w + b * kBytes, q + 32 * b, &dw0, &o0);
    acc0 = _mm256_fmadd_ps(p0, _mm256_set1_ps(dw0 * d[b]), acc0);
    off0 += o0 * sum[b];
  }
  return HorizontalSum(_mm256_add_ps(acc0, acc1)) + (off0 + off1);
}

// 16-bit activations: madd_epi16 of widened weights against x (int32 sums cannot overflow:
// 32 * 128 * 32767 < 2^31).
template <DType kType>
LONGREAD_AVX2 inline __m256 BlockProducts16(const uint8_t* blk, const int16_t* qx, float* dw,
                                            float* offset) {
  const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qx));
  const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qx + 16));
  *dw = HalfAt(blk);
  __m256i w0, w1;
  if constexpr (kType == DType::kQ8_0) {
    *offset = 0.0f;
    w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2)));
    w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 18)));
  } else {
    constexpr int kQs = kType == DType::kQ4_1 ? 4 : 2;
    *offset = kType == DType::kQ4_1 ? HalfAt(blk + 2) : -8.0f * *dw;
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + kQs));
    const __m128i mask = _mm_set1_epi8(0x0f);
    w0 = _mm256_cvtepu8_epi16(_mm_and_si128(q, mask));
    w1 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(q, 4), mask));
  }
  const __m256i s = _mm256_add_epi32(_mm256_madd_epi16(w0, x0), _mm256_madd_epi16(w1, x1));
  return _mm256_cvtepi32_ps(s);
}

template <DType kType>
LONGREAD_AVX2 float DotInt16T(const uint8_t* w, const int16_t* q, const float* d, const float* sum,
                              int64_t n_blocks) {
  constexpr int64_t kBytes = BlockBytes(kType);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  float off0 = 0, off1 = 0;
  int64_t b = 0;
  for (; b + 2 <= n_blocks; b += 2) {
    float dw0, o0, dw1, o1;
    const __m256 p0 = BlockProducts16<kType>(w + b * kBytes, q + 32 * b, &dw0, &o0);
    const __m256 p1 = BlockProducts16<kType>(w + (b + 1) * kBytes, q + 32 * b + 32, &dw1, &o1);
    acc0 = _mm256_fmadd_ps(p0, _mm256_set1_ps(dw0 * d[b]), acc0);
    acc1 = _mm256_fmadd_ps(p1, _mm256_set1_ps(dw1 * d[b + 1]), acc1);
    off0 += o0 * sum[b];
    off1 += o1 * sum[b + 1];
  }
  if (b < n_blocks) {
    float dw0, o0;
    const __m256 p0 = BlockProducts16<kType>(w + b * kBytes, q + 32 * b, &dw0, &o0);
    acc0 = _mm256_fmadd_ps(p0, _mm256_set1_ps(dw0 * d[b]), acc0);
    off0 += o0 * sum[b];
  }
  return HorizontalSum(_mm256_add_ps(acc0, acc1)) + (off0 + off1);
}

}  // namespace

LONGREAD_AVX2 void QuantizeRowQ16Avx2(const float* x, int64_t cols, int16_t* q, float* d,
                                      float* sum) {
  const __m256 sign_mask = _mm256_set1_ps(-0.0f);
  for (int64_t b = 0; b < cols / 32; ++b) {
    const float* xb = x + 32 * b;
    const __m256 v0 = _mm256_loadu_ps(xb), v1 = _mm256_loadu_ps(xb + 8);
    const __m256 v2 = _mm256_loadu_ps(xb + 16), v3 = _mm256_loadu_ps(xb + 24);
    __m256 amax = _mm256_max_ps(
        _mm256_max_ps(_mm256_andnot_ps(sign_mask, v0), _mm256_andnot_ps(sign_mask, v1)),
        _mm256_max_ps(_mm256_andnot_ps(sign_mask, v2), _mm256_andnot_ps(sign_mask, v3)));
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    const float scale = _mm_cvtss_f32(m) / 32767.0f;
    const float inv = scale != 0.0f ? 1.0f / scale : 0.0f;
    const __m256 vinv = _mm256_set1_ps(inv);
    const __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, vinv));
    const __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, vinv));
    const __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, vinv));
    const __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, vinv));
    // packs works per 128-bit lane; 0xD8 puts the 64-bit groups back in element order.
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + 32 * b),
                        _mm256_permute4x64_epi64(_mm256_packs_epi32(i0, i1), 0xD8));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + 32 * b + 16),
                        _mm256_permute4x64_epi64(_mm256_packs_epi32(i2, i3), 0xD8));
    d[b] = scale;
    sum[b] = HorizontalSum(_mm256_add_ps(_mm256_add_ps(v0, v1), _mm256_add_ps(v2, v3)));
  }
}

LONGREAD_AVX2 float DotInt16Avx2(DType type, const uint8_t* w, const int16_t* q, const float* d,
                                 const float* sum, int64_t cols) {
  switch (type) {
    case DType::kQ4_0:
      return DotInt16T<DType::kQ4_0>(w, q, d, sum, cols / 32);
    case DType::kQ4_1:
      return DotInt16T<DType::kQ4_1>(w, q, d, sum, cols / 32);
    case DType::kQ8_0:
      return DotInt16T<DType::kQ8_0>(w, q, d, sum, cols / 32);
    default:
      return 0.0f;
  }
}

LONGREAD_AVX2 void QuantizeRowQ8Avx2(const float* x, int64_t cols, int8_t* q, float* d,
                                     float* sum) {
  const __m256 sign_mask = _mm256_set1_ps(-0.0f);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t b = 0; b < cols / 32; ++b) {
    const float* xb = x + 32 * b;
    const __m256 v0 = _mm256_loadu_ps(xb), v1 = _mm256_loadu_ps(xb + 8);
    const __m256 v2 = _mm256_loadu_ps(xb + 16), v3 = _mm256_loadu_ps(xb + 24);
    __m256 amax = _mm256_max_ps(
        _mm256_max_ps(_mm256_andnot_ps(sign_mask, v0), _mm256_andnot_ps(sign_mask, v1)),
        _mm256_max_ps(_mm256_andnot_ps(sign_mask, v2), _mm256_andnot_ps(sign_mask, v3)));
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    const float scale = _mm_cvtss_f32(m) / 127.0f;
    const float inv = scale != 0.0f ? 1.0f / scale : 0.0f;
    const __m256 vinv = _mm256_set1_ps(inv);
    // cvtps rounds to nearest even (the default MXCSR mode), as std::nearbyint does.
    const __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, vinv));
    const __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, vinv));
    const __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, vinv));
    const __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, vinv));
    // packs work per 128-bit lane; the permute puts the 4-byte groups back in element order.
    const __m256i packed =
        _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + 32 * b),
                        _mm256_permutevar8x32_epi32(packed, order));
    d[b] = scale;
    sum[b] = HorizontalSum(_mm256_add_ps(_mm256_add_ps(v0, v1), _mm256_add_ps(v2, v3)));
  }
}

LONGREAD_AVX2 float DotInt8Avx2(DType type, const uint8_t* w, const int8_t* q, const float* d,
                                const float* sum, int64_t cols) {
  switch (type) {
    case DType::kQ4_0:
      return DotInt8T<DType::kQ4_0>(w, q, d, sum, cols / 32);
    case DType::kQ4_1:
      return DotInt8T<DType::kQ4_1>(w, q, d, sum, cols / 32);
    case DType::kQ8_0:
      return DotInt8T<DType::kQ8_0>(w, q, d, sum, cols / 32);
    default:
      return 0.0f;  // callers check HasInt8Dot
  }
}

}  // namespace longread::kernels::cpu
