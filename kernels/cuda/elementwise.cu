// Embedding gather, fused residual + RMSNorm, RoPE, SwiGLU, argmax and conversions: memory-bound
// ops, one pass each, fp32 arithmetic on bf16 storage.
#include <cuda_bf16.h>

#include <algorithm>
#include <cfloat>
#include <cmath>

#include "kernels/cuda/launch.h"

namespace longread::kernels::cuda::launch {
namespace {

constexpr int kThreads = 256;

unsigned Blocks(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

__global__ void EmbeddingKernel(const __nv_bfloat16* table, int64_t vocab, int64_t dim,
                                const int32_t* tokens, float* out) {
  const int64_t t = blockIdx.x;
  const int32_t id = tokens[t];
  const bool valid = id >= 0 && id < vocab;
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) {
    out[t * dim + c] = valid ? __bfloat162float(table[id * dim + c]) : 0.0f;
  }
}

// Sum over the block; every thread gets the result.
__device__ float BlockSum(float v) {
  __shared__ float partial[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // `partial` may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int n_warps = (blockDim.x + 31) / 32;
  v = lane < n_warps ? partial[lane] : 0.0f;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// One block per token.
__global__ void AddRmsNormKernel(float* residual, const __nv_bfloat16* delta, const float* weight,
                                 int64_t dim, float eps, __nv_bfloat16* out) {
  float* x = residual + blockIdx.x * dim;
  float sum_sq = 0;
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) {
    float v = x[c];
    if (delta != nullptr) {
      v += __bfloat162float(delta[blockIdx.x * dim + c]);
      x[c] = v;
    }
    sum_sq += v * v;
  }
  const float inv = rsqrtf(BlockSum(sum_sq) / static_cast<float>(dim) + eps);
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) {
    out[blockIdx.x * dim + c] = __float2bfloat16_rn(x[c] * inv * weight[c]);
  }
}

__global__ void AddKernel(float* residual, const __nv_bfloat16* delta, int64_t n) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i < n) residual[i] += __bfloat162float(delta[i]);
}

// One thread per rotated pair. The angle pos * theta^(-2i/d) is formed and reduced mod 2*pi in
// double (positions reach 1M and beyond), then the sine and cosine of the reduced angle come from
// sincosf: within an ulp of the CPU's float(cos(angle in double)), without double sincos. The
// rotation rounds each product and the difference, as the CPU's float expression does.
constexpr int kMaxRopeHalf = 256;

// inv_freq[i] = theta^(-2i/d) for i < d/2, in a block's shared memory.
__device__ void FillInvFreq(double* inv_freq, int64_t head_dim, double theta) {
  for (int64_t i = threadIdx.x; i < head_dim / 2; i += blockDim.x) {
    inv_freq[i] = pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
  }
  __syncthreads();
}

// Pair i of a row rotated at `position` from src into dst (which may be src).
__device__ __forceinline__ void RotatePair(const __nv_bfloat16* src, __nv_bfloat16* dst, int64_t i,
                                           int64_t half, int64_t position, double inv_freq,
                                           bool interleaved) {
  constexpr double kTwoPi = 6.283185307179586476925286766559;
  const double angle = static_cast<double>(position) * inv_freq;
  const double turns = rint(angle * (1.0 / kTwoPi));
  float sf, cf;
  sincosf(static_cast<float>(fma(-turns, kTwoPi, angle)), &sf, &cf);
  const int64_t a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
  const float x0 = __bfloat162float(src[a]), x1 = __bfloat162float(src[b]);
  dst[a] = __float2bfloat16_rn(__fsub_rn(__fmul_rn(x0, cf), __fmul_rn(x1, sf)));
  dst[b] = __float2bfloat16_rn(__fadd_rn(__fmul_rn(x0, sf), __fmul_rn(x1, cf)));
}

__global__ void RopeKernel(__nv_bfloat16* x, int64_t n_outer, int64_t n_tokens, int64_t n_heads,
                           int64_t head_dim, const int64_t* positions, double theta,
                           bool interleaved) {
  __shared__ double inv_freq[kMaxRopeHalf];
  FillInvFreq(inv_freq, head_dim, theta);
  const int64_t half = head_dim / 2;
  const int64_t pair = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (pair >= n_outer * n_tokens * n_heads * half) return;
  const int64_t i = pair % half;
  const int64_t row = pair / half;  // (o, t, h)
  const int64_t t = (row / n_heads) % n_tokens;
  __nv_bfloat16* v = x + row * head_dim;
  RotatePair(v, v, i, half, positions[t], inv_freq[i], interleaved);
}

// The memory's keys rotated into a second buffer and the segment's queries in place, in one
// grid-stride pass (blocks several times the SMs, so each computes inv_freq once for many rows).
__global__ void RopeMemoryKernel(RopeMemoryLaunch a) {
  __shared__ double inv_freq[kMaxRopeHalf];
  FillInvFreq(inv_freq, a.head_dim, a.theta);
  const int64_t half = a.head_dim / 2, group = a.n_heads / a.n_kv_heads;
  const int64_t key_pairs = a.n_kv_heads * a.n_keys * half;
  const int64_t total = key_pairs + a.n_q * a.n_heads * half;
  for (int64_t pair = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; pair < total;
       pair += int64_t{gridDim.x} * blockDim.x) {
    const int64_t i = pair % half;
    if (pair < key_pairs) {
      const int64_t row = pair / half;  // (g, key)
      const int64_t g = row / a.n_keys, key = row % a.n_keys;
      const int64_t at = (g * a.capacity + key) * a.head_dim;
      RotatePair(reinterpret_cast<const __nv_bfloat16*>(a.keys) + at,
                 reinterpret_cast<__nv_bfloat16*>(a.rotated) + at, i, half, a.key_positions[row],
                 inv_freq[i], a.interleaved);
    } else {
      const int64_t row = (pair - key_pairs) / half;  // (t, h)
      const int64_t t = row / a.n_heads, h = row % a.n_heads;
      __nv_bfloat16* q = reinterpret_cast<__nv_bfloat16*>(a.q) + row * a.head_dim;
      RotatePair(q, q, i, half, a.query_positions[t * a.n_kv_heads + h / group], inv_freq[i],
                 a.interleaved);
    }
  }
}

// dst[g][slot0 + t][0..head_dim) = src[t][g][0..head_dim): a segment's keys or values, as the
// projections write them (token-major), appended to a head-major memory of `capacity` slots.
__global__ void ScatterHeadsKernel(const __nv_bfloat16* src, int64_t n_tokens, int64_t n_heads,
                                   int64_t head_dim, int64_t capacity, int64_t slot0,
                                   __nv_bfloat16* dst) {
  const int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (idx >= n_tokens * n_heads * head_dim) return;
  const int64_t d = idx % head_dim, g = (idx / head_dim) % n_heads, t = idx / (head_dim * n_heads);
  dst[(g * capacity + slot0 + t) * head_dim + d] = src[idx];
}

// dst row dst_rows[r] = src row src_rows[r], rows of row_elems bf16 (a memory's slots moving:
// append, compaction, staging of evicted rows). One thread per element.
__global__ void CopyRowsKernel(const __nv_bfloat16* src, const int32_t* src_rows,
                               __nv_bfloat16* dst, const int32_t* dst_rows, int64_t n_rows,
                               int64_t row_elems) {
  const int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (idx >= n_rows * row_elems) return;
  const int64_t r = idx / row_elems, e = idx % row_elems;
  dst[int64_t{dst_rows[r]} * row_elems + e] = src[int64_t{src_rows[r]} * row_elems + e];
}

__global__ void SiluMulKernel(const __nv_bfloat16* gate, const __nv_bfloat16* up, int64_t n,
                              __nv_bfloat16* out) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= n) return;
  const float g = __bfloat162float(gate[i]);
  out[i] = __float2bfloat16_rn(g / (1.0f + expf(-g)) * __bfloat162float(up[i]));
}

// (value, index) with the larger value winning, the lower index on ties; NaN never wins.
__device__ void Better(float v, int32_t i, float* best, int32_t* best_i) {
  if (v > *best || (v == *best && i < *best_i)) {
    *best = v;
    *best_i = i;
  }
}

// One block per row.
__global__ void ArgMaxKernel(const float* logits, int64_t vocab, int32_t* out) {
  const float* row = logits + blockIdx.x * vocab;
  float best = -FLT_MAX;
  int32_t best_i = INT32_MAX;
  for (int64_t c = threadIdx.x; c < vocab; c += blockDim.x) {
    Better(row[c], static_cast<int32_t>(c), &best, &best_i);
  }
  for (int o = 16; o > 0; o >>= 1) {
    Better(__shfl_xor_sync(0xffffffffu, best, o), __shfl_xor_sync(0xffffffffu, best_i, o), &best,
           &best_i);
  }
  __shared__ float warp_best[32];
  __shared__ int32_t warp_index[32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    warp_best[warp] = best;
    warp_index[warp] = best_i;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) {
      Better(warp_best[w], warp_index[w], &best, &best_i);
    }
    // A row of NaNs / -inf only: the CPU's argmax answers 0.
    out[blockIdx.x] = best_i == INT32_MAX ? 0 : best_i;
  }
}

__global__ void ToBf16Kernel(const float* in, int64_t n, __nv_bfloat16* out) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i < n) out[i] = __float2bfloat16_rn(in[i]);
}

__global__ void ToFloatKernel(const __nv_bfloat16* in, int64_t n, float* out) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i < n) out[i] = __bfloat162float(in[i]);
}

const __nv_bfloat16* B(const uint16_t* p) { return reinterpret_cast<const __nv_bfloat16*>(p); }
__nv_bfloat16* B(uint16_t* p) { return reinterpret_cast<__nv_bfloat16*>(p); }

}  // namespace

cudaError_t Embedding(const uint16_t* table, int64_t vocab, int64_t dim, const int32_t* tokens,
                      int64_t n_tokens, float* out, cudaStream_t stream) {
  EmbeddingKernel<<<static_cast<unsigned>(n_tokens), kThreads, 0, stream>>>(B(table), vocab, dim,
                                                                            tokens, out);
  return cudaGetLastError();
}

cudaError_t AddRmsNorm(float* residual, const uint16_t* delta, const float* weight,
                       int64_t n_tokens, int64_t dim, float eps, uint16_t* out,
                       cudaStream_t stream) {
  AddRmsNormKernel<<<static_cast<unsigned>(n_tokens), kThreads, 0, stream>>>(
      residual, B(delta), weight, dim, eps, B(out));
  return cudaGetLastError();
}

cudaError_t AddResidual(float* residual, const uint16_t* delta, int64_t n, cudaStream_t stream) {
  AddKernel<<<Blocks(n), kThreads, 0, stream>>>(residual, B(delta), n);
  return cudaGetLastError();
}

cudaError_t Rope(uint16_t* x, int64_t n_outer, int64_t n_tokens, int64_t n_heads, int64_t head_dim,
                 const int64_t* positions, double theta, bool interleaved, cudaStream_t stream) {
  const int64_t pairs = n_outer * n_tokens * n_heads * (head_dim / 2);
  RopeKernel<<<Blocks(pairs), kThreads, 0, stream>>>(B(x), n_outer, n_tokens, n_heads, head_dim,
                                                     positions, theta, interleaved);
  return cudaGetLastError();
}

cudaError_t RopeMemory(const RopeMemoryLaunch& a, cudaStream_t stream) {
  const int64_t pairs = (a.n_kv_heads * a.n_keys + a.n_q * a.n_heads) * (a.head_dim / 2);
  constexpr int64_t kMaxBlocks = 1024;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(Blocks(pairs), kMaxBlocks));
  RopeMemoryKernel<<<blocks, kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

cudaError_t ScatterHeads(const uint16_t* src, int64_t n_tokens, int64_t n_heads, int64_t head_dim,
                         int64_t capacity, int64_t slot0, uint16_t* dst, cudaStream_t stream) {
  ScatterHeadsKernel<<<Blocks(n_tokens * n_heads * head_dim), kThreads, 0, stream>>>(
      B(src), n_tokens, n_heads, head_dim, capacity, slot0, B(dst));
  return cudaGetLastError();
}

cudaError_t CopyRows(const uint16_t* src, const int32_t* src_rows, uint16_t* dst,
                     const int32_t* dst_rows, int64_t n_rows, int64_t row_elems,
                     cudaStream_t stream) {
  CopyRowsKernel<<<Blocks(n_rows * row_elems), kThreads, 0, stream>>>(B(src), src_rows, B(dst),
                                                                      dst_rows, n_rows, row_elems);
  return cudaGetLastError();
}

cudaError_t SiluMul(const uint16_t* gate, const uint16_t* up, int64_t n, uint16_t* out,
                    cudaStream_t stream) {
  SiluMulKernel<<<Blocks(n), kThreads, 0, stream>>>(B(gate), B(up), n, B(out));
  return cudaGetLastError();
}

cudaError_t ArgMax(const float* logits, int64_t n_rows, int64_t vocab, int32_t* out,
                   cudaStream_t stream) {
  ArgMaxKernel<<<static_cast<unsigned>(n_rows), 1024, 0, stream>>>(logits, vocab, out);
  return cudaGetLastError();
}

cudaError_t FloatToBf16(const float* in, int64_t n, uint16_t* out, cudaStream_t stream) {
  ToBf16Kernel<<<Blocks(n), kThreads, 0, stream>>>(in, n, B(out));
  return cudaGetLastError();
}

cudaError_t Bf16ToFloat(const uint16_t* in, int64_t n, float* out, cudaStream_t stream) {
  ToFloatKernel<<<Blocks(n), kThreads, 0, stream>>>(B(in), n, out);
  return cudaGetLastError();
}

}  // namespace longread::kernels::cuda::launch
