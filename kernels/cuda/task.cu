// The task term of the SparseK memory's key scores (engine/memory/sparsek_memory.h AddTaskTerm)
// on the device. Every sum runs in the host code's order with explicit rounding (no FMA
// contraction, double sums of double exps), so the scores equal the host's up to the last bit
// of exp/log, and both memories select the same blocks. The work is tiny (tens of task rows x
// one segment); what matters is that the segment's keys never leave the device for it.
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>

#include "kernels/cuda/launch.h"

namespace longread::kernels::cuda::launch {
namespace {

constexpr int kThreads = 256;
unsigned Blocks(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

// logits[g][r][j] = (q_r . k_j) * inv_sqrt_d, r = (task token t, query head h of group g).
__global__ void TaskLogitsKernel(const float* tq, const uint16_t* k, int64_t n, int64_t n_task,
                                 int64_t n_heads, int64_t n_kv, int64_t d, float inv_sqrt_d,
                                 float* logits) {
  const int64_t group = n_heads / n_kv, rows = n_task * group;
  const int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (idx >= n_kv * rows * n) return;
  const int64_t j = idx % n, r = (idx / n) % rows, g = idx / (n * rows);
  const int64_t t = r / group, h = r % group;
  const float* q = tq + (t * n_heads + g * group + h) * d;
  const uint16_t* key = k + (j * n_kv + g) * d;
  float dot = 0.0f;
  int64_t e = 0;
  // 16-byte loads (8 keys' bf16, 2 x 4 query floats) where the rows allow; the sum's order and
  // rounding are the same either way.
  if (d % 8 == 0 && reinterpret_cast<uintptr_t>(key) % 16 == 0 &&
      reinterpret_cast<uintptr_t>(q) % 16 == 0) {
    for (; e < d; e += 8) {
      const uint4 kb = *reinterpret_cast<const uint4*>(key + e);
      const float4 q0 = *reinterpret_cast<const float4*>(q + e);
      const float4 q1 = *reinterpret_cast<const float4*>(q + e + 4);
      const uint32_t kw[4] = {kb.x, kb.y, kb.z, kb.w};
      const float qv[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w};
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const uint32_t bits = i % 2 == 0 ? kw[i / 2] << 16 : kw[i / 2] & 0xffff0000u;
        dot = __fadd_rn(dot, __fmul_rn(qv[i], __uint_as_float(bits)));
      }
    }
  }
  for (; e < d; ++e) {
    const float kv = __uint_as_float(static_cast<uint32_t>(key[e]) << 16);
    dot = __fadd_rn(dot, __fmul_rn(q[e], kv));
  }
  logits[idx] = __fmul_rn(dot, inv_sqrt_d);
}

// The same logits for head_dim kD with each key read once for several task rows: a thread holds
// key j of KV head g in registers and computes kTaskRows rows of one chunk (the block's queries
// in shared memory), each dot in e order with separate roundings, as above. (A thread per logit
// read every key once per row, 384-byte strided: ~56 us per layer.)
constexpr int kTaskRows = 8;
constexpr int kTaskLogitThreads = 128;
template <int kD>
__global__ void __launch_bounds__(kTaskLogitThreads)
    TaskLogitsRowsKernel(const float* tq, const uint16_t* k, int64_t n, int64_t n_task,
                         int64_t n_heads, int64_t n_kv, float inv_sqrt_d, float* logits) {
  __shared__ __align__(16) float queries[kTaskRows][kD];
  const int64_t group = n_heads / n_kv, rows = n_task * group;
  const int64_t chunks = (rows + kTaskRows - 1) / kTaskRows;
  const int64_t g = blockIdx.y / chunks, r0 = (blockIdx.y % chunks) * kTaskRows;
  const int rows_here = static_cast<int>(rows - r0 < kTaskRows ? rows - r0 : kTaskRows);
  for (int i = threadIdx.x; i < kTaskRows * kD; i += blockDim.x) {
    const int r = i / kD, e = i % kD;
    float value = 0.0f;
    if (r < rows_here) {
      const int64_t t = (r0 + r) / group, h = (r0 + r) % group;
      value = tq[(t * n_heads + g * group + h) * kD + e];
    }
    queries[r][e] = value;
  }
  __syncthreads();
  const int64_t j = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (j >= n) return;
  const uint4* key = reinterpret_cast<const uint4*>(k + (j * n_kv + g) * kD);
  uint4 kb[kD / 8];
#pragma unroll
  for (int c = 0; c < kD / 8; ++c) kb[c] = key[c];
  float dot[kTaskRows];
#pragma unroll
  for (int r = 0; r < kTaskRows; ++r) dot[r] = 0.0f;
#pragma unroll
  for (int c = 0; c < kD / 8; ++c) {
    const uint32_t kw[4] = {kb[c].x, kb[c].y, kb[c].z, kb[c].w};
#pragma unroll
    for (int r = 0; r < kTaskRows; ++r) {
      const float4 q0 = *reinterpret_cast<const float4*>(&queries[r][c * 8]);
      const float4 q1 = *reinterpret_cast<const float4*>(&queries[r][c * 8 + 4]);
      const float qv[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w};
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const uint32_t bits = i % 2 == 0 ? kw[i / 2] << 16 : kw[i / 2] & 0xffff0000u;
        dot[r] = __fadd_rn(dot[r], __fmul_rn(qv[i], __uint_as_float(bits)));
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kTaskRows; ++r) {
    if (r < rows_here) logits[(g * rows + r0 + r) * n + j] = __fmul_rn(dot[r], inv_sqrt_d);
  }
}

// lse[g][r] = top + log(sum_j exp(row[j] - top)), summed in order as the host does. One warp
// (one block) per row, so the rows run on as many SMs: the lanes compute a chunk's exps (the slow,
// independent part) into shared memory, then lane 0 adds them in j order, so the double sum is
// the host's sum; its cost is one dependent double add per key. (32 shuffles per 32 keys, eight
// rows to an SM, took ~40 us per layer.)
constexpr int kLseChunk = 1024;
__global__ void TaskLseKernel(const float* logits, int64_t n, float* lse) {
  __shared__ double exps[kLseChunk];
  const int64_t row = blockIdx.x;
  const int lane = static_cast<int>(threadIdx.x);
  const float* x = logits + row * n;
  float top = -FLT_MAX;
  for (int64_t j = lane; j < n; j += 32) top = fmaxf(top, x[j]);
  for (int offset = 16; offset > 0; offset /= 2) {
    top = fmaxf(top, __shfl_xor_sync(0xffffffffu, top, offset));
  }
  double sum = 0;
  for (int64_t base = 0; base < n; base += kLseChunk) {
    const int count = static_cast<int>(n - base < kLseChunk ? n - base : kLseChunk);
    for (int i = lane; i < count; i += 32) {
      exps[i] = exp(static_cast<double>(__fsub_rn(x[base + i], top)));
    }
    __syncwarp();
    if (lane == 0) {
      for (int i = 0; i < count; ++i) sum += exps[i];
    }
    __syncwarp();
  }
  if (lane == 0) lse[row] = __fadd_rn(top, static_cast<float>(log(sum)));
}

// scores[j][g] += weight * (max_r logits) (max-dot), or += weight * (log of the mass the task's
// rows give key j, relative to uniform) (segment mass): the host's `+=` of AddTaskTerm.
__global__ void TaskScoreKernel(const float* logits, const float* lse, int64_t n, int64_t rows,
                                int64_t n_kv, bool max_dot, float weight, float log_uniform,
                                float* scores) {
  const int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (idx >= n_kv * n) return;
  const int64_t g = idx / n, j = idx % n;
  const float* x = logits + g * rows * n;
  const float* l = lse + g * rows;
  float* out = scores + j * n_kv + g;
  float top = -INFINITY;
  if (max_dot) {
    for (int64_t r = 0; r < rows; ++r) top = fmaxf(top, x[r * n + j]);
    *out = __fadd_rn(*out, __fmul_rn(weight, top));
    return;
  }
  for (int64_t r = 0; r < rows; ++r) top = fmaxf(top, __fsub_rn(x[r * n + j], l[r]));
  double sum = 0;
  for (int64_t r = 0; r < rows; ++r) {
    sum += exp(static_cast<double>(__fsub_rn(__fsub_rn(x[r * n + j], l[r]), top)));
  }
  *out = __fadd_rn(*out, __fmul_rn(weight, __fadd_rn(__fadd_rn(top, static_cast<float>(log(sum))),
                                                     log_uniform)));
}

// out[t][h] = w[h] . x[t] + b[h] + slope[h] * (first_position + t): engine/scorer ScoreTokens
// with its eight partial sums, on the bf16 attention-norm output. Partial sum p is the sum of the
// elements i = p mod 8 in increasing i: lane p of an 8-lane group computes it, and the group's
// first lane combines them in ScoreTokens' tree, so the result is the host's to the bit. (One
// thread per score left ~1.5 warps per SM, latency-bound.)
constexpr int kScoreLanes = 8;
__global__ void LinearScoresKernel(const float* w, const float* b, const float* slope,
                                   const uint16_t* x, int64_t n, int64_t heads, int64_t d,
                                   int64_t first_position, float* out) {
  const int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const int64_t item = idx / kScoreLanes;
  const int part = static_cast<int>(idx % kScoreLanes);
  const bool active = item < n * heads;
  float acc = 0.0f;
  int64_t t = 0, h = 0;
  if (active) {
    t = item / heads;
    h = item % heads;
    const float* wh = w + h * d;
    const uint16_t* xt = x + t * d;
    for (int64_t i = part; i < d; i += kScoreLanes) {
      const float xv = __uint_as_float(static_cast<uint32_t>(xt[i]) << 16);
      acc = __fadd_rn(acc, __fmul_rn(wh[i], xv));
    }
  }
  const int first = static_cast<int>(threadIdx.x % 32) & ~(kScoreLanes - 1);
  float p[kScoreLanes];
#pragma unroll
  for (int i = 0; i < kScoreLanes; ++i) p[i] = __shfl_sync(0xffffffffu, acc, first + i);
  if (!active || part != 0) return;
  float dot = __fadd_rn(__fadd_rn(__fadd_rn(p[0], p[1]), __fadd_rn(p[2], p[3])),
                        __fadd_rn(__fadd_rn(p[4], p[5]), __fadd_rn(p[6], p[7])));
  dot = __fadd_rn(dot, b[h]);
  dot = __fadd_rn(dot, static_cast<float>(static_cast<double>(slope[h]) *
                                          static_cast<double>(first_position + t)));
  out[item] = dot;
}

}  // namespace

cudaError_t LinearScores(const float* w, const float* b, const float* slope, const uint16_t* x,
                         int64_t n, int64_t heads, int64_t d, int64_t first_position, float* out,
                         cudaStream_t stream) {
  LinearScoresKernel<<<Blocks(n * heads * kScoreLanes), kThreads, 0, stream>>>(
      w, b, slope, x, n, heads, d, first_position, out);
  return cudaGetLastError();
}

cudaError_t TaskTerm(const TaskTermLaunch& a, cudaStream_t stream) {
  const int64_t rows = a.n_task * (a.n_heads / a.n_kv_heads);
  const int64_t total = a.n_kv_heads * rows * a.n;
  if (a.head_dim == 64 && reinterpret_cast<uintptr_t>(a.k) % 16 == 0) {
    const int64_t chunks = (rows + kTaskRows - 1) / kTaskRows;
    const dim3 grid(static_cast<unsigned>((a.n + kTaskLogitThreads - 1) / kTaskLogitThreads),
                    static_cast<unsigned>(a.n_kv_heads * chunks));
    TaskLogitsRowsKernel<64><<<grid, kTaskLogitThreads, 0, stream>>>(
        a.task_queries, a.k, a.n, a.n_task, a.n_heads, a.n_kv_heads, a.inv_sqrt_d, a.logits);
  } else {
    TaskLogitsKernel<<<Blocks(total), kThreads, 0, stream>>>(a.task_queries, a.k, a.n, a.n_task,
                                                             a.n_heads, a.n_kv_heads, a.head_dim,
                                                             a.inv_sqrt_d, a.logits);
  }
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  if (!a.max_dot) {
    TaskLseKernel<<<static_cast<unsigned>(a.n_kv_heads * rows), 32, 0, stream>>>(a.logits, a.n,
                                                                                 a.lse);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  }
  // Small blocks: a few thousand threads of double exps spread over many SMs.
  constexpr int kScoreThreads = 64;
  TaskScoreKernel<<<static_cast<unsigned>((a.n_kv_heads * a.n + kScoreThreads - 1) / kScoreThreads),
                    kScoreThreads, 0, stream>>>(a.logits, a.lse, a.n, rows, a.n_kv_heads, a.max_dot,
                                                a.weight, a.log_uniform, a.scores);
  return cudaGetLastError();
}

}  // namespace longread::kernels::cuda::launch
