// The fp32 verification mode's kernels: weights decoded to fp32, and the norms, RoPE, SwiGLU and
// attention of the dense-cache path on fp32 activations, each computed as the CPU reference
// computes it (kernels/cpu), so that the GPU model is a near-bitwise twin of the CPU engine.
// Correctness first: simple one-pass kernels; the bf16 kernels of the reading path are separate
// and unchanged.
#include <cuda_fp16.h>

#include <cmath>

#include "kernels/cuda/launch_fp32.h"

namespace longread::kernels::cuda::launch {
namespace {

constexpr int kThreads = 256;

unsigned Blocks(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

__device__ float HalfValue(const uint8_t* p) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(p[0] | (p[1] << 8))));
}

// One thread per 32-element block (quantized types) or per element (float types), the values of
// kernels/cpu/reference.cc's DequantizeRow (dequant.cu's formulas, without the bf16 rounding).
__global__ void DequantizeF32Kernel(DType type, const uint8_t* src, int64_t rows, int64_t cols,
                                    float* dst) {
  const int64_t per_row =
      type == DType::kQ4_0 || type == DType::kQ4_1 || type == DType::kQ8_0 ? cols / 32 : cols;
  const int64_t unit = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (unit >= rows * per_row) return;
  switch (type) {
    case DType::kF32:
      memcpy(&dst[unit], src + unit * 4, 4);
      return;
    case DType::kF16:
      dst[unit] = HalfValue(src + unit * 2);
      return;
    case DType::kBF16: {
      const uint32_t bits = static_cast<uint32_t>(src[unit * 2] | (src[unit * 2 + 1] << 8)) << 16;
      dst[unit] = __uint_as_float(bits);
      return;
    }
    case DType::kQ8_0: {
      const uint8_t* b = src + unit * 34;
      const float d = HalfValue(b);
      for (int i = 0; i < 32; ++i) {
        dst[unit * 32 + i] = __fmul_rn(static_cast<float>(static_cast<int8_t>(b[2 + i])), d);
      }
      return;
    }
    case DType::kQ4_0: {
      const uint8_t* b = src + unit * 18;
      const float d = HalfValue(b);
      for (int i = 0; i < 16; ++i) {
        dst[unit * 32 + i] = __fmul_rn(static_cast<float>((b[2 + i] & 0x0f) - 8), d);
        dst[unit * 32 + 16 + i] = __fmul_rn(static_cast<float>((b[2 + i] >> 4) - 8), d);
      }
      return;
    }
    case DType::kQ4_1: {
      const uint8_t* b = src + unit * 20;
      const float d = HalfValue(b), m = HalfValue(b + 2);
      for (int i = 0; i < 16; ++i) {
        dst[unit * 32 + i] = __fmaf_rn(static_cast<float>(b[4 + i] & 0x0f), d, m);
        dst[unit * 32 + 16 + i] = __fmaf_rn(static_cast<float>(b[4 + i] >> 4), d, m);
      }
      return;
    }
  }
}

__global__ void EmbeddingF32Kernel(const float* table, int64_t vocab, int64_t dim,
                                   const int32_t* tokens, float* out) {
  const int64_t t = blockIdx.x;
  const int32_t id = tokens[t];
  const bool valid = id >= 0 && id < vocab;
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) {
    out[t * dim + c] = valid ? table[id * dim + c] : 0.0f;
  }
}

// Sum over the block in double (the CPU's RmsNorm accumulates in double); every thread gets it.
__device__ double BlockSumDouble(double v) {
  __shared__ double partial[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int n_warps = (blockDim.x + 31) / 32;
  v = lane < n_warps ? partial[lane] : 0.0;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// One block per token: residual += delta (the CPU's Add), then the CPU's RmsNorm.
__global__ void AddRmsNormF32Kernel(float* residual, const float* delta, const float* weight,
                                    int64_t dim, float eps, float* out) {
  float* x = residual + blockIdx.x * dim;
  double sum_sq = 0;
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) {
    float v = x[c];
    if (delta != nullptr) {
      v = __fadd_rn(v, delta[blockIdx.x * dim + c]);
      x[c] = v;
    }
    sum_sq += static_cast<double>(v) * v;
  }
  const double total = BlockSumDouble(sum_sq);
  const float inv = static_cast<float>(1.0 / sqrt(total / static_cast<double>(dim) + eps));
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) {
    out[blockIdx.x * dim + c] = __fmul_rn(__fmul_rn(x[c], inv), weight[c]);
  }
}

__global__ void AddF32Kernel(float* residual, const float* delta, int64_t n) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i < n) residual[i] = __fadd_rn(residual[i], delta[i]);
}

// The CPU's Rope: the angle pos * theta^(-2i/d) in double, its cosine and sine rounded to float,
// the rotation's products and difference rounded one by one (no contraction).
__global__ void RopeF32Kernel(float* x, int64_t n_tokens, int64_t n_heads, int64_t head_dim,
                              const int64_t* positions, double theta, bool interleaved) {
  const int64_t half = head_dim / 2;
  const int64_t pair = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (pair >= n_tokens * n_heads * half) return;
  const int64_t i = pair % half, row = pair / half;  // row: (t, h)
  const int64_t t = row / n_heads;
  const double inv_freq = pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
  const double angle = static_cast<double>(positions[t]) * inv_freq;
  const float c = static_cast<float>(cos(angle)), s = static_cast<float>(sin(angle));
  float* v = x + row * head_dim;
  const int64_t a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
  const float x0 = v[a], x1 = v[b];
  v[a] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
  v[b] = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
}

__global__ void ScatterHeadsF32Kernel(const float* src, int64_t n_tokens, int64_t n_heads,
                                      int64_t head_dim, int64_t capacity, int64_t slot0,
                                      float* dst) {
  const int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (idx >= n_tokens * n_heads * head_dim) return;
  const int64_t d = idx % head_dim, g = (idx / head_dim) % n_heads, t = idx / (head_dim * n_heads);
  dst[(g * capacity + slot0 + t) * head_dim + d] = src[idx];
}

__global__ void SiluMulF32Kernel(const float* gate, const float* up, int64_t n, float* out) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= n) return;
  const float g = gate[i];
  out[i] = __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), up[i]);
}

// One warp per (query, head) row; the lanes split the head dimension and walk the keys in order
// with an online softmax in fp32. Slow and simple: this is the verification path.
constexpr int kAttentionWarps = 4;
constexpr int kDimsPerLane = kMaxAttentionF32HeadDim / 32;

__global__ void AttentionF32Kernel(AttentionF32Launch a) {
  const int lane = threadIdx.x % 32;
  const int64_t row = blockIdx.x * int64_t{kAttentionWarps} + threadIdx.x / 32;  // (i, h)
  if (row >= a.n_q * a.n_heads) return;
  const int64_t i = row / a.n_heads, h = row % a.n_heads;
  const int64_t g = h / (a.n_heads / a.n_kv_heads);
  const float* q = a.q + row * a.head_dim;
  float qd[kDimsPerLane], acc[kDimsPerLane];
  for (int c = 0; c < kDimsPerLane; ++c) {
    const int64_t d = lane + 32 * c;
    qd[c] = d < a.head_dim ? q[d] : 0.0f;
    acc[c] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  const float* keys = a.k + g * a.kv_stride * a.head_dim;
  const float* values = a.v + g * a.kv_stride * a.head_dim;
  for (int64_t j = 0; j < a.n_keys; ++j) {
    const int64_t at = g * a.n_keys + j;
    if (!(a.from[at] <= i && i < a.until[at])) continue;  // the same for every lane
    float dot = 0.0f;
    for (int c = 0; c < kDimsPerLane; ++c) {
      const int64_t d = lane + 32 * c;
      if (d < a.head_dim) dot = __fmaf_rn(qd[c], keys[j * a.head_dim + d], dot);
    }
    for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    const float s = dot * a.scale;
    float p = 1.0f;
    if (s > m) {
      const float correction = expf(m - s);  // 0 for the first visible key
      l *= correction;
      for (int c = 0; c < kDimsPerLane; ++c) acc[c] *= correction;
      m = s;
    } else {
      p = expf(s - m);
    }
    l += p;
    for (int c = 0; c < kDimsPerLane; ++c) {
      const int64_t d = lane + 32 * c;
      if (d < a.head_dim) acc[c] = __fmaf_rn(p, values[j * a.head_dim + d], acc[c]);
    }
  }
  float* out = a.out + row * a.head_dim;
  for (int c = 0; c < kDimsPerLane; ++c) {
    const int64_t d = lane + 32 * c;
    if (d < a.head_dim) out[d] = l > 0.0f ? acc[c] / l : 0.0f;
  }
}

}  // namespace

cudaError_t DequantizeF32(DType type, const uint8_t* src, int64_t rows, int64_t cols, float* dst,
                          cudaStream_t stream) {
  const int64_t units = rows * (cols / BlockElements(type));
  DequantizeF32Kernel<<<Blocks(units), kThreads, 0, stream>>>(type, src, rows, cols, dst);
  return cudaGetLastError();
}

cudaError_t EmbeddingF32(const float* table, int64_t vocab, int64_t dim, const int32_t* tokens,
                         int64_t n_tokens, float* out, cudaStream_t stream) {
  EmbeddingF32Kernel<<<static_cast<unsigned>(n_tokens), kThreads, 0, stream>>>(table, vocab, dim,
                                                                               tokens, out);
  return cudaGetLastError();
}

cudaError_t AddRmsNormF32(float* residual, const float* delta, const float* weight,
                          int64_t n_tokens, int64_t dim, float eps, float* out,
                          cudaStream_t stream) {
  AddRmsNormF32Kernel<<<static_cast<unsigned>(n_tokens), kThreads, 0, stream>>>(
      residual, delta, weight, dim, eps, out);
  return cudaGetLastError();
}

cudaError_t AddResidualF32(float* residual, const float* delta, int64_t n, cudaStream_t stream) {
  AddF32Kernel<<<Blocks(n), kThreads, 0, stream>>>(residual, delta, n);
  return cudaGetLastError();
}

cudaError_t RopeF32(float* x, int64_t n_tokens, int64_t n_heads, int64_t head_dim,
                    const int64_t* positions, double theta, bool interleaved, cudaStream_t stream) {
  const int64_t pairs = n_tokens * n_heads * (head_dim / 2);
  RopeF32Kernel<<<Blocks(pairs), kThreads, 0, stream>>>(x, n_tokens, n_heads, head_dim, positions,
                                                        theta, interleaved);
  return cudaGetLastError();
}

cudaError_t ScatterHeadsF32(const float* src, int64_t n_tokens, int64_t n_heads, int64_t head_dim,
                            int64_t capacity, int64_t slot0, float* dst, cudaStream_t stream) {
  ScatterHeadsF32Kernel<<<Blocks(n_tokens * n_heads * head_dim), kThreads, 0, stream>>>(
      src, n_tokens, n_heads, head_dim, capacity, slot0, dst);
  return cudaGetLastError();
}

cudaError_t SiluMulF32(const float* gate, const float* up, int64_t n, float* out,
                       cudaStream_t stream) {
  SiluMulF32Kernel<<<Blocks(n), kThreads, 0, stream>>>(gate, up, n, out);
  return cudaGetLastError();
}

cudaError_t AttentionF32(const AttentionF32Launch& a, cudaStream_t stream) {
  const int64_t rows = a.n_q * a.n_heads;
  const unsigned blocks = static_cast<unsigned>((rows + kAttentionWarps - 1) / kAttentionWarps);
  AttentionF32Kernel<<<blocks, 32 * kAttentionWarps, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace longread::kernels::cuda::launch
