// The dense CPU ops of a Llama-family forward pass, over row-major fp32 activations and weights
// stored in their file encoding (MatrixView). Implemented in kernels/cpu/ (AVX2/FMA with runtime
// dispatch and a portable fallback); kernels/reference.h holds the plain-loop references that the
// tests compare against. `pool` may be null (single-threaded). Results do not depend on the
// number of threads (work is split by output rows/tiles, never inside one dot product).
#pragma once

#include <cstdint>

#include "kernels/dtype.h"
#include "kernels/thread_pool.h"

namespace longread::kernels {

// How decode (MatMul with at most 3 tokens) on Q4_0/Q4_1/Q8_0 weights treats x; prefill always
// uses fp32. A caller's choice (engine::CpuBackendOptions: one per backend, since one worker
// serves many documents), not a process-wide switch.
// - kInt8: x quantized to 8-bit blocks of 32 (one fp32 scale each, round to nearest) and integer
//   dot products, as llama.cpp does: at most half a step (1/254 of a block's max |x|) per
//   element, which the unit tests bound. With it the HF oracle's 64-token greedy continuations
//   diverge after a few tokens (tests/engine/model/oracle_test), so it is not the default.
// - kInt16: 16-bit activations (scale max|x| / 32767 per block of 32, madd_epi16 dots): at most
//   1/65534 of a block's max |x| per element. The oracle test passes with it (greedy
//   continuations included), but blocks holding an outlier channel lose precision in their other
//   elements: decoding token by token then differs from a prefill of the same tokens by ~8e-4 of
//   the max logit (tests/engine/memory/sparsek_memory_test expects 1e-5), so it is off by default
//   too.
// - kFloat32: fp32 dots on the dequantized blocks.
// - kDefault: the process default: kInt8 with LONGREAD_INT8_ACTIVATIONS=1, else kInt16 with
//   LONGREAD_INT16_ACTIVATIONS=1 (or SetInt16Activations(true)), else kFloat32.
enum class DecodeActivations { kDefault, kFloat32, kInt16, kInt8 };

// y[t][r] = sum_c W[r][c] * x[t][c] for t < n_tokens, r < w.rows.
// x: n_tokens x w.cols, y: n_tokens x w.rows (row-major fp32). y must not alias x.
void MatMul(const MatrixView& w, const float* x, int64_t n_tokens, float* y, ThreadPool* pool,
            DecodeActivations activations = DecodeActivations::kDefault);

// kDefault resolved: what MatMul uses when given kDefault.
DecodeActivations DefaultDecodeActivations();
// Sets whether the process default uses 16-bit activations (tests). Not thread-safe: set it
// while no MatMul runs.
void SetInt16Activations(bool enabled);
bool Int16ActivationsEnabled();

// out: w.cols floats, row `row` of w decoded to fp32 (embedding lookup).
void DequantizeRow(const MatrixView& w, int64_t row, float* out);

// out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * weight. out may alias x.
void RmsNorm(const float* x, const float* weight, int64_t n_tokens, int64_t dim, float eps,
             float* out);

enum class RopeStyle {
  kInterleaved,  // rotates pairs (2i, 2i+1) (GGUF llama: Q/K rows already permuted for this)
  kHalf,         // rotates pairs (i, i + head_dim/2) (NeoX / HF layout)
};

// In place on x[t][h][0..head_dim), angle = positions[t] * theta^(-2i/head_dim) for pair i.
// Angles are computed in double, so large positions keep full fp32 accuracy.
void Rope(float* x, int64_t n_tokens, int64_t n_heads, int64_t head_dim, const int64_t* positions,
          float theta, RopeStyle style);

// out = silu(gate) * up, silu(g) = g / (1 + exp(-g)). out may alias gate or up.
void SiluMul(const float* gate, const float* up, int64_t n, float* out);

// out = a + b. out may alias a or b.
void Add(const float* a, const float* b, int64_t n, float* out);

}  // namespace longread::kernels
