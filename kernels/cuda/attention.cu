// Attention of a segment over memory ∪ segment with per-key visibility intervals, FlashAttention-2
// style: a block owns 64 rows of (query, query head) pairs of one KV head (4 warps x 16 rows),
// streams 64-key K/V tiles through shared memory (cp.async, two stages), computes S = Q K^T and
// O += P V with bf16 mma.sync (fp32 accumulators) and keeps the online softmax in registers.
// Softmax is a sum over keys, so the keys may be visited in any order: a first pass orders each
// KV head's keys by their interval (never-visible keys last), so that a tile holds keys that
// appear and leave together. Per-tile interval bounds, computed next, let a block skip key tiles
// none of its queries can see and drop the per-element mask on tiles all of them see; the
// ordering makes both cases the common ones (bench/gpu/NOTES.md, v4).
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

// Each KV head's keys in visiting order: key index, and interval clamped to [0, n_q] as from and
// length (0 for a key no query sees). Visibility of key j to query i: uint32(i - from) < length.
struct KeyOrder {
  int32_t* index;  // [n_kv_heads][n_keys]; nullptr: the identity
  int32_t* from;
  uint32_t* length;
};

// The sort key packs the clamped interval above the key index so that the order is total and
// deterministic: from (25 bits), until (25 bits), index (14 bits).
constexpr int kOrderIndexBits = 14;
constexpr int64_t kMaxOrderedKeys = int64_t{1} << kOrderIndexBits;
constexpr int kOrderThreads = 1024;
constexpr uint64_t kIntervalMask = (uint64_t{1} << 25) - 1;

__device__ __forceinline__ void ClampInterval(int32_t from, int32_t until, int64_t n_q, int32_t* f,
                                              int32_t* u) {
  const int32_t n = static_cast<int32_t>(n_q);
  *f = min(max(from, 0), n);
  *u = min(max(until, 0), n);
  if (*f >= *u) *f = *u = n;  // never visible: sorts last, length 0
}

// One block per KV head: a bitonic sort in shared memory of n_pad (a power of two >= n_keys)
// packed entries, then the ordered index, from and length.
__global__ void __launch_bounds__(kOrderThreads)
    OrderKeysKernel(const int32_t* from, const int32_t* until, int64_t n_keys, int64_t n_q,
                    int n_pad, KeyOrder order) {
  extern __shared__ uint64_t entries[];
  const int64_t g = blockIdx.x;
  const uint64_t n_clamp = min(static_cast<uint64_t>(n_q), kIntervalMask);
  for (int j = threadIdx.x; j < n_pad; j += kOrderThreads) {
    uint64_t e = ~uint64_t{0};
    if (j < n_keys) {
      int32_t f, u;
      ClampInterval(from[g * n_keys + j], until[g * n_keys + j], n_q, &f, &u);
      const uint64_t fk = min(static_cast<uint64_t>(f), n_clamp),
                     uk = min(static_cast<uint64_t>(u), n_clamp);
      e = (fk << (25 + kOrderIndexBits)) | (uk << kOrderIndexBits) | static_cast<uint64_t>(j);
    }
    entries[j] = e;
  }
  __syncthreads();
  for (int k = 2; k <= n_pad; k <<= 1) {
    for (int stride = k >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < n_pad; i += kOrderThreads) {
        const int partner = i ^ stride;
        if (partner <= i) continue;
        const uint64_t a = entries[i], b = entries[partner];
        if ((a > b) == ((i & k) == 0)) {
          entries[i] = b;
          entries[partner] = a;
        }
      }
      __syncthreads();
    }
  }
  for (int j = threadIdx.x; j < n_keys; j += kOrderThreads) {
    const int32_t key = static_cast<int32_t>(entries[j] & (kMaxOrderedKeys - 1));
    int32_t f, u;
    ClampInterval(from[g * n_keys + key], until[g * n_keys + key], n_q, &f, &u);
    order.index[g * n_keys + j] = key;
    order.from[g * n_keys + j] = f;
    order.length[g * n_keys + j] = static_cast<uint32_t>(u - f);
  }
}

// The identity order (unordered variants, and more keys than the sort holds).
__global__ void IdentityOrderKernel(const int32_t* from, const int32_t* until, int64_t total,
                                    int64_t n_q, KeyOrder order) {
  const int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (idx >= total) return;
  int32_t f, u;
  ClampInterval(from[idx], until[idx], n_q, &f, &u);
  order.from[idx] = f;
  order.length[idx] = static_cast<uint32_t>(u - f);
}

__global__ void TileBoundsKernel(KeyOrder order, int64_t n_keys, int64_t tile_keys, int64_t n_tiles,
                                 int64_t total, TileBounds* out) {
  const int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (idx >= total) return;
  const int64_t g = idx / n_tiles, t = idx % n_tiles;
  TileBounds b{INT_MAX, INT_MIN, INT_MIN, INT_MAX};
  const int64_t j0 = t * tile_keys, j1 = min(j0 + tile_keys, n_keys);
  bool all = j1 - j0 == tile_keys;
  for (int64_t j = j0; j < j1; ++j) {
    const int32_t f = order.from[g * n_keys + j];
    const uint32_t n = order.length[g * n_keys + j];
    if (n == 0) {
      all = false;
      continue;
    }
    const int32_t u = f + static_cast<int32_t>(n);
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
  KeyOrder order;
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

// Online-softmax step for this thread's two rows (s[nt][2 * h + e], -inf where masked, raw
// scores): turns the scores into probabilities exp2(s * scale_log2 - m * scale_log2) (one FFMA
// and one EX2 each) and keeps the accumulator o and the row sums l consistent with the running
// max m, which stays in the raw domain (scale_log2 > 0). kLazy: m moves (and o is rescaled) only
// when some row of the warp grows past kLazyRescaleLog2, a warp-uniform branch.
template <int kNt, bool kLazy>
__device__ __forceinline__ void OnlineSoftmax(float (&s)[kNt][4], float (&o)[8][4],
                                              float scale_log2, float (&m)[2], float (&l)[2]) {
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
          new_m == -INFINITY ? 1.0f : exp2f((m[h] - new_m) * scale_log2);  // exp2(-inf) = 0
      m[h] = new_m;
      l[h] *= correction;
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
        const float p = exp2f(fmaf(s[nt][2 * h + e], scale_log2, -base));
        s[nt][2 * h + e] = p;
        sum += p;
      }
    }
    l[h] += sum;
  }
}

template <int kKeys, int kStages>
constexpr int AttentionSharedBytes() {
  return kStages * kKeys * (2 * kStride * int{sizeof(__nv_bfloat16)} + 2 * int{sizeof(int32_t)});
}

// kWarps warps of 16 rows each, tiles of kKeys keys; kMinBlocks caps the registers so that
// many blocks fit per SM. kBranchMask: tiles that every row sees skip the mask by a branch
// (rather than by predicates); kLazy: see OnlineSoftmax. kPipelined: S = Q K^T of the next tile
// is issued before the softmax of this one, so that the tensor cores work while the ALUs do the
// softmax (three shared-memory stages, one barrier per tile).
template <int kWarps, int kMinBlocks, int kKeys, bool kBranchMask, bool kLazy, bool kPipelined>
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
  // Key j is visible to query i iff uint32(i - from) < length (= until - from, 0 when empty): one
  // compare per score, and query -1 (rows past the end) sees nothing.
  uint32_t(*length_s)[kKeys] = reinterpret_cast<uint32_t(*)[kKeys]>(from_s + kStages);

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
  const int32_t* index_head =
      p.order.index == nullptr ? nullptr : p.order.index + int64_t{g} * p.n_keys;
  const int32_t* from_head = p.order.from + int64_t{g} * p.n_keys;
  const uint32_t* length_head = p.order.length + int64_t{g} * p.n_keys;

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
      const int64_t row = !ok ? 0 : index_head == nullptr ? j : index_head[j];
      const int64_t offset = row * kHeadDim + chunk * 8;
      CpAsync16(&k_s[stage][key][chunk * 8], k_head + offset, ok);
      CpAsync16(&v_s[stage][key][chunk * 8], v_head + offset, ok);
    }
    if (threadIdx.x < kKeys) {
      const int64_t j = int64_t{t} * kKeys + threadIdx.x;
      const bool ok = j < p.n_keys;
      from_s[stage][threadIdx.x] = ok ? from_head[j] : 0;
      length_s[stage][threadIdx.x] = ok ? length_head[j] : 0u;
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
    const TileBounds tb = bounds[t];
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
    OnlineSoftmax<kNt, kLazy>(s, o, p.scale_log2, m, l);
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

namespace {

// What the set-up passes of each variant (launch.h) need; the kernel's build is in Attention.
struct VariantShape {
  bool ordered;  // keys ordered by interval (else memory order)
  int keys;      // per tile
};
constexpr VariantShape kVariants[kAttentionVariants] = {
    {false, 64}, {true, 64}, {true, 64}, {true, 64}, {true, 32}, {true, 64}, {true, 64}};

int64_t BoundsOnlyBytes(int64_t n_kv_heads, int64_t n_keys) {
  constexpr int64_t kMinKeys = 32;  // the smallest tile any variant uses
  return n_kv_heads * ((n_keys + kMinKeys - 1) / kMinKeys) * int64_t{sizeof(TileBounds)};
}

template <int kMinBlocks, int kKeys, bool kBranchMask, bool kLazy, bool kPipelined>
cudaError_t Launch(const dim3& grid, const Params& p, cudaStream_t stream) {
  constexpr int kShared = AttentionSharedBytes < kKeys, kPipelined ? 3 : 2 > ();
  auto* kernel = AttentionKernel<4, kMinBlocks, kKeys, kBranchMask, kLazy, kPipelined>;
  static const cudaError_t raised =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kShared);
  if (raised != cudaSuccess) return raised;
  kernel<<<grid, 128, kShared, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

int64_t AttentionBoundsBytes(int64_t n_kv_heads, int64_t n_keys) {
  // Tile bounds, then the key order's index, from and length.
  return BoundsOnlyBytes(n_kv_heads, n_keys) + 3 * n_kv_heads * n_keys * int64_t{sizeof(int32_t)};
}

cudaError_t Attention(const AttentionLaunch& a, cudaStream_t stream) {
  const VariantShape& shape = kVariants[a.variant];
  const int64_t tile_keys = shape.keys;
  const int64_t n_tiles = (a.n_keys + tile_keys - 1) / tile_keys;
  const int64_t total = a.n_kv_heads * n_tiles;
  char* scratch = static_cast<char*>(a.bounds);
  TileBounds* bounds = reinterpret_cast<TileBounds*>(scratch);
  int32_t* order_arrays =
      reinterpret_cast<int32_t*>(scratch + BoundsOnlyBytes(a.n_kv_heads, a.n_keys));
  const int64_t n_all = a.n_kv_heads * a.n_keys;
  KeyOrder order{order_arrays, order_arrays + n_all,
                 reinterpret_cast<uint32_t*>(order_arrays + 2 * n_all)};
  if (shape.ordered && a.n_keys <= kMaxOrderedKeys) {
    int n_pad = 2;
    while (n_pad < a.n_keys) n_pad *= 2;
    const size_t smem = size_t{sizeof(uint64_t)} * n_pad;
    static const cudaError_t raised =
        cudaFuncSetAttribute(OrderKeysKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(sizeof(uint64_t) * kMaxOrderedKeys));
    if (raised != cudaSuccess) return raised;
    OrderKeysKernel<<<static_cast<unsigned>(a.n_kv_heads), kOrderThreads, smem, stream>>>(
        a.from, a.until, a.n_keys, a.n_q, n_pad, order);
  } else {
    order.index = nullptr;
    IdentityOrderKernel<<<static_cast<unsigned>((n_all + 255) / 256), 256, 0, stream>>>(
        a.from, a.until, n_all, a.n_q, order);
  }
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  TileBoundsKernel<<<static_cast<unsigned>((total + 127) / 128), 128, 0, stream>>>(
      order, a.n_keys, tile_keys, n_tiles, total, bounds);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  const int group = static_cast<int>(a.n_heads / a.n_kv_heads);
  const Params p{reinterpret_cast<const __nv_bfloat16*>(a.q),
                 reinterpret_cast<const __nv_bfloat16*>(a.k),
                 reinterpret_cast<const __nv_bfloat16*>(a.v),
                 order,
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
  // <register cap (blocks per SM), key tile, mask by branch, lazy rescale, pipelined>
  switch (a.variant) {
    case 0:
    case 1:
      return Launch<1, 64, false, false, false>(grid, p, stream);
    case 2:
      return Launch<1, 64, false, true, false>(grid, p, stream);
    case 3:
      return Launch<1, 64, true, true, false>(grid, p, stream);
    case 4:
      return Launch<1, 32, false, true, false>(grid, p, stream);
    case 5:
      return Launch<1, 64, true, true, true>(grid, p, stream);
    default:
      return Launch<3, 64, true, true, false>(grid, p, stream);
  }
}

}  // namespace longread::kernels::cuda::launch
