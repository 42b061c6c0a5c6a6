// Attention of a segment over memory ∪ segment with per-key visibility intervals, FlashAttention-2
// style: a block owns 64 rows of (query, query head) pairs of one KV head (4 warps x 16 rows),
// streams 64-key K/V tiles through shared memory (cp.async), computes S = Q K^T and O += P V
// with bf16 mma.sync (fp32 accumulators) and keeps the online softmax in registers.
// Softmax is a sum over keys, so the keys may be visited in any order: a first pass
// (key_order.cu) copies each KV head's keys in an order where keys that appear and leave together
// are neighbours. Per-tile interval bounds, computed next, let a block skip key tiles none of its
// queries can see and drop the per-element mask on tiles all of them see; the ordering makes
// both cases the common ones (bench/gpu/NOTES.md, v4 and v5).
#include <cuda_bf16.h>

#include <algorithm>
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

// Keys of a KV head as the attention visits them (key_order.cu): from and length = until - from
// clamped to [0, n_q], 0 for a key no query sees. Key j is visible to query i iff
// uint32(i - from) < length: one compare per score, and query -1 (rows past the end) sees nothing.
struct KeyIntervals {
  const int32_t* from;  // [n_kv_heads][n_keys]
  const uint32_t* length;
};

// One warp per tile of up to 64 keys.
// Also zeroes the attention's row-tile counter.
__global__ void TileBoundsKernel(KeyIntervals keys, int64_t n_keys, int tile_keys, int64_t n_tiles,
                                 int64_t total, TileBounds* out, int* next_row_tile) {
  if (blockIdx.x == 0 && threadIdx.x == 0) *next_row_tile = 0;
  const int64_t idx = (blockIdx.x * int64_t{blockDim.x} + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (idx >= total) return;  // whole warps
  const int64_t g = idx / n_tiles, t = idx % n_tiles;
  int32_t min_from = INT_MAX, max_until = INT_MIN, max_from = INT_MIN, min_until = INT_MAX;
  bool all = true;
  for (int k = lane; k < tile_keys; k += 32) {
    const int64_t j = t * tile_keys + k;
    const uint32_t n = j < n_keys ? keys.length[g * n_keys + j] : 0u;
    if (n == 0) {
      all = false;
      continue;
    }
    const int32_t f = keys.from[g * n_keys + j], u = f + static_cast<int32_t>(n);
    min_from = min(min_from, f);
    max_until = max(max_until, u);
    max_from = max(max_from, f);
    min_until = min(min_until, u);
  }
  TileBounds b{__reduce_min_sync(0xffffffffu, min_from), __reduce_max_sync(0xffffffffu, max_until),
               __reduce_max_sync(0xffffffffu, max_from), __reduce_min_sync(0xffffffffu, min_until)};
  if (!__all_sync(0xffffffffu, all)) b.max_from = INT_MAX;
  if (lane == 0) out[idx] = b;
}

struct Params {
  const __nv_bfloat16* q;
  const __nv_bfloat16* k;
  const __nv_bfloat16* v;
  KeyIntervals keys;
  const TileBounds* bounds;
  __nv_bfloat16* out;
  int64_t n_q, n_keys, kv_stride;
  int n_heads, group, n_tiles;
  float scale_log2;
  int n_kv_heads, row_tiles;  // row tiles per KV head
  int* next_row_tile;         // persistent blocks take row tiles from this counter (zeroed)
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

// 16 bytes global -> shared.
__device__ __forceinline__ void CpAsync16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(SharedAddress(dst)), "l"(src));
}
// 16 bytes global -> shared; zero-filled when !valid (keys past n_keys).
__device__ __forceinline__ void CpAsync16OrZero(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(SharedAddress(dst)),
               "l"(src), "r"(valid ? 16 : 0));
}
// 4 bytes global -> shared; zero-filled when !valid.
__device__ __forceinline__ void CpAsync4(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(SharedAddress(dst)), "l"(src),
               "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void CpAsyncWaitOne() {
  asm volatile("cp.async.wait_group 1;\n" ::: "memory");
}
__device__ __forceinline__ void CpAsyncWaitAll() {
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
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

// Rescaling the accumulator is needed only when a row's running max grows by more than this (in
// exp2 units): probabilities computed against a stale max stay below 2^8, harmless in fp32 sums
// and bf16 products, and the final division by the row sum cancels the choice of max.
constexpr float kLazyRescaleLog2 = 8.0f;

// 2^x on the special-function unit, flushing to 0 below 2^-126: exp2f's range fix-up for
// subnormal results costs three more instructions per score.
__device__ __forceinline__ float Exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Online-softmax step for this thread's two rows (s[nt][2 * h + e], -inf where masked, raw
// scores): turns the scores into probabilities exp2(s * scale_log2 - m * scale_log2) (one FFMA
// and one EX2 each) and keeps the accumulator o and the row sums l consistent with the running
// max m, which stays in the raw domain (scale_log2 > 0). kLazy: m moves (and o is rescaled) only
// when some row of the warp grows past kLazyRescaleLog2, a warp-uniform branch. Row h's sum is
// l[2 * h]: kSumByMma leaves it to the P V step (an MMA against ones), else this thread's part of
// it is added here (a quad sum at the end completes it).
template <int kNt, bool kLazy, bool kSumByMma>
__device__ __forceinline__ void OnlineSoftmax(float (&s)[kNt][4], float (&o)[8][4],
                                              float scale_log2, float (&m)[2], float (&l)[4]) {
  float tile_max[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float mx = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < kNt; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * h], s[nt][2 * h + 1]));
    tile_max[h] = QuadMax(mx);
  }
  bool rescale = true;
  if constexpr (kLazy) {
    // -inf -> finite gives +inf (rescale); -inf -> -inf gives NaN (nothing seen yet: no rescale).
    const bool grows = (fmaxf(m[0], tile_max[0]) - m[0]) * scale_log2 > kLazyRescaleLog2 ||
                       (fmaxf(m[1], tile_max[1]) - m[1]) * scale_log2 > kLazyRescaleLog2;
    rescale = __any_sync(0xffffffffu, grows);
  }
  if (rescale) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float new_m = fmaxf(m[h], tile_max[h]);
      const float correction =
          new_m == -INFINITY ? 1.0f : Exp2((m[h] - new_m) * scale_log2);  // exp2(-inf) = 0
      m[h] = new_m;
      l[2 * h] *= correction;
      l[2 * h + 1] *= correction;
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        o[nt][2 * h] *= correction;
        o[nt][2 * h + 1] *= correction;
      }
    }
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float base = m[h] == -INFINITY ? 0.0f : m[h] * scale_log2;  // nothing visible: p = 0
    float sum = 0;
#pragma unroll
    for (int nt = 0; nt < kNt; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float p = Exp2(fmaf(s[nt][2 * h + e], scale_log2, -base));
        s[nt][2 * h + e] = p;
        sum += p;
      }
    }
    if constexpr (!kSumByMma) l[2 * h] += sum;
  }
}

// A block scans the bounds of every key tile to find the next one it must visit: the first
// kCachedTiles of them are read from shared memory (a scan of global loads stalled the loop).
constexpr int kCachedTiles = 256;

template <int kKeys, int kStages>
constexpr int AttentionSharedBytes() {
  return kStages * kKeys * (2 * kStride * int{sizeof(__nv_bfloat16)} + 2 * int{sizeof(int32_t)}) +
         kCachedTiles * int{sizeof(TileBounds)};
}

// kWarps warps of 16 rows each, tiles of kKeys keys; kMinBlocks caps the registers so that
// many blocks fit per SM. kBranchMask: tiles that every row sees skip the mask by a branch
// (rather than by predicates); kLazy: see OnlineSoftmax. kPipelined: S = Q K^T of the next tile
// is issued before the softmax of this one, so that the tensor cores work while the ALUs do the
// softmax (three shared-memory stages, one barrier per tile). kSumByMma: see OnlineSoftmax.
template <int kWarps, int kMinBlocks, int kKeys, bool kBranchMask, bool kLazy, bool kPipelined,
          bool kSumByMma, bool kPersistent>
__global__ void __launch_bounds__(kWarps * 32, kMinBlocks) AttentionKernel(const Params p) {
  constexpr int kThreads = kWarps * 32;
  constexpr int kRows = kWarps * 16;  // (query, head) rows per block
  constexpr int kStages = kPipelined ? 3 : 2;
  constexpr int kNt = kKeys / 8;
  using KeyTile = __nv_bfloat16[kKeys][kStride];
  extern __shared__ __align__(128) unsigned char attention_shared[];
  KeyTile* k_s = reinterpret_cast<KeyTile*>(attention_shared);
  KeyTile* v_s = k_s + kStages;
  int32_t(*from_s)[kKeys] = reinterpret_cast<int32_t(*)[kKeys]>(v_s + kStages);
  uint32_t(*length_s)[kKeys] = reinterpret_cast<uint32_t(*)[kKeys]>(from_s + kStages);
  TileBounds* bounds_s = reinterpret_cast<TileBounds*>(length_s + kStages);

  // Rows [row0, row0 + kRows) of KV head g's (query, query head) rows.
  auto attend = [&](const int g, const int64_t row0) {
    const int64_t total_rows = p.n_q * p.group;
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
    float m[2] = {-INFINITY, -INFINITY}, l[4] = {0.0f, 0.0f, 0.0f, 0.0f};

    const TileBounds* bounds = p.bounds + int64_t{g} * p.n_tiles;
    const __nv_bfloat16* k_head = p.k + int64_t{g} * p.kv_stride * kHeadDim;
    const __nv_bfloat16* v_head = p.v + int64_t{g} * p.kv_stride * kHeadDim;
    const int32_t* from_head = p.keys.from + int64_t{g} * p.n_keys;
    const uint32_t* length_head = p.keys.length + int64_t{g} * p.n_keys;
    for (int t = threadIdx.x; t < min(p.n_tiles, kCachedTiles); t += kThreads)
      bounds_s[t] = bounds[t];
    __syncthreads();
    auto tile_bounds = [&](int t) { return t < kCachedTiles ? bounds_s[t] : bounds[t]; };

    auto next_visible = [&](int t) {
      for (; t < p.n_tiles; ++t) {
        const TileBounds b = tile_bounds(t);
        if (b.min_from <= q_hi && b.max_until > q_lo) break;
      }
      return t;
    };
    // Each thread copies one 16-byte chunk of kKeys / kKeysPerPass keys of a tile (K and V).
    constexpr int kChunksPerRow = kHeadDim / 8, kKeysPerPass = kThreads / kChunksPerRow;
    const int load_key = threadIdx.x / kChunksPerRow, load_chunk = threadIdx.x % kChunksPerRow;
    const int64_t load_offset = int64_t{load_key} * kHeadDim + load_chunk * 8;
    auto load = [&](int t, int stage) {
      const __nv_bfloat16* k_src = k_head + int64_t{t} * kKeys * kHeadDim + load_offset;
      const __nv_bfloat16* v_src = v_head + int64_t{t} * kKeys * kHeadDim + load_offset;
      const int64_t left = p.n_keys - int64_t{t} * kKeys;  // keys of this tile that exist
      if (left >= kKeys) {  // all but the last tile: no bounds checks
#pragma unroll
        for (int pass = 0; pass < kKeys / kKeysPerPass; ++pass) {
          const int key = load_key + pass * kKeysPerPass;
          CpAsync16(&k_s[stage][key][load_chunk * 8], k_src + pass * kKeysPerPass * kHeadDim);
          CpAsync16(&v_s[stage][key][load_chunk * 8], v_src + pass * kKeysPerPass * kHeadDim);
        }
      } else {
#pragma unroll
        for (int pass = 0; pass < kKeys / kKeysPerPass; ++pass) {
          const int key = load_key + pass * kKeysPerPass;
          const bool ok = key < left;
          const int step = pass * kKeysPerPass * kHeadDim;
          CpAsync16OrZero(&k_s[stage][key][load_chunk * 8], ok ? k_src + step : k_head, ok);
          CpAsync16OrZero(&v_s[stage][key][load_chunk * 8], ok ? v_src + step : v_head, ok);
        }
      }
      if (threadIdx.x < kKeys) {
        const bool ok = threadIdx.x < left;
        const int64_t j = ok ? int64_t{t} * kKeys + threadIdx.x : 0;
        CpAsync4(&from_s[stage][threadIdx.x], from_head + j, ok);
        CpAsync4(&length_s[stage][threadIdx.x], length_head + j, ok);
      }
    };
    auto scores = [&](float(&s)[kNt][4], int stage) {
#pragma unroll
      for (int nt = 0; nt < kNt; ++nt) {
        s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
        for (int kc2 = 0; kc2 < 2; ++kc2) {
          uint32_t b[4];
          LdMatrixX4(b, &k_s[stage][nt * 8 + (lane & 7)][kc2 * 32 + (lane >> 3) * 8]);
          Mma(s[nt], qf[2 * kc2], b[0], b[1]);
          Mma(s[nt], qf[2 * kc2 + 1], b[2], b[3]);
        }
      }
    };
    // Mask, online softmax and O += P V of tile t, whose scores are s.
    auto accumulate = [&](float(&s)[kNt][4], int stage, int t) {
      const TileBounds tb = tile_bounds(t);
      const bool all_visible = tb.max_from <= q_lo && tb.min_until > q_hi;
      auto mask = [&](bool skip) {
#pragma unroll
        for (int nt = 0; nt < kNt; ++nt) {
          const int2 f = *reinterpret_cast<const int2*>(&from_s[stage][nt * 8 + tig * 2]);
          const uint2 n = *reinterpret_cast<const uint2*>(&length_s[stage][nt * 8 + tig * 2]);
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            // Invalid rows (past the last query) have query -1 and see nothing.
            const uint32_t q = static_cast<uint32_t>(query[h]);
            if (!skip && q - static_cast<uint32_t>(f.x) >= n.x) s[nt][2 * h] = -INFINITY;
            if (!skip && q - static_cast<uint32_t>(f.y) >= n.y) s[nt][2 * h + 1] = -INFINITY;
          }
        }
      };
      if constexpr (kBranchMask) {
        if (!all_visible) mask(false);
      } else {
        mask(all_visible);  // predicates rather than a branch (NOTES.md, v3)
      }
      OnlineSoftmax<kNt, kLazy, kSumByMma>(s, o, p.scale_log2, m, l);
#pragma unroll
      for (int kc = 0; kc < kKeys / 16; ++kc) {
        const uint32_t a[4] = {Pack(s[2 * kc][0], s[2 * kc][1]), Pack(s[2 * kc][2], s[2 * kc][3]),
                               Pack(s[2 * kc + 1][0], s[2 * kc + 1][1]),
                               Pack(s[2 * kc + 1][2], s[2 * kc + 1][3])};
        if constexpr (kSumByMma) {
          constexpr uint32_t kOnes = 0x3F803F80u;  // two bf16 1.0
          Mma(l, a, kOnes, kOnes);
        }
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
    };

    int t = next_visible(0);
    if constexpr (kPipelined) {
      // Tile t sits in `stage`, its successor t_next in the next stage; the load of the one after
      // goes to the stage freed by the previous tile, after the barrier that ends its use.
      int t_next = p.n_tiles;
      float s[kNt][4];
      if (t < p.n_tiles) {
        load(t, 0);
        CpAsyncCommit();
        CpAsyncWaitAll();
        __syncthreads();
        t_next = next_visible(t + 1);
        if (t_next < p.n_tiles) load(t_next, 1);
        CpAsyncCommit();
        scores(s, 0);
      }
      for (int stage = 0; t < p.n_tiles; stage = stage == kStages - 1 ? 0 : stage + 1) {
        const int next_stage = stage == kStages - 1 ? 0 : stage + 1;
        const int free_stage = next_stage == kStages - 1 ? 0 : next_stage + 1;
        CpAsyncWaitAll();  // t_next has landed
        __syncthreads();   // for every thread; and every warp is done with free_stage's tile
        const int t_after = t_next < p.n_tiles ? next_visible(t_next + 1) : p.n_tiles;
        if (t_after < p.n_tiles) load(t_after, free_stage);
        CpAsyncCommit();
        float s_next[kNt][4];
        if (t_next < p.n_tiles) {
          scores(s_next, next_stage);
        } else {
#pragma unroll
          for (int nt = 0; nt < kNt; ++nt)
            s_next[nt][0] = s_next[nt][1] = s_next[nt][2] = s_next[nt][3] = 0.0f;
        }
        accumulate(s, stage, t);
#pragma unroll
        for (int nt = 0; nt < kNt; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) s[nt][e] = s_next[nt][e];
        }
        t = t_next;
        t_next = t_after;
      }
    } else {
      if (t < p.n_tiles) load(t, 0);
      CpAsyncCommit();
      for (int stage = 0; t < p.n_tiles; stage ^= 1) {
        const int t_next = next_visible(t + 1);
        if (t_next < p.n_tiles) load(t_next, stage ^ 1);
        CpAsyncCommit();
        CpAsyncWaitOne();
        __syncthreads();
        float s[kNt][4];
        scores(s, stage);
        accumulate(s, stage, t);
        __syncthreads();  // the next iteration's load overwrites this stage
        t = t_next;
      }
    }

#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float sum = kSumByMma ? l[2 * h] : QuadSum(l[2 * h]);
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
  };

  // Causal row tiles see more keys the later they are: the heaviest go first.
  if constexpr (kPersistent) {
    // As many blocks as fit at once, each taking the next row tile until none is left: no tail
    // wave of blocks started late.
    __shared__ int next_s;
    for (;;) {
      if (threadIdx.x == 0) next_s = atomicAdd(p.next_row_tile, 1);
      __syncthreads();
      const int idx = next_s;
      if (idx >= p.row_tiles * p.n_kv_heads) break;
      attend(idx % p.n_kv_heads, int64_t{p.row_tiles - 1 - idx / p.n_kv_heads} * kRows);
      __syncthreads();  // shared memory (and next_s) is reused by the next row tile
    }
  } else {
    attend(blockIdx.y, static_cast<int64_t>(gridDim.x - 1 - blockIdx.x) * kRows);
  }
}

}  // namespace

namespace {

// Keys are ordered (key_order.cu) only up to this many per KV head: beyond, the copies of K and
// V would cost more scratch than they save.
constexpr int64_t kMaxOrderedKeys = 16384;
// Nor for fewer (query, head) rows per KV head than this (decode): a row tile or two gain little
// from the order, and its three passes cost ~30 us per call (NOTES.md, v5).
constexpr int64_t kMinOrderedRows = 256;
constexpr bool kOrderedVariant[kAttentionVariants] = {false, true, true, true, false, true, true};
constexpr int kTileKeys = 64;

int64_t RoundUp(int64_t bytes) { return (bytes + 255) / 256 * 256; }

// The scratch behind AttentionLaunch::bounds, in order.
struct Scratch {
  TileBounds* bounds;
  int32_t* from;
  uint32_t* length;
  int* next_row_tile;
  int32_t* counts;  // the key ordering's, when it runs
  uint16_t* k;      // K and V rows in visiting order, when ordered
  uint16_t* v;
  int64_t bytes;
};
Scratch LayOutScratch(char* base, int64_t n_kv_heads, int64_t n_keys) {
  const int64_t n_all = n_kv_heads * n_keys;
  const int64_t n_tiles = (n_keys + kTileKeys - 1) / kTileKeys;
  const bool orders = n_keys <= kMaxOrderedKeys;
  int64_t at = 0;
  auto take = [&](int64_t bytes) {
    char* p = base == nullptr ? nullptr : base + at;
    at += RoundUp(bytes);
    return p;
  };
  Scratch s;
  s.bounds =
      reinterpret_cast<TileBounds*>(take(n_kv_heads * n_tiles * int64_t{sizeof(TileBounds)}));
  s.from = reinterpret_cast<int32_t*>(take(n_all * 4));
  s.length = reinterpret_cast<uint32_t*>(take(n_all * 4));
  s.next_row_tile = reinterpret_cast<int*>(take(sizeof(int)));
  s.counts = reinterpret_cast<int32_t*>(take(orders ? KeyOrderCounts(n_kv_heads, n_keys) * 4 : 0));
  s.k = reinterpret_cast<uint16_t*>(take(orders ? n_all * 64 * 2 : 0));
  s.v = reinterpret_cast<uint16_t*>(take(orders ? n_all * 64 * 2 : 0));
  s.bytes = at;
  return s;
}

template <int kMinBlocks, int kKeys, bool kBranchMask, bool kLazy, bool kPipelined, bool kSumByMma,
          bool kPersistent = false>
cudaError_t Launch(dim3 grid, const Params& p, cudaStream_t stream) {
  constexpr int kShared = AttentionSharedBytes < kKeys, kPipelined ? 3 : 2 > ();
  auto* kernel =
      AttentionKernel<4, kMinBlocks, kKeys, kBranchMask, kLazy, kPipelined, kSumByMma, kPersistent>;
  static const cudaError_t raised =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kShared);
  if (raised != cudaSuccess) return raised;
  if constexpr (kPersistent) {
    struct Resident {
      cudaError_t error;
      int blocks;  // that the whole GPU runs at once
    };
    static const Resident resident = [&] {
      int device = 0, sms = 0, per_sm = 0;
      cudaError_t e = cudaGetDevice(&device);
      if (e == cudaSuccess)
        e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
      if (e == cudaSuccess) {
        e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, 128, kShared);
      }
      return Resident{e, std::max(1, sms * per_sm)};
    }();
    if (resident.error != cudaSuccess) return resident.error;
    grid = dim3(static_cast<unsigned>(std::min(resident.blocks, p.row_tiles * p.n_kv_heads)));
  }
  kernel<<<grid, 128, kShared, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

int64_t AttentionBoundsBytes(int64_t n_kv_heads, int64_t n_keys) {
  return LayOutScratch(nullptr, n_kv_heads, n_keys).bytes;
}

cudaError_t Attention(const AttentionLaunch& a, cudaStream_t stream) {
  const Scratch scratch = LayOutScratch(static_cast<char*>(a.bounds), a.n_kv_heads, a.n_keys);
  const bool ordered = kOrderedVariant[a.variant] && a.n_keys <= kMaxOrderedKeys &&
                       a.n_q * (a.n_heads / a.n_kv_heads) >= kMinOrderedRows;
  const KeyOrderLaunch order{a.from,    a.until,   a.k,           a.v,          a.kv_stride,
                             a.n_q,     a.n_keys,  a.n_kv_heads,  scratch.from, scratch.length,
                             scratch.k, scratch.v, scratch.counts};
  if (cudaError_t e = ordered ? OrderKeys(order, stream) : ClampIntervals(order, stream);
      e != cudaSuccess) {
    return e;
  }
  const int64_t n_tiles = (a.n_keys + kTileKeys - 1) / kTileKeys;
  const int64_t total = a.n_kv_heads * n_tiles;  // one warp each
  TileBoundsKernel<<<static_cast<unsigned>((total + 3) / 4), 128, 0, stream>>>(
      KeyIntervals{scratch.from, scratch.length}, a.n_keys, kTileKeys, n_tiles, total,
      scratch.bounds, scratch.next_row_tile);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  constexpr int64_t kRowsPerBlock = 64;  // every variant: 4 warps of 16 rows
  const int group = static_cast<int>(a.n_heads / a.n_kv_heads);
  const Params p{reinterpret_cast<const __nv_bfloat16*>(a.q),
                 reinterpret_cast<const __nv_bfloat16*>(ordered ? scratch.k : a.k),
                 reinterpret_cast<const __nv_bfloat16*>(ordered ? scratch.v : a.v),
                 KeyIntervals{scratch.from, scratch.length},
                 scratch.bounds,
                 reinterpret_cast<__nv_bfloat16*>(a.out),
                 a.n_q,
                 a.n_keys,
                 ordered ? a.n_keys : a.kv_stride,
                 static_cast<int>(a.n_heads),
                 group,
                 static_cast<int>(n_tiles),
                 a.scale * kLog2e,
                 static_cast<int>(a.n_kv_heads),
                 static_cast<int>((a.n_q * group + kRowsPerBlock - 1) / kRowsPerBlock),
                 scratch.next_row_tile};
  const dim3 grid(static_cast<unsigned>((a.n_q * group + kRowsPerBlock - 1) / kRowsPerBlock),
                  static_cast<unsigned>(a.n_kv_heads));
  // <register cap (blocks per SM), key tile, mask by branch, lazy, pipelined, sum by MMA,
  //  persistent>
  switch (a.variant) {
    case 0:
      return Launch<1, kTileKeys, false, false, false, false>(grid, p, stream);
    case 1:
      return Launch<1, kTileKeys, false, true, false, false>(grid, p, stream);
    case 2:
      return Launch<3, kTileKeys, true, true, false, false>(grid, p, stream);
    case 3:
    case 4:
      return Launch<3, kTileKeys, true, true, false, true>(grid, p, stream);
    case 5:
      return Launch<3, kTileKeys, true, true, true, true>(grid, p, stream);
    default:
      return Launch<3, kTileKeys, true, true, false, true, true>(grid, p, stream);
  }
}

}  // namespace longread::kernels::cuda::launch
