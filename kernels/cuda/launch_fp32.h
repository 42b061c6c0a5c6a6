// The launchers of fp32.cu: the fp32 verification mode's kernels (cuda_ops_fp32.h), plain C++
// over device pointers as in launch.h.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/dtype.h"

namespace longread::kernels::cuda::launch {

cudaError_t DequantizeF32(DType type, const uint8_t* src, int64_t rows, int64_t cols, float* dst,
                          cudaStream_t stream);
cudaError_t EmbeddingF32(const float* table, int64_t vocab, int64_t dim, const int32_t* tokens,
                         int64_t n_tokens, float* out, cudaStream_t stream);
cudaError_t AddRmsNormF32(float* residual, const float* delta, const float* weight,
                          int64_t n_tokens, int64_t dim, float eps, float* out,
                          cudaStream_t stream);
cudaError_t AddResidualF32(float* residual, const float* delta, int64_t n, cudaStream_t stream);
cudaError_t RopeF32(float* x, int64_t n_tokens, int64_t n_heads, int64_t head_dim,
                    const int64_t* positions, double theta, bool interleaved, cudaStream_t stream);
cudaError_t ScatterHeadsF32(const float* src, int64_t n_tokens, int64_t n_heads, int64_t head_dim,
                            int64_t capacity, int64_t slot0, float* dst, cudaStream_t stream);
cudaError_t SiluMulF32(const float* gate, const float* up, int64_t n, float* out,
                       cudaStream_t stream);

inline constexpr int64_t kMaxAttentionF32HeadDim = 128;
struct AttentionF32Launch {
  const float* q;
  const float* k;
  const float* v;
  const int32_t* from;
  const int32_t* until;
  float* out;
  int64_t n_q, n_keys, n_heads, n_kv_heads, head_dim, kv_stride;
  float scale;
};
cudaError_t AttentionF32(const AttentionF32Launch& a, cudaStream_t stream);

}  // namespace longread::kernels::cuda::launch
