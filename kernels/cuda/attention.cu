// Attention of a segment over memory ∪ segment with per-key visibility intervals, FlashAttention-2
// style: a block owns 64 rows of (query, query head) pairs of one KV head (4 warps x 16 rows),
// streams 64-key K/V tiles through shared memory (cp.async, two stages), computes S = Q K^T and
// O += P V with bf16 mma.sync (fp32 accumulators) and keeps the online softmax in registers.
// Per-tile interval bounds, computed first, let a block skip key tiles none of its queries can
// see and drop the per-element mask on tiles all of them see.
#include <cuda_bf16.h>

#include <climits>
#include <cstdint>

#include "kernels/cuda/launch.h"

namespace longread::kernels::cuda::launch {
namespace {

constexpr int kHeadDim = 64;
constexpr int kStride = kHeadDim + 8;  // padded shared row: conflict-free ldmatrix
constexpr float kLog2e = 1.4426950408889634f;

// Over the keys of one tile of one KV head. A tile with a key that is never visible, or that
// runs past n_keys, is never "all visible" (max_from = INT_MAX).
struct TileBounds {
  int32_t min_from, max_until, max_from, min_until;
};

__global__ void TileBoundsKernel(const int32_t* from, const int32_t* until, int64_t n_keys,
                                 int64_t tile_keys, int64_t n_tiles, int64_t total,
                                 TileBounds* out) {
  const int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (idx >= total) return;
  const int64_t g = idx / n_tiles, t = idx % n_tiles;
  TileBounds b{INT_MAX, INT_MIN, INT_MIN, INT_MAX};
  const int64_t j0 = t * tile_keys, j1 = min(j0 + tile_keys, n_keys);
  bool all = j1 - j0 == tile_keys;
  for (int64_t j = j0; j < j1; ++j) {
    const int32_t f = from[g * n_keys + j], u = until[g * n_keys + j];
    if (f >= u) {
      all = false;
      continue;
    }
    b.min_from = min(b.min_from, f);
    b.max_until = max(b.max_until, u);
    b.max_from = max(b.max_from, f);
    b.min_until = min(b.min_until, u);
  }
  if (!all) b.max_from = INT_MAX;
  out[idx] = b;
}

struct Params {
  const __nv_bfloat16* q;
  const __nv_bfloat16* k;
  const __nv_bfloat16* v;
  const int32_t* from;
  const int32_t* until;
  const TileBounds* bounds;
  __nv_bfloat16* out;
  int64_t n_q, n_keys, kv_stride;
  int n_heads, group, n_tiles;
  float scale_log2;
};

__device__ __forceinline__ void Mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                    uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t SharedAddress(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SharedAddress(p)));
}

__device__ __forceinline__ void LdMatrixX4Trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SharedAddress(p)));
}

// 16 bytes global -> shared; zero-filled when !valid (keys past n_keys).
__device__ __forceinline__ void CpAsync16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(SharedAddress(dst)),
               "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void CpAsyncWaitOne() {
  asm volatile("cp.async.wait_group 1;\n" ::: "memory");
}

__device__ __forceinline__ uint32_t Pack(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

__device__ __forceinline__ float QuadMax(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float QuadSum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// Online-softmax step for one row's 16 raw scores held by this thread (s[nt][half*2 + e], -inf
// where masked): returns the factor the row's accumulator must be scaled by and turns the scores
// into probabilities exp2(s * scale_log2 - max * scale_log2), one FFMA and one EX2 each. The
// running max *m stays in the raw domain (scale_log2 > 0).
template <int kNt>
__device__ __forceinline__ float SoftmaxRow(float (&s)[kNt][4], int half, float scale_log2,
                                            float* m, float* l) {
  float mx = -INFINITY;
#pragma unroll
  for (int nt = 0; nt < kNt; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * half], s[nt][2 * half + 1]));
  const float new_m = fmaxf(*m, QuadMax(mx));
  const float base = new_m == -INFINITY ? 0.0f : new_m * scale_log2;  // nothing visible: p = 0
  const float correction = exp2f(*m * scale_log2 - base);
  *m = new_m;
  float sum = 0;
#pragma unroll
  for (int nt = 0; nt < kNt; ++nt) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const float p = exp2f(fmaf(s[nt][2 * half + e], scale_log2, -base));
      s[nt][2 * half + e] = p;
      sum += p;
    }
  }
  *l = *l * correction + sum;
  return correction;
}

// kWarps warps of 16 rows each, tiles of kKeys keys; kMinBlocks caps the registers so that
// many blocks fit per SM.
template <int kWarps, int kMinBlocks, int kKeys>
__global__ void __launch_bounds__(kWarps * 32, kMinBlocks) AttentionKernel(const Params p) {
  constexpr int kThreads = kWarps * 32;
  constexpr int kRows = kWarps * 16;  // (query, head) rows per block
  __shared__ __align__(128) __nv_bfloat16 k_s[2][kKeys][kStride];
  __shared__ __align__(128) __nv_bfloat16 v_s[2][kKeys][kStride];
  __shared__ __align__(16) int32_t from_s[2][kKeys];
  // Key j is visible to query i iff uint32(i - from) < length (= until - from, 0 when empty): one
  // compare per score, and query -1 (rows past the end) sees nothing.
  __shared__ __align__(16) uint32_t length_s[2][kKeys];

  const int g = blockIdx.y;
  const int64_t total_rows = p.n_q * p.group;
  // Causal row tiles see more keys the later they are: start the heaviest first.
  const int64_t row0 = static_cast<int64_t>(gridDim.x - 1 - blockIdx.x) * kRows;
  const int32_t q_lo = static_cast<int32_t>(row0 / p.group);
  const int32_t q_hi = static_cast<int32_t>((min(row0 + kRows, total_rows) - 1) / p.group);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int gid = lane / 4, tig = lane % 4;
  const int64_t row[2] = {row0 + warp * 16 + gid, row0 + warp * 16 + gid + 8};
  bool valid[2];
  int32_t query[2];  // -1 for rows past the last query
  const __nv_bfloat16* q_row[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    valid[h] = row[h] < total_rows;
    query[h] = valid[h] ? static_cast<int32_t>(row[h] / p.group) : -1;
    const int64_t head = int64_t{g} * p.group + row[h] % p.group;
    q_row[h] = p.q + (int64_t{query[h]} * p.n_heads + head) * kHeadDim;
  }

  // A fragments of this warp's 16 query rows, for the 4 chunks of 16 dimensions.
  uint32_t qf[4][4];
#pragma unroll
  for (int kc = 0; kc < 4; ++kc) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int h = r % 2, d = kc * 16 + (r / 2) * 8 + tig * 2;
      qf[kc][r] = valid[h] ? *reinterpret_cast<const uint32_t*>(q_row[h] + d) : 0u;
    }
  }

  float o[8][4];
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

  const TileBounds* bounds = p.bounds + int64_t{g} * p.n_tiles;
  const __nv_bfloat16* k_head = p.k + int64_t{g} * p.kv_stride * kHeadDim;
  const __nv_bfloat16* v_head = p.v + int64_t{g} * p.kv_stride * kHeadDim;
  const int32_t* from_head = p.from + int64_t{g} * p.n_keys;
  const int32_t* until_head = p.until + int64_t{g} * p.n_keys;

  auto next_visible = [&](int t) {
    for (; t < p.n_tiles; ++t) {
      const TileBounds b = bounds[t];
      if (b.min_from <= q_hi && b.max_until > q_lo) break;
    }
    return t;
  };
  auto load = [&](int t, int stage) {
    for (int c = threadIdx.x; c < kKeys * (kHeadDim / 8); c += kThreads) {
      const int key = c / (kHeadDim / 8), chunk = c % (kHeadDim / 8);
      const int64_t j = int64_t{t} * kKeys + key;
      const bool ok = j < p.n_keys;
      const int64_t offset = ok ? j * kHeadDim + chunk * 8 : 0;
      CpAsync16(&k_s[stage][key][chunk * 8], k_head + offset, ok);
      CpAsync16(&v_s[stage][key][chunk * 8], v_head + offset, ok);
    }
    if (threadIdx.x < kKeys) {
      const int64_t j = int64_t{t} * kKeys + threadIdx.x;
      const bool ok = j < p.n_keys;
      const int32_t f = ok ? from_head[j] : 0, u = ok ? until_head[j] : 0;
      from_s[stage][threadIdx.x] = f;
      length_s[stage][threadIdx.x] =
          u > f ? static_cast<uint32_t>(u) - static_cast<uint32_t>(f) : 0u;
    }
  };

  int t = next_visible(0);
  if (t < p.n_tiles) load(t, 0);
  CpAsyncCommit();
  for (int stage = 0; t < p.n_tiles; stage ^= 1) {
    const int t_next = next_visible(t + 1);
    if (t_next < p.n_tiles) load(t_next, stage ^ 1);
    CpAsyncCommit();
    CpAsyncWaitOne();
    __syncthreads();

    float s[kKeys / 8][4];
#pragma unroll
    for (int nt = 0; nt < kKeys / 8; ++nt) {
      s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
      for (int kc2 = 0; kc2 < 2; ++kc2) {
        uint32_t b[4];
        LdMatrixX4(b, &k_s[stage][nt * 8 + (lane & 7)][kc2 * 32 + (lane >> 3) * 8]);
        Mma(s[nt], qf[2 * kc2], b[0], b[1]);
        Mma(s[nt], qf[2 * kc2 + 1], b[2], b[3]);
      }
    }

    const TileBounds tb = bounds[t];
    const bool all_visible = tb.max_from <= q_lo && tb.min_until > q_hi;
    {
#pragma unroll
      for (int nt = 0; nt < kKeys / 8; ++nt) {
        const int2 f = *reinterpret_cast<const int2*>(&from_s[stage][nt * 8 + tig * 2]);
        const uint2 n = *reinterpret_cast<const uint2*>(&length_s[stage][nt * 8 + tig * 2]);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          // Invalid rows (past the last query) have query -1 and see nothing. (Testing
          // all_visible here rather than branching around the loop keeps ~30 registers free.)
          const uint32_t q = static_cast<uint32_t>(query[h]);
          if (!all_visible && q - static_cast<uint32_t>(f.x) >= n.x) s[nt][2 * h] = -INFINITY;
          if (!all_visible && q - static_cast<uint32_t>(f.y) >= n.y) s[nt][2 * h + 1] = -INFINITY;
        }
      }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float c = SoftmaxRow(s, h, p.scale_log2, &m[h], &l[h]);
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        o[nt][2 * h] *= c;
        o[nt][2 * h + 1] *= c;
      }
    }

#pragma unroll
    for (int kc = 0; kc < kKeys / 16; ++kc) {
      const uint32_t a[4] = {Pack(s[2 * kc][0], s[2 * kc][1]), Pack(s[2 * kc][2], s[2 * kc][3]),
                             Pack(s[2 * kc + 1][0], s[2 * kc + 1][1]),
                             Pack(s[2 * kc + 1][2], s[2 * kc + 1][3])};
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        uint32_t b[4];
        LdMatrixX4Trans(
            b,
            &v_s[stage][kc * 16 + (lane & 7) + ((lane >> 3) & 1) * 8][np * 16 + (lane >> 4) * 8]);
        Mma(o[2 * np], a, b[0], b[1]);
        Mma(o[2 * np + 1], a, b[2], b[3]);
      }
    }
    __syncthreads();  // the next iteration's load overwrites this stage
    t = t_next;
  }

#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float sum = QuadSum(l[h]);
    if (!valid[h]) continue;
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    const int64_t head = int64_t{g} * p.group + row[h] % p.group;
    __nv_bfloat16* dst = p.out + (int64_t{query[h]} * p.n_heads + head) * kHeadDim;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      *reinterpret_cast<uint32_t*>(dst + nt * 8 + tig * 2) =
          Pack(o[nt][2 * h] * inv, o[nt][2 * h + 1] * inv);
    }
  }
}

}  // namespace

int64_t AttentionBoundsBytes(int64_t n_kv_heads, int64_t n_keys) {
  constexpr int64_t kMinKeys = 32;  // the smallest tile any variant uses
  return n_kv_heads * ((n_keys + kMinKeys - 1) / kMinKeys) * int64_t{sizeof(TileBounds)};
}

cudaError_t Attention(const AttentionLaunch& a, cudaStream_t stream) {
  const int64_t tile_keys = a.variant >= 2 ? 32 : 64;
  const int64_t n_tiles = (a.n_keys + tile_keys - 1) / tile_keys;
  const int64_t total = a.n_kv_heads * n_tiles;
  TileBounds* bounds = static_cast<TileBounds*>(a.bounds);
  TileBoundsKernel<<<static_cast<unsigned>((total + 127) / 128), 128, 0, stream>>>(
      a.from, a.until, a.n_keys, tile_keys, n_tiles, total, bounds);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  const int group = static_cast<int>(a.n_heads / a.n_kv_heads);
  const Params p{reinterpret_cast<const __nv_bfloat16*>(a.q),
                 reinterpret_cast<const __nv_bfloat16*>(a.k),
                 reinterpret_cast<const __nv_bfloat16*>(a.v),
                 a.from,
                 a.until,
                 bounds,
                 reinterpret_cast<__nv_bfloat16*>(a.out),
                 a.n_q,
                 a.n_keys,
                 a.kv_stride,
                 static_cast<int>(a.n_heads),
                 group,
                 static_cast<int>(n_tiles),
                 a.scale * kLog2e};
  constexpr int64_t kRowsPerBlock = 64;  // every variant: 4 warps of 16 rows
  const dim3 grid(static_cast<unsigned>((a.n_q * group + kRowsPerBlock - 1) / kRowsPerBlock),
                  static_cast<unsigned>(a.n_kv_heads));
  switch (a.variant) {
    case 0:
      AttentionKernel<4, 1, 64><<<grid, 128, 0, stream>>>(p);
      break;
    case 1:
      AttentionKernel<4, 4, 64><<<grid, 128, 0, stream>>>(p);
      break;
    case 2:
      AttentionKernel<4, 1, 32><<<grid, 128, 0, stream>>>(p);
      break;
    default:
      AttentionKernel<4, 4, 32><<<grid, 128, 0, stream>>>(p);
      break;
  }
  return cudaGetLastError();
}

}  // namespace longread::kernels::cuda::launch
