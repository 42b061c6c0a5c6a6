// AVX2/FMA MatMul. Two regimes:
//  - prefill (n_tokens > kDecodeMaxTokens): weights are decoded 16 rows at a time into a per-thread
//    fp32 panel stored k-major ([K][16]), and a 6-token x 16-row register-blocked kernel streams
//    the panel against the activations. Decoding costs 16*K per panel against 32*K*n_tokens
//    flops, so fp32 accuracy comes almost for free.
//  - decode (few tokens): one fused decode-and-dot per weight row straight from the block format,
//    since there the weights' memory traffic is the cost.
// Every output element is one sequential FMA chain over k in both regimes' inner kernels, and
// threads split whole panels/rows, so results do not depend on the thread count.
#include <algorithm>
#include <vector>

#include "kernels/cpu/avx2_math.h"
#include "kernels/cpu/cpu_internal.h"

namespace longread::kernels::cpu {
namespace {

constexpr int kPanelRows = 16;
constexpr int kTokenBlock = 6;
constexpr int64_t kDecodeMaxTokens = 3;

// Per-thread scratch that only grows: no allocation once the largest shape has been seen.
float* ThreadScratch(int64_t floats) {
  thread_local std::vector<float> scratch;
  if (static_cast<int64_t>(scratch.size()) < floats) scratch.resize(floats);
  return scratch.data();
}

LONGREAD_AVX2 inline __m256 BytesToFloats(__m128i eight_bytes_u8) {
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(eight_bytes_u8));
}
LONGREAD_AVX2 inline __m256 SignedBytesToFloats(__m128i eight_bytes_i8) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(eight_bytes_i8));
}

// The 32 nibbles of a Q4 block as four vectors of 8 floats in element order.
LONGREAD_AVX2 inline void NibblesToFloats(const uint8_t* qs, __m256 f[4]) {
  const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i mask = _mm_set1_epi8(0x0f);
  const __m128i lo = _mm_and_si128(q, mask);
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
  f[0] = BytesToFloats(lo);
  f[1] = BytesToFloats(_mm_srli_si128(lo, 8));
  f[2] = BytesToFloats(hi);
  f[3] = BytesToFloats(_mm_srli_si128(hi, 8));
}

// An f16 scale read straight from the block (F16C; exact like HalfToFloat).
LONGREAD_AVX2 inline float HalfScale(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

// Blocks are read in place, never copied into a struct first: a 16-byte load of nibbles from a
// freshly copied struct misses store forwarding and costs more than the decoding itself.
// Inlined into the per-type panel packers below, where `type` is a constant and the switch folds.
LONGREAD_AVX2 inline __attribute__((always_inline)) void DequantizeRowImpl(DType type,
                                                                           const uint8_t* row,
                                                                           int64_t cols,
                                                                           float* out) {
  switch (type) {
    case DType::kF32:
      std::memcpy(out, row, cols * sizeof(float));
      return;
    case DType::kF16: {
      int64_t c = 0;
      for (; c + 8 <= cols; c += 8) {
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * c));
        _mm256_storeu_ps(out + c, _mm256_cvtph_ps(h));
      }
      if (c < cols) DequantizeRowPortable(type, row + 2 * c, cols - c, out + c);
      return;
    }
    case DType::kBF16: {
      int64_t c = 0;
      for (; c + 8 <= cols; c += 8) {
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * c));
        const __m256i wide = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
        _mm256_storeu_ps(out + c, _mm256_castsi256_ps(wide));
      }
      if (c < cols) DequantizeRowPortable(type, row + 2 * c, cols - c, out + c);
      return;
    }
    case DType::kQ8_0:
      for (int64_t b = 0; b < cols / 32; ++b) {
        const uint8_t* blk = row + b * sizeof(BlockQ8_0);
        const __m256 d = _mm256_set1_ps(HalfScale(blk));
        for (int i = 0; i < 4; ++i) {
          const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + 2 + 8 * i));
          _mm256_storeu_ps(out + 32 * b + 8 * i, _mm256_mul_ps(SignedBytesToFloats(q), d));
        }
      }
      return;
    case DType::kQ4_0:
      for (int64_t b = 0; b < cols / 32; ++b) {
        const uint8_t* blk = row + b * sizeof(BlockQ4_0);
        const float d = HalfScale(blk);
        const __m256 vd = _mm256_set1_ps(d), offset = _mm256_set1_ps(-8.0f * d);
        __m256 f[4];
        NibblesToFloats(blk + 2, f);
        // (q - 8) * d is exact in float, and so is this single-rounding FMA.
        for (int i = 0; i < 4; ++i) {
          _mm256_storeu_ps(out + 32 * b + 8 * i, _mm256_fmadd_ps(f[i], vd, offset));
        }
      }
      return;
    case DType::kQ4_1:
      for (int64_t b = 0; b < cols / 32; ++b) {
        const uint8_t* blk = row + b * sizeof(BlockQ4_1);
        const __m256 vd = _mm256_set1_ps(HalfScale(blk));
        const __m256 vm = _mm256_set1_ps(HalfScale(blk + 2));
        __m256 f[4];
        NibblesToFloats(blk + 4, f);
        for (int i = 0; i < 4; ++i) {
          _mm256_storeu_ps(out + 32 * b + 8 * i, _mm256_fmadd_ps(f[i], vd, vm));
        }
      }
      return;
  }
}

// Eight rows of `src` (row stride ld) starting at column k0, written as columns into
// panel[(k0 + j) * kPanelRows + lane_offset + i].
LONGREAD_AVX2 inline void Transpose8x8ToPanel(const float* src, int64_t ld, int64_t k0,
                                              float* panel, int lane_offset) {
  __m256 r[8], t[8], s[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * ld + k0);
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {
    s[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    s[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    s[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    s[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int j = 0; j < 4; ++j) {
    _mm256_storeu_ps(panel + (k0 + j) * kPanelRows + lane_offset,
                     _mm256_permute2f128_ps(s[j], s[4 + j], 0x20));
    _mm256_storeu_ps(panel + (k0 + 4 + j) * kPanelRows + lane_offset,
                     _mm256_permute2f128_ps(s[j], s[4 + j], 0x31));
  }
}

// Decodes rows [r0, r0 + 16) of w (missing rows as zeros) into panel[K][16], 32 columns at a time
// through a 2 KiB buffer that stays in L1.
template <DType kType>
LONGREAD_AVX2 void PackPanelT(const MatrixView& w, int64_t r0, float* panel) {
  constexpr int kChunk = 32;
  constexpr int64_t kChunkBytes = kChunk / BlockElements(kType) * BlockBytes(kType);
  const int64_t k_dim = w.cols;
  const int valid = static_cast<int>(std::min<int64_t>(kPanelRows, w.rows - r0));
  alignas(32) float tmp[kPanelRows * kChunk];
  if (valid < kPanelRows) std::fill(tmp + valid * kChunk, tmp + kPanelRows * kChunk, 0.0f);
  int64_t c0 = 0;
  for (; c0 + kChunk <= k_dim; c0 += kChunk) {
    const int64_t offset = c0 / kChunk * kChunkBytes;
    for (int rr = 0; rr < valid; ++rr) {
      DequantizeRowImpl(kType, RowPointer(w, r0 + rr) + offset, kChunk, tmp + rr * kChunk);
    }
    float* dst = panel + c0 * kPanelRows;
    for (int k8 = 0; k8 < kChunk; k8 += 8) {
      Transpose8x8ToPanel(tmp, kChunk, k8, dst, 0);
      Transpose8x8ToPanel(tmp + 8 * kChunk, kChunk, k8, dst, 8);
    }
  }
  if (c0 < k_dim) {  // float types only: quantized rows are whole 32-element blocks
    const int64_t rest = k_dim - c0;
    for (int rr = 0; rr < valid; ++rr) {
      DequantizeRowPortable(kType, RowPointer(w, r0 + rr) + c0 * BlockBytes(kType), rest,
                            tmp + rr * kChunk);
    }
    for (int64_t k = 0; k < rest; ++k) {
      for (int rr = 0; rr < kPanelRows; ++rr) {
        panel[(c0 + k) * kPanelRows + rr] = tmp[rr * kChunk + k];
      }
    }
  }
}

void PackPanel(const MatrixView& w, int64_t r0, float* panel) {
  switch (w.type) {
    case DType::kF32:
      return PackPanelT<DType::kF32>(w, r0, panel);
    case DType::kF16:
      return PackPanelT<DType::kF16>(w, r0, panel);
    case DType::kBF16:
      return PackPanelT<DType::kBF16>(w, r0, panel);
    case DType::kQ8_0:
      return PackPanelT<DType::kQ8_0>(w, r0, panel);
    case DType::kQ4_0:
      return PackPanelT<DType::kQ4_0>(w, r0, panel);
    case DType::kQ4_1:
      return PackPanelT<DType::kQ4_1>(w, r0, panel);
  }
}

LONGREAD_AVX2 inline void StoreRow(float* y, __m256 lo, __m256 hi, int valid_rows) {
  if (valid_rows == kPanelRows) {
    _mm256_storeu_ps(y, lo);
    _mm256_storeu_ps(y + 8, hi);
  } else {
    alignas(32) float tmp[kPanelRows];
    _mm256_store_ps(tmp, lo);
    _mm256_store_ps(tmp + 8, hi);
    std::copy(tmp, tmp + valid_rows, y);
  }
}

// The running sums of one token row: zero on the first depth tile, else what the previous depth
// tile stored (exact in float, so splitting k into tiles does not change any result).
LONGREAD_AVX2 inline void LoadRow(const float* y, int valid_rows, bool accumulate, __m256& lo,
                                  __m256& hi) {
  if (!accumulate) {
    lo = hi = _mm256_setzero_ps();
  } else if (valid_rows == kPanelRows) {
    lo = _mm256_loadu_ps(y);
    hi = _mm256_loadu_ps(y + 8);
  } else {
    alignas(32) float tmp[kPanelRows] = {};
    std::copy(y, y + valid_rows, tmp);
    lo = _mm256_load_ps(tmp);
    hi = _mm256_load_ps(tmp + 8);
  }
}

// y[i][0..valid_rows) (+)= panel^T . x[i] over k < k_len for MT <= 6 tokens (x rows ldx apart):
// one FMA chain over k per output. Accumulators are named variables, not an array: GCC spills an
// accumulator array to the stack on every iteration.
template <int MT>
LONGREAD_AVX2 inline void PanelKernel(const float* panel, int64_t k_len, const float* x,
                                      int64_t ldx, float* y, int64_t ldy, int valid_rows,
                                      bool accumulate) {
  static_assert(MT >= 1 && MT <= 6);
  __m256 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
  c10 = c11 = c20 = c21 = c30 = c31 = c40 = c41 = c50 = c51 = _mm256_setzero_ps();
  LoadRow(y, valid_rows, accumulate, c00, c01);
  if constexpr (MT > 1) LoadRow(y + ldy, valid_rows, accumulate, c10, c11);
  if constexpr (MT > 2) LoadRow(y + 2 * ldy, valid_rows, accumulate, c20, c21);
  if constexpr (MT > 3) LoadRow(y + 3 * ldy, valid_rows, accumulate, c30, c31);
  if constexpr (MT > 4) LoadRow(y + 4 * ldy, valid_rows, accumulate, c40, c41);
  if constexpr (MT > 5) LoadRow(y + 5 * ldy, valid_rows, accumulate, c50, c51);
  const float* x0 = x;
  const float* x1 = x + ldx;
  const float* x2 = x + 2 * ldx;
  const float* x3 = x + 3 * ldx;
  const float* x4 = x + 4 * ldx;
  const float* x5 = x + 5 * ldx;
  for (int64_t k = 0; k < k_len; ++k) {
    const __m256 b0 = _mm256_load_ps(panel + k * kPanelRows);
    const __m256 b1 = _mm256_load_ps(panel + k * kPanelRows + 8);
    __m256 a = _mm256_broadcast_ss(x0 + k);
    c00 = _mm256_fmadd_ps(b0, a, c00);
    c01 = _mm256_fmadd_ps(b1, a, c01);
    if constexpr (MT > 1) {
      a = _mm256_broadcast_ss(x1 + k);
      c10 = _mm256_fmadd_ps(b0, a, c10);
      c11 = _mm256_fmadd_ps(b1, a, c11);
    }
    if constexpr (MT > 2) {
      a = _mm256_broadcast_ss(x2 + k);
      c20 = _mm256_fmadd_ps(b0, a, c20);
      c21 = _mm256_fmadd_ps(b1, a, c21);
    }
    if constexpr (MT > 3) {
      a = _mm256_broadcast_ss(x3 + k);
      c30 = _mm256_fmadd_ps(b0, a, c30);
      c31 = _mm256_fmadd_ps(b1, a, c31);
    }
    if constexpr (MT > 4) {
      a = _mm256_broadcast_ss(x4 + k);
      c40 = _mm256_fmadd_ps(b0, a, c40);
      c41 = _mm256_fmadd_ps(b1, a, c41);
    }
    if constexpr (MT > 5) {
      a = _mm256_broadcast_ss(x5 + k);
      c50 = _mm256_fmadd_ps(b0, a, c50);
      c51 = _mm256_fmadd_ps(b1, a, c51);
    }
  }
  StoreRow(y, c00, c01, valid_rows);
  if constexpr (MT > 1) StoreRow(y + ldy, c10, c11, valid_rows);
  if constexpr (MT > 2) StoreRow(y + 2 * ldy, c20, c21, valid_rows);
  if constexpr (MT > 3) StoreRow(y + 3 * ldy, c30, c31, valid_rows);
  if constexpr (MT > 4) StoreRow(y + 4 * ldy, c40, c41, valid_rows);
  if constexpr (MT > 5) StoreRow(y + 5 * ldy, c50, c51, valid_rows);
}

LONGREAD_AVX2 void PanelTokens(const float* panel, int64_t k_len, const float* x, int64_t ldx,
                               int64_t n_tokens, float* y, int64_t ldy, int valid_rows,
                               bool accumulate) {
  int64_t t = 0;
  for (; t + kTokenBlock <= n_tokens; t += kTokenBlock) {
    PanelKernel<kTokenBlock>(panel, k_len, x + t * ldx, ldx, y + t * ldy, ldy, valid_rows,
                             accumulate);
  }
  const float* xt = x + t * ldx;
  float* yt = y + t * ldy;
  switch (n_tokens - t) {
    case 5:
      PanelKernel<5>(panel, k_len, xt, ldx, yt, ldy, valid_rows, accumulate);
      break;
    case 4:
      PanelKernel<4>(panel, k_len, xt, ldx, yt, ldy, valid_rows, accumulate);
      break;
    case 3:
      PanelKernel<3>(panel, k_len, xt, ldx, yt, ldy, valid_rows, accumulate);
      break;
    case 2:
      PanelKernel<2>(panel, k_len, xt, ldx, yt, ldy, valid_rows, accumulate);
      break;
    case 1:
      PanelKernel<1>(panel, k_len, xt, ldx, yt, ldy, valid_rows, accumulate);
      break;
    default:
      break;
  }
}

// Optional cache blocking of the prefill: a group of panels is packed once, then every panel of
// the group runs over each block of token_tile tokens x depth_tile inputs, so that long segments
// could read the activations from L2 instead of from L3 once per panel. Off by default: on the
// 2-core EPYC dev machine (bench/kernels, interleaved A/B runs) 252 x 256 blocks with 1 MiB or
// 256 KiB groups were slower at 512 tokens and mixed at 2048; one packed panel streaming all
// tokens measured best. Results are bit-identical either way (see LoadRow).
PrefillBlocking blocking_setting;

int64_t PanelsPerGroup(int64_t k_dim) {
  return std::max<int64_t>(1, blocking_setting.group_floats / (k_dim * kPanelRows));
}

LONGREAD_AVX2 void PrefillPanels(const MatrixView& w, const float* x, int64_t n_tokens, float* y,
                                 int64_t panel_begin, int64_t panel_end, float* packed) {
  const int64_t k_dim = w.cols;
  const int64_t panel_floats = k_dim * kPanelRows;
  const int64_t group = PanelsPerGroup(k_dim);
  const int64_t token_tile = blocking_setting.token_tile;
  const int64_t depth_tile = blocking_setting.depth_tile;
  for (int64_t g0 = panel_begin; g0 < panel_end; g0 += group) {
    const int64_t g1 = std::min(panel_end, g0 + group);
    for (int64_t p = g0; p < g1; ++p)
      PackPanel(w, p * kPanelRows, packed + (p - g0) * panel_floats);
    for (int64_t t0 = 0; t0 < n_tokens; t0 += token_tile) {
      const int64_t nt = std::min(token_tile, n_tokens - t0);
      for (int64_t k0 = 0; k0 < k_dim; k0 += depth_tile) {
        const int64_t kl = std::min(depth_tile, k_dim - k0);
        for (int64_t p = g0; p < g1; ++p) {
          const int64_t r0 = p * kPanelRows;
          const int valid = static_cast<int>(std::min<int64_t>(kPanelRows, w.rows - r0));
          PanelTokens(packed + (p - g0) * panel_floats + k0 * kPanelRows, kl, x + t0 * k_dim + k0,
                      k_dim, nt, y + t0 * w.rows + r0, w.rows, valid,
                      /*accumulate=*/k0 > 0);
        }
      }
    }
  }
}

// ---- decode: fused decode-and-dot per row ----

LONGREAD_AVX2 float DotF32(const float* w, const float* x, int64_t n) {
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
  int64_t c = 0;
  for (; c + 32 <= n; c += 32) {
    for (int i = 0; i < 4; ++i) {
      acc[i] =
          _mm256_fmadd_ps(_mm256_loadu_ps(w + c + 8 * i), _mm256_loadu_ps(x + c + 8 * i), acc[i]);
    }
  }
  for (; c + 8 <= n; c += 8) {
    acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(w + c), _mm256_loadu_ps(x + c), acc[0]);
  }
  float sum =
      HorizontalSum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
  for (; c < n; ++c) sum += w[c] * x[c];
  return sum;
}

// F16 and BF16: widen 8 raw 16-bit values at a time.
template <bool kBf16>
LONGREAD_AVX2 inline __m256 WidenHalf(const uint8_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  if constexpr (kBf16) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    return _mm256_cvtph_ps(h);
  }
}

template <bool kBf16>
LONGREAD_AVX2 float DotHalf(const uint8_t* w, const float* x, int64_t n) {
  __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
  int64_t c = 0;
  for (; c + 16 <= n; c += 16) {
    acc[0] = _mm256_fmadd_ps(WidenHalf<kBf16>(w + 2 * c), _mm256_loadu_ps(x + c), acc[0]);
    acc[1] = _mm256_fmadd_ps(WidenHalf<kBf16>(w + 2 * c + 16), _mm256_loadu_ps(x + c + 8), acc[1]);
  }
  for (; c + 8 <= n; c += 8) {
    acc[0] = _mm256_fmadd_ps(WidenHalf<kBf16>(w + 2 * c), _mm256_loadu_ps(x + c), acc[0]);
  }
  float sum = HorizontalSum(_mm256_add_ps(acc[0], acc[1]));
  for (; c < n; ++c) {
    uint16_t h;
    std::memcpy(&h, w + 2 * c, 2);
    sum += (kBf16 ? BFloat16ToFloat(h) : HalfToFloat(h)) * x[c];
  }
  return sum;
}

// sum_i q_i x_i over one Q8_0 block, in float.
LONGREAD_AVX2 inline __m256 BlockDotQ8(const uint8_t* qs, const float* xb) {
  __m256 s =
      _mm256_mul_ps(SignedBytesToFloats(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(qs))),
                    _mm256_loadu_ps(xb));
  for (int i = 1; i < 4; ++i) {
    const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(qs + 8 * i));
    s = _mm256_fmadd_ps(SignedBytesToFloats(q), _mm256_loadu_ps(xb + 8 * i), s);
  }
  return s;
}

// Two blocks per iteration into two accumulators: the scale FMAs of consecutive blocks do not
// wait for each other.
LONGREAD_AVX2 float DotQ8_0(const uint8_t* w, const float* x, int64_t n) {
  __m256 total0 = _mm256_setzero_ps(), total1 = _mm256_setzero_ps();
  const int64_t n_blocks = n / 32;
  int64_t b = 0;
  for (; b + 2 <= n_blocks; b += 2) {
    const uint8_t* blk = w + b * sizeof(BlockQ8_0);
    total0 =
        _mm256_fmadd_ps(BlockDotQ8(blk + 2, x + 32 * b), _mm256_set1_ps(HalfScale(blk)), total0);
    blk += sizeof(BlockQ8_0);
    total1 = _mm256_fmadd_ps(BlockDotQ8(blk + 2, x + 32 * b + 32), _mm256_set1_ps(HalfScale(blk)),
                             total1);
  }
  if (b < n_blocks) {
    const uint8_t* blk = w + b * sizeof(BlockQ8_0);
    total0 =
        _mm256_fmadd_ps(BlockDotQ8(blk + 2, x + 32 * b), _mm256_set1_ps(HalfScale(blk)), total0);
  }
  return HorizontalSum(_mm256_add_ps(total0, total1));
}

// Q4_0: sum (q-8) d x = d * sum q x + (-8 d) * sum x.
// Q4_1: sum (q d + m) x = d * sum q x + m * sum x.
// sum x per block (x_sums) is computed once per call and shared by all rows.
template <bool kHasMin>
LONGREAD_AVX2 inline void BlockDotQ4(const uint8_t* blk, const float* xb, float x_sum,
                                     __m256& total_q, float& total_m) {
  constexpr int kQsOffset = kHasMin ? 4 : 2;
  __m256 f[4];
  NibblesToFloats(blk + kQsOffset, f);
  __m256 sq = _mm256_mul_ps(f[0], _mm256_loadu_ps(xb));
  sq = _mm256_fmadd_ps(f[1], _mm256_loadu_ps(xb + 8), sq);
  sq = _mm256_fmadd_ps(f[2], _mm256_loadu_ps(xb + 16), sq);
  sq = _mm256_fmadd_ps(f[3], _mm256_loadu_ps(xb + 24), sq);
  const float d = HalfScale(blk);
  const float m = kHasMin ? HalfScale(blk + 2) : -8.0f * d;
  total_q = _mm256_fmadd_ps(sq, _mm256_set1_ps(d), total_q);
  total_m += m * x_sum;
}

template <bool kHasMin>
LONGREAD_AVX2 float DotQ4(const uint8_t* w, const float* x, const float* x_sums, int64_t n) {
  constexpr int64_t kBlockBytes = kHasMin ? sizeof(BlockQ4_1) : sizeof(BlockQ4_0);
  __m256 q0 = _mm256_setzero_ps(), q1 = q0;
  float m0 = 0, m1 = 0;
  const int64_t n_blocks = n / 32;
  int64_t b = 0;
  for (; b + 2 <= n_blocks; b += 2) {
    BlockDotQ4<kHasMin>(w + b * kBlockBytes, x + 32 * b, x_sums[b], q0, m0);
    BlockDotQ4<kHasMin>(w + (b + 1) * kBlockBytes, x + 32 * b + 32, x_sums[b + 1], q1, m1);
  }
  if (b < n_blocks) BlockDotQ4<kHasMin>(w + b * kBlockBytes, x + 32 * b, x_sums[b], q0, m0);
  return HorizontalSum(_mm256_add_ps(q0, q1)) + (m0 + m1);
}

// x_sums[t][b] = sum of x[t][32b .. 32b+32).
LONGREAD_AVX2 void BlockSums(const float* x, int64_t n_tokens, int64_t cols, float* x_sums) {
  const int64_t n_blocks = cols / 32;
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int64_t b = 0; b < n_blocks; ++b) {
      const float* xb = x + t * cols + 32 * b;
      const __m256 s =
          _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(xb), _mm256_loadu_ps(xb + 8)),
                        _mm256_add_ps(_mm256_loadu_ps(xb + 16), _mm256_loadu_ps(xb + 24)));
      x_sums[t * n_blocks + b] = HorizontalSum(s);
    }
  }
}

LONGREAD_AVX2 void DecodeRows(const MatrixView& w, const float* x, const float* x_sums,
                              int64_t n_tokens, float* y, int64_t row_begin, int64_t row_end) {
  for (int64_t r = row_begin; r < row_end; ++r) {
    const uint8_t* row = RowPointer(w, r);
    for (int64_t t = 0; t < n_tokens; ++t) {
      const float* xt = x + t * w.cols;
      const float* xt_sums = x_sums + t * (w.cols / 32);
      float v = 0;
      switch (w.type) {
        case DType::kF32:
          v = DotF32(reinterpret_cast<const float*>(row), xt, w.cols);
          break;
        case DType::kF16:
          v = DotHalf<false>(row, xt, w.cols);
          break;
        case DType::kBF16:
          v = DotHalf<true>(row, xt, w.cols);
          break;
        case DType::kQ8_0:
          v = DotQ8_0(row, xt, w.cols);
          break;
        case DType::kQ4_0:
          v = DotQ4<false>(row, xt, xt_sums, w.cols);
          break;
        case DType::kQ4_1:
          v = DotQ4<true>(row, xt, xt_sums, w.cols);
          break;
      }
      y[t * w.rows + r] = v;
    }
  }
}

}  // namespace

void SetPrefillBlocking(const PrefillBlocking& blocking) {
  blocking_setting = blocking;
  if (blocking_setting.token_tile < 1) blocking_setting.token_tile = PrefillBlocking{}.token_tile;
  if (blocking_setting.depth_tile < 1) blocking_setting.depth_tile = PrefillBlocking{}.depth_tile;
}

LONGREAD_AVX2 void DequantizeRowAvx2(DType type, const uint8_t* row, int64_t cols, float* out) {
  DequantizeRowImpl(type, row, cols, out);
}

void MatMulAvx2(const MatrixView& w, const float* x, int64_t n_tokens, float* y, ThreadPool* pool,
                DecodeActivations activations) {
  if (n_tokens <= kInt8MaxTokens && activations == DecodeActivations::kInt8 && HasInt8Dot(w.type)) {
    const Int8Activations act = QuantizeActivations(x, n_tokens, w.cols, &QuantizeRowQ8Avx2);
    auto rows = [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        for (int64_t t = 0; t < n_tokens; ++t) {
          y[t * w.rows + r] =
              DotInt8Avx2(w.type, RowPointer(w, r), act.q + t * w.cols, act.d + t * (w.cols / 32),
                          act.sum + t * (w.cols / 32), w.cols);
        }
      }
    };
    if (pool == nullptr) {
      rows(0, w.rows);
    } else {
      pool->ParallelFor(w.rows, rows);
    }
    return;
  }
  if (n_tokens <= kInt8MaxTokens && activations == DecodeActivations::kInt16 &&
      HasInt8Dot(w.type)) {
    const Int16Activations act = QuantizeActivations16(x, n_tokens, w.cols, &QuantizeRowQ16Avx2);
    auto rows = [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        for (int64_t t = 0; t < n_tokens; ++t) {
          y[t * w.rows + r] =
              DotInt16Avx2(w.type, RowPointer(w, r), act.q + t * w.cols, act.d + t * (w.cols / 32),
                           act.sum + t * (w.cols / 32), w.cols);
        }
      }
    };
    if (pool == nullptr) {
      rows(0, w.rows);
    } else {
      pool->ParallelFor(w.rows, rows);
    }
    return;
  }
  if (n_tokens <= kDecodeMaxTokens) {
    // Block sums of x for the Q4 dots, in the caller's scratch (workers only read them).
    thread_local std::vector<float> x_sums;
    const int64_t n_sums = n_tokens * (w.cols / 32);
    if (static_cast<int64_t>(x_sums.size()) < n_sums) x_sums.resize(n_sums);
    if (w.type == DType::kQ4_0 || w.type == DType::kQ4_1) {
      BlockSums(x, n_tokens, w.cols, x_sums.data());
    }
    const float* sums = x_sums.data();
    auto rows = [&](int64_t begin, int64_t end) {
      DecodeRows(w, x, sums, n_tokens, y, begin, end);
    };
    if (pool == nullptr) {
      rows(0, w.rows);
    } else {
      pool->ParallelFor(w.rows, rows);
    }
    return;
  }
  const int64_t n_panels = (w.rows + kPanelRows - 1) / kPanelRows;
  auto panels = [&](int64_t begin, int64_t end) {
    // This thread's 32-byte aligned group of packed panels [group][K][16].
    float* packed = ThreadScratch(PanelsPerGroup(w.cols) * w.cols * kPanelRows + 8);
    packed += (8 - (reinterpret_cast<uintptr_t>(packed) / sizeof(float)) % 8) % 8;
    PrefillPanels(w, x, n_tokens, y, begin, end, packed);
  };
  if (pool == nullptr) {
    panels(0, n_panels);
  } else {
    pool->ParallelFor(n_panels, panels);
  }
}

}  // namespace longread::kernels::cpu
