// The kernel launchers of the .cu files: plain C++ over device pointers, returning the launch's
// cudaError_t. nvcc compiles only the .cu files behind this header (no Abseil there, and fast
// builds); the .cc files wrap these into the checked, Status-returning API of cuda_ops.h.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/sample_args.h"
#include "kernels/cuda/select_args.h"
#include "kernels/dtype.h"

namespace longread::kernels::cuda::launch {

// bf16 values travel as their bits.
cudaError_t Dequantize(DType type, const uint8_t* src, int64_t rows, int64_t cols, uint16_t* dst,
                       cudaStream_t stream);
cudaError_t Embedding(const uint16_t* table, int64_t vocab, int64_t dim, const int32_t* tokens,
                      int64_t n_tokens, float* out, cudaStream_t stream);
cudaError_t AddRmsNorm(float* residual, const uint16_t* delta, const float* weight,
                       int64_t n_tokens, int64_t dim, float eps, uint16_t* out,
                       cudaStream_t stream);
cudaError_t AddResidual(float* residual, const uint16_t* delta, int64_t n, cudaStream_t stream);
cudaError_t Rope(uint16_t* x, int64_t n_outer, int64_t n_tokens, int64_t n_heads, int64_t head_dim,
                 const int64_t* positions, double theta, bool interleaved, cudaStream_t stream);
inline constexpr int64_t kMaxRopeHeadDim = 512;
cudaError_t ScatterHeads(const uint16_t* src, int64_t n_tokens, int64_t n_heads, int64_t head_dim,
                         int64_t capacity, int64_t slot0, uint16_t* dst, cudaStream_t stream);
cudaError_t CopyRows(const uint16_t* src, const int32_t* src_rows, uint16_t* dst,
                     const int32_t* dst_rows, int64_t n_rows, int64_t row_elems,
                     cudaStream_t stream);
cudaError_t SiluMul(const uint16_t* gate, const uint16_t* up, int64_t n, uint16_t* out,
                    cudaStream_t stream);
cudaError_t ArgMax(const float* logits, int64_t n_rows, int64_t vocab, int32_t* out,
                   cudaStream_t stream);
cudaError_t SampleToken(const SampleArgs& args, cudaStream_t stream);  // sample.cu
cudaError_t FloatToBf16(const float* in, int64_t n, uint16_t* out, cudaStream_t stream);
cudaError_t Bf16ToFloat(const uint16_t* in, int64_t n, float* out, cudaStream_t stream);

// The SparseK memory's task term (task.cu): scratch logits [n_kv][rows][n], lse [n_kv][rows]
// (rows = n_task * n_heads / n_kv_heads); out [n][n_kv] receives the term to add to the scores.
struct TaskTermLaunch {
  const float* task_queries;  // [n_task][n_heads][head_dim]
  const uint16_t* k;          // [n][n_kv_heads][head_dim] bf16
  int64_t n, n_task, n_heads, n_kv_heads, head_dim;
  bool max_dot;
  float weight, inv_sqrt_d, log_uniform;
  float* logits;
  float* lse;
  float* out;
};
cudaError_t TaskTerm(const TaskTermLaunch& a, cudaStream_t stream);
cudaError_t LinearScores(const float* w, const float* b, const float* slope, const uint16_t* x,
                         int64_t n, int64_t heads, int64_t d, int64_t first_position, float* out,
                         cudaStream_t stream);

// The memory's block selection and what moves around it (select.cu; select_args.h).
cudaError_t SelectSegment(const SelectArgs& a, cudaStream_t stream);
cudaError_t MoveKeptAndEvicted(const MoveRowsArgs& a, cudaStream_t stream);
cudaError_t AppendSegment(const uint16_t* k, const uint16_t* v, const int32_t* counts, int64_t n,
                          int64_t n_kv_heads, int64_t row_elems, int64_t capacity, uint16_t* keys,
                          uint16_t* values, cudaStream_t stream);
cudaError_t CopyEvicted(const EvictedCopyArgs& a, cudaStream_t stream);
cudaError_t AddFloats(float* dst, const float* src, int64_t n, cudaStream_t stream);

// Attention (head_dim 64). `bounds` is scratch of AttentionBoundsBytes(n_kv_heads, n_keys).
inline constexpr int kDefaultAttentionVariant = 0;
inline constexpr int kAttentionVariants = 4;
int64_t AttentionBoundsBytes(int64_t n_kv_heads, int64_t n_keys);
struct AttentionLaunch {
  const uint16_t* q;
  const uint16_t* k;
  const uint16_t* v;
  const int32_t* from;
  const int32_t* until;
  uint16_t* out;
  int64_t n_q, n_keys, n_heads, n_kv_heads;
  int64_t kv_stride;  // keys between two KV heads' first keys in k and v (>= n_keys)
  float scale;
  void* bounds;
  // Key tile and register cap (all: 4 warps, 64 rows): 0 = 64 keys, no cap; 1 = 64 keys, 4
  // blocks per SM; 2 = 32 keys, no cap; 3 = 32 keys, 4 blocks per SM. The benchmark times all.
  // (128-row tiles of 8 warps measured slower: bench/gpu/NOTES.md.)
  int variant = kDefaultAttentionVariant;
};
cudaError_t Attention(const AttentionLaunch& a, cudaStream_t stream);

}  // namespace longread::kernels::cuda::launch
