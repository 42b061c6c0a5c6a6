// Shared between the kernels/cpu/ translation units: block layouts of the GGUF quantized types,
// the runtime ISA choice, and the AVX2 entry points (defined in *_avx2.cc, compiled per function
// with target attributes so the library runs on any x86-64).
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/attention.h"
#include "kernels/dtype.h"
#include "kernels/half.h"
#include "kernels/ops.h"
#include "kernels/thread_pool.h"

namespace longread::kernels::cpu {

// GGUF block layouts (32 elements each). Nibble order: low nibbles = elements 0..15, high
// nibbles = elements 16..31.
struct BlockQ4_0 {
  uint16_t d;  // f16 scale; value = (nibble - 8) * d
  uint8_t qs[16];
};
struct BlockQ4_1 {
  uint16_t d;  // f16 scale; value = nibble * d + m
  uint16_t m;  // f16 offset
  uint8_t qs[16];
};
struct BlockQ8_0 {
  uint16_t d;  // f16 scale; value = q * d
  int8_t qs[32];
};
static_assert(sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20 && sizeof(BlockQ8_0) == 34);

template <typename Block>
inline Block LoadBlock(const uint8_t* p) {
  Block b;
  std::memcpy(&b, p, sizeof(Block));
  return b;
}

inline const uint8_t* RowPointer(const MatrixView& w, int64_t row) {
  return static_cast<const uint8_t*>(w.data) + row * w.row_bytes();
}

// Decodes `cols` elements of one row in any DType; the portable path and the reference share it.
void DequantizeRowPortable(DType type, const uint8_t* row, int64_t cols, float* out);

// True when the CPU has AVX2, FMA and F16C and the portable path is not forced.
bool UseAvx2();
// Tests and benches: force the portable path (false restores runtime detection).
void ForcePortable(bool force);
// The hardware answer alone, ignoring ForcePortable.
bool CpuHasAvx2Fma();

// Portable fast-path pieces (plain C++, any CPU).
// `activations` is resolved (never kDefault).
void MatMulPortable(const MatrixView& w, const float* x, int64_t n_tokens, float* y,
                    ThreadPool* pool, DecodeActivations activations);

// Cache blocking of the AVX2 prefill (see matmul_avx2.cc). The defaults disable it (one panel,
// all tokens, full depth); tests and benches turn it on to check and measure it. Not thread-safe:
// set it while no MatMul runs.
struct PrefillBlocking {
  int64_t token_tile = int64_t{1} << 40;
  int64_t depth_tile = int64_t{1} << 40;
  int64_t group_floats = 0;  // packed fp32 weights per group; a group holds at least one panel
};
void SetPrefillBlocking(const PrefillBlocking& blocking);

// 8-bit activations for the decode matvec (see kernels/ops.h, DecodeActivations): the process
// default, unless LONGREAD_INT8_ACTIVATIONS says otherwise.
inline constexpr bool kInt8ActivationsDefault = false;
bool UseInt8Activations();
// Q4_0, Q4_1 and Q8_0 have an integer dot against 8-bit activations.
bool HasInt8Dot(DType type);
// Quantizes cols (a multiple of 32) floats: per block b of 32, d[b] = max|x| / 127,
// q = round-to-nearest-even(x / d[b]) (0 when the block is all zero), sum[b] = the block's fp32
// sum (exact inputs for the Q4 offset terms). The AVX2 twin gives bit-identical output.
void QuantizeRowQ8Portable(const float* x, int64_t cols, int8_t* q, float* d, float* sum);
void QuantizeRowQ8Avx2(const float* x, int64_t cols, int8_t* q, float* d, float* sum);
// sum_c w[c] * x[c] with x as quantized above, w one row of a HasInt8Dot type:
// per block dw * d[b] * sum(qw * q) + offset * sum[b] (offset = min for Q4_1, -8 dw for Q4_0).
float DotInt8Portable(DType type, const uint8_t* w, const int8_t* q, const float* d,
                      const float* sum, int64_t cols);
float DotInt8Avx2(DType type, const uint8_t* w, const int8_t* q, const float* d, const float* sum,
                  int64_t cols);

// The same with 16-bit activations (scale max|x| / 32767) and integer madd_epi16 dots; off by
// default (kernels/ops.h says why).
inline constexpr bool kInt16ActivationsDefault = false;
bool UseInt16Activations();
void QuantizeRowQ16Portable(const float* x, int64_t cols, int16_t* q, float* d, float* sum);
void QuantizeRowQ16Avx2(const float* x, int64_t cols, int16_t* q, float* d, float* sum);
float DotInt16Portable(DType type, const uint8_t* w, const int16_t* q, const float* d,
                       const float* sum, int64_t cols);
float DotInt16Avx2(DType type, const uint8_t* w, const int16_t* q, const float* d, const float* sum,
                   int64_t cols);

// The decode regime (MatMul with this many tokens or fewer) is where 8-bit activations apply.
inline constexpr int64_t kInt8MaxTokens = 3;
// x quantized per token row (n_tokens x cols) in the calling thread's scratch.
struct Int8Activations {
  const int8_t* q;
  const float* d;
  const float* sum;
};
Int8Activations QuantizeActivations(const float* x, int64_t n_tokens, int64_t cols,
                                    void (*quantize)(const float*, int64_t, int8_t*, float*,
                                                     float*));
struct Int16Activations {
  const int16_t* q;
  const float* d;
  const float* sum;
};
Int16Activations QuantizeActivations16(const float* x, int64_t n_tokens, int64_t cols,
                                       void (*quantize)(const float*, int64_t, int16_t*, float*,
                                                        float*));

// AVX2 pieces; callers must check UseAvx2() first.
void MatMulAvx2(const MatrixView& w, const float* x, int64_t n_tokens, float* y, ThreadPool* pool,
                DecodeActivations activations);
void DequantizeRowAvx2(DType type, const uint8_t* row, int64_t cols, float* out);
void SiluMulAvx2(const float* gate, const float* up, int64_t n, float* out);

// Inner steps of the tiled attention, one set per ISA. Layouts: q_tile [rows][head_dim] (already
// scaled), kt [head_dim][kKeyTile] (keys transposed, 32-byte aligned), scores/p
// [rows][kKeyTile] (32-byte aligned), acc [rows][head_dim], keys and values [n][head_dim].
inline constexpr int kKeyTile = 64;
struct AttentionSteps {
  // kt[d][j] = k[j][d] for j < n, 0 for n <= j < kKeyTile.
  void (*transpose_keys)(const float* k, int64_t n, int64_t head_dim, float* kt);
  // scores[r][j] = sum_d q_tile[r][d] * kt[d][j] for j < kKeyTile.
  void (*scores)(const float* q_tile, int64_t rows, const float* kt, int64_t head_dim,
                 float* scores);
  // Online-softmax update of one row: with m = max(*row_max, max_j s[j]), s[j] becomes
  // exp(s[j] - m) (exactly 0 where s[j] = -inf), *row_sum = *row_sum * c + sum_j s[j] and
  // *row_max = m. Returns the correction c = exp(old max - m) that the row's accumulator needs,
  // or a negative value (and leaves everything unchanged) when the whole row is -inf.
  float (*softmax_row)(float* s, float* row_max, float* row_sum);
  // acc[r][d] += sum_{j<n} p[r][j] * v[j][d] for r < rows.
  void (*accumulate)(const float* p, int64_t rows, const float* v, int64_t n, int64_t head_dim,
                     float* acc);
};
const AttentionSteps& PortableAttentionSteps();
const AttentionSteps& Avx2AttentionSteps();

}  // namespace longread::kernels::cpu
