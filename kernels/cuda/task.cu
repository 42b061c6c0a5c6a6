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

// lse[g][r] = top + log(sum_j exp(row[j] - top)), summed in order as the host does. One warp
// per row: the exps (the slow part, independent) are computed 32 at a time in parallel, and every
// lane adds them in j order, so the double sum is the host's sum. (A thread per row took ~2048
// dependent double exps per row, ~0.1 ms per layer on one SM.)
__global__ void TaskLseKernel(const float* logits, int64_t n, int64_t n_rows_total, float* lse) {
  const int64_t row = blockIdx.x * int64_t{blockDim.x / 32} + threadIdx.x / 32;
  const int lane = static_cast<int>(threadIdx.x % 32);
  if (row >= n_rows_total) return;  // the whole warp
  const float* x = logits + row * n;
  float top = -FLT_MAX;
  for (int64_t j = lane; j < n; j += 32) top = fmaxf(top, x[j]);
  for (int offset = 16; offset > 0; offset /= 2) {
    top = fmaxf(top, __shfl_xor_sync(0xffffffffu, top, offset));
  }
  double sum = 0;
  int64_t base = 0;
  for (; base + 32 <= n; base += 32) {
    const double e = exp(static_cast<double>(__fsub_rn(x[base + lane], top)));
#pragma unroll
    for (int t = 0; t < 32; ++t) sum += __shfl_sync(0xffffffffu, e, t);
  }
  if (base < n) {
    const int64_t j = base + lane;
    const double e = j < n ? exp(static_cast<double>(__fsub_rn(x[j], top))) : 0.0;
    for (int t = 0; t < static_cast<int>(n - base); ++t) sum += __shfl_sync(0xffffffffu, e, t);
  }
  if (lane == 0) lse[row] = __fadd_rn(top, static_cast<float>(log(sum)));
}

// out[j][g] = weight * (max_r logits) (max-dot), or weight * (log of the mass the task's rows
// give key j, relative to uniform) (segment mass).
__global__ void TaskScoreKernel(const float* logits, const float* lse, int64_t n, int64_t rows,
                                int64_t n_kv, bool max_dot, float weight, float log_uniform,
                                float* out) {
  const int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (idx >= n_kv * n) return;
  const int64_t g = idx / n, j = idx % n;
  const float* x = logits + g * rows * n;
  const float* l = lse + g * rows;
  float top = -INFINITY;
  if (max_dot) {
    for (int64_t r = 0; r < rows; ++r) top = fmaxf(top, x[r * n + j]);
    out[j * n_kv + g] = __fmul_rn(weight, top);
    return;
  }
  for (int64_t r = 0; r < rows; ++r) top = fmaxf(top, __fsub_rn(x[r * n + j], l[r]));
  double sum = 0;
  for (int64_t r = 0; r < rows; ++r) {
    sum += exp(static_cast<double>(__fsub_rn(__fsub_rn(x[r * n + j], l[r]), top)));
  }
  out[j * n_kv + g] =
      __fmul_rn(weight, __fadd_rn(__fadd_rn(top, static_cast<float>(log(sum))), log_uniform));
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
  TaskLogitsKernel<<<Blocks(total), kThreads, 0, stream>>>(a.task_queries, a.k, a.n, a.n_task,
                                                           a.n_heads, a.n_kv_heads, a.head_dim,
                                                           a.inv_sqrt_d, a.logits);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  if (!a.max_dot) {
    constexpr int kRowsPerBlock = kThreads / 32;
    const int64_t lse_rows = a.n_kv_heads * rows;
    TaskLseKernel<<<static_cast<unsigned>((lse_rows + kRowsPerBlock - 1) / kRowsPerBlock), kThreads,
                    0, stream>>>(a.logits, a.n, lse_rows, a.lse);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  }
  TaskScoreKernel<<<Blocks(a.n_kv_heads * a.n), kThreads, 0, stream>>>(
      a.logits, a.lse, a.n, rows, a.n_kv_heads, a.max_dot, a.weight, a.log_uniform, a.out);
  return cudaGetLastError();
}

}  // namespace longread::kernels::cuda::launch
