// The kernel launchers of the .cu files: plain C++ over device pointers, returning the launch's
// cudaError_t. nvcc compiles only the .cu files behind this header (no Abseil there, and fast
// builds); the .cc files wrap these into the checked, Status-returning API of cuda_ops.h.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

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
// keys [G][capacity][d] rotated at key_positions [G][n_keys] into rotated (same layout), for
// key < n_keys; q [n_q][n_heads][d] rotated in place at query_positions [n_q][G].
struct RopeMemoryLaunch {
  const uint16_t* keys;
  uint16_t* rotated;
  const int64_t* key_positions;
  int64_t n_kv_heads, n_keys, capacity;
  uint16_t* q;
  const int64_t* query_positions;
  int64_t n_q, n_heads, head_dim;
  double theta;
  bool interleaved;
};
cudaError_t RopeMemory(const RopeMemoryLaunch& a, cudaStream_t stream);
cudaError_t ScatterHeads(const uint16_t* src, int64_t n_tokens, int64_t n_heads, int64_t head_dim,
                         int64_t capacity, int64_t slot0, uint16_t* dst, cudaStream_t stream);
cudaError_t CopyRows(const uint16_t* src, const int32_t* src_rows, uint16_t* dst,
                     const int32_t* dst_rows, int64_t n_rows, int64_t row_elems,
                     cudaStream_t stream);
cudaError_t SiluMul(const uint16_t* gate, const uint16_t* up, int64_t n, uint16_t* out,
                    cudaStream_t stream);
cudaError_t ArgMax(const float* logits, int64_t n_rows, int64_t vocab, int32_t* out,
                   cudaStream_t stream);
cudaError_t FloatToBf16(const float* in, int64_t n, uint16_t* out, cudaStream_t stream);
cudaError_t Bf16ToFloat(const uint16_t* in, int64_t n, float* out, cudaStream_t stream);

// The SparseK memory's task term (task.cu): scratch logits [n_kv][rows][n], lse [n_kv][rows]
// (rows = n_task * n_heads / n_kv_heads); the term is added to scores [n][n_kv].
struct TaskTermLaunch {
  const float* task_queries;  // [n_task][n_heads][head_dim]
  const uint16_t* k;          // [n][n_kv_heads][head_dim] bf16
  int64_t n, n_task, n_heads, n_kv_heads, head_dim;
  bool max_dot;
  float weight, inv_sqrt_d, log_uniform;
  float* logits;
  float* lse;
  float* scores;
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

// The attention's key ordering (key_order.cu): OrderKeys writes each KV head's clamped
// intervals (from, length = until - from, 0 if never visible) and K, V rows in bucket order;
// ClampIntervals writes the intervals only, in key order. counts: KeyOrderCounts ints.
inline constexpr int kKeyOrderBuckets = 512;
struct KeyOrderLaunch {
  const int32_t* from;
  const int32_t* until;
  const uint16_t* k;
  const uint16_t* v;
  int64_t kv_stride, n_q, n_keys, n_kv_heads;
  int32_t* ordered_from;
  uint32_t* ordered_length;
  uint16_t* ordered_k;  // [n_kv_heads][n_keys][64]
  uint16_t* ordered_v;
  int32_t* counts;
};
int64_t KeyOrderCounts(int64_t n_kv_heads, int64_t n_keys);
cudaError_t OrderKeys(const KeyOrderLaunch& a, cudaStream_t stream);
cudaError_t ClampIntervals(const KeyOrderLaunch& a, cudaStream_t stream);

// Attention (head_dim 64). `bounds` is scratch of AttentionBoundsBytes(n_kv_heads, n_keys).
inline constexpr int kDefaultAttentionVariant = 3;
inline constexpr int kAttentionVariants = 7;
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
  // The kernel's build (all: 4 warps of 16 rows, 64-key tiles, exp2 without range fix-up;
  // bench/gpu/NOTES.md, v5): 0 = v3, keys in memory order; 1 = keys ordered by interval
  // (key_order.cu), lazy rescale; 2 = 1 with the mask by branch, registers capped for 3 blocks
  // per SM; 3 = 2 with row sums by an MMA against ones; 4 = 3 with keys in memory order; 5 = 3
  // with the next tile's Q K^T issued before this tile's softmax (three stages); 6 = 3
  // with persistent blocks taking row tiles from a counter. The benchmark times all.
  int variant = kDefaultAttentionVariant;
};
cudaError_t Attention(const AttentionLaunch& a, cudaStream_t stream);

}  // namespace longread::kernels::cuda::launch
