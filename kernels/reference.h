// Plain-loop reference implementations of kernels/ops.h and kernels/attention.h: obviously
// correct, slow, accumulating in double. The fast CPU path and any accelerator twin are tested
// against these.
#pragma once

#include <cstdint>

#include "kernels/attention.h"
#include "kernels/dtype.h"
#include "kernels/ops.h"

namespace longread::kernels::ref {

// Decodes one element-exact row (scales widened from f16, value = q*d (+ m) in float).
void DequantizeRow(const MatrixView& w, int64_t row, float* out);
void MatMul(const MatrixView& w, const float* x, int64_t n_tokens, float* y);
void RmsNorm(const float* x, const float* weight, int64_t n_tokens, int64_t dim, float eps,
             float* out);
void Rope(float* x, int64_t n_tokens, int64_t n_heads, int64_t head_dim, const int64_t* positions,
          float theta, RopeStyle style);
void SiluMul(const float* gate, const float* up, int64_t n, float* out);
void Add(const float* a, const float* b, int64_t n, float* out);
void Attention(const AttentionArgs& args);

}  // namespace longread::kernels::ref
