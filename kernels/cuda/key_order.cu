// The segment attention's first pass (attention.cu): each KV head's keys put in an order where
// keys that appear and leave together are neighbours, with K and V rows copied in that order.
// Softmax sums over keys, so any order is correct; this one makes most key tiles either wholly
// visible or wholly invisible to a tile of queries (bench/gpu/NOTES.md, v4 and v5).
//
// A stable counting sort over coarse buckets of the interval [from, until) clamped to the
// segment: keys visible from the start by their until, later keys by their from, never-visible
// keys last. Three launches over chunks of 256 keys, all heads at once: per-chunk bucket counts,
// one exclusive scan per head over (bucket, chunk), then each key's place = its bucket's chunk
// offset + its rank among the chunk's earlier keys of that bucket (warp match + per-warp counts).
#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/cuda/launch.h"

namespace longread::kernels::cuda::launch {
namespace {

constexpr int kChunk = 256;  // keys per block, threads per block
constexpr int kHalfBuckets = kKeyOrderBuckets / 2 - 1;
constexpr int kNeverBucket = kKeyOrderBuckets - 2;
constexpr int kRowElems = 64;  // head_dim

__device__ __forceinline__ void Clamp(int32_t from, int32_t until, int32_t n, int32_t* f,
                                      int32_t* u) {
  *f = min(max(from, 0), n);
  *u = min(max(until, 0), n);
  if (*f >= *u) *f = *u = n;  // never visible: length 0
}

// Buckets of `per` queries: [0, kHalfBuckets) keys visible from query 0, by until; then keys
// that appear later, by from; kNeverBucket for keys no query sees.
__device__ __forceinline__ int Bucket(int32_t f, int32_t u, int32_t n) {
  const int32_t per = static_cast<int32_t>((int64_t{n} + kHalfBuckets - 1) / kHalfBuckets);
  if (f >= u) return kNeverBucket;
  if (f == 0) return (u - 1) / per;
  return kHalfBuckets + f / per;
}

__global__ void __launch_bounds__(kChunk) CountKernel(KeyOrderLaunch a, int n_chunks) {
  __shared__ int hist[kKeyOrderBuckets];
  const int64_t g = blockIdx.y;
  for (int b = threadIdx.x; b < kKeyOrderBuckets; b += kChunk) hist[b] = 0;
  __syncthreads();
  const int64_t j = int64_t{blockIdx.x} * kChunk + threadIdx.x;
  if (j < a.n_keys) {
    int32_t f, u;
    const int32_t n = static_cast<int32_t>(a.n_q);
    Clamp(a.from[g * a.n_keys + j], a.until[g * a.n_keys + j], n, &f, &u);
    atomicAdd(&hist[Bucket(f, u, n)], 1);
  }
  __syncthreads();
  int32_t* counts = a.counts + g * kKeyOrderBuckets * n_chunks;
  for (int b = threadIdx.x; b < kKeyOrderBuckets; b += kChunk) {
    counts[int64_t{b} * n_chunks + blockIdx.x] = hist[b];
  }
}

// Exclusive scan, in place, of one head's kKeyOrderBuckets * n_chunks counts (bucket-major).
constexpr int kScanThreads = 1024;
__global__ void __launch_bounds__(kScanThreads) ScanKernel(KeyOrderLaunch a, int n_chunks) {
  __shared__ int warp_sums[kScanThreads / 32];
  const int total = kKeyOrderBuckets * n_chunks;
  const int per = (total + kScanThreads - 1) / kScanThreads;
  int32_t* counts = a.counts + int64_t{blockIdx.x} * total;
  const int begin = min(total, static_cast<int>(threadIdx.x) * per), end = min(total, begin + per);
  int sum = 0;
  for (int i = begin; i < end; ++i) sum += counts[i];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int inclusive = sum;
  for (int d = 1; d < 32; d *= 2) {
    const int x = __shfl_up_sync(0xffffffffu, inclusive, d);
    if (lane >= d) inclusive += x;
  }
  if (lane == 31) warp_sums[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    int w = warp_sums[lane];
    for (int d = 1; d < 32; d *= 2) {
      const int x = __shfl_up_sync(0xffffffffu, w, d);
      if (lane >= d) w += x;
    }
    warp_sums[lane] = w;  // inclusive over warps
  }
  __syncthreads();
  int running = inclusive - sum + (warp > 0 ? warp_sums[warp - 1] : 0);
  for (int i = begin; i < end; ++i) {
    const int c = counts[i];
    counts[i] = running;
    running += c;
  }
}

__global__ void __launch_bounds__(kChunk) PlaceKernel(KeyOrderLaunch a, int n_chunks) {
  constexpr int kWarps = kChunk / 32;
  __shared__ uint8_t warp_counts[kWarps][kKeyOrderBuckets];  // at most 32 each
  const int64_t g = blockIdx.y;
  for (int i = threadIdx.x; i < kWarps * kKeyOrderBuckets; i += kChunk) {
    warp_counts[i / kKeyOrderBuckets][i % kKeyOrderBuckets] = 0;
  }
  __syncthreads();
  const int64_t j = int64_t{blockIdx.x} * kChunk + threadIdx.x;
  const bool ok = j < a.n_keys;
  const int32_t n = static_cast<int32_t>(a.n_q);
  int32_t f = n, u = n;
  if (ok) Clamp(a.from[g * a.n_keys + j], a.until[g * a.n_keys + j], n, &f, &u);
  const int bucket = ok ? Bucket(f, u, n) : -1;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const unsigned same = __match_any_sync(0xffffffffu, bucket);
  if (ok && lane == __ffs(same) - 1) warp_counts[warp][bucket] = __popc(same);
  __syncthreads();
  int64_t dest = -1;
  if (ok) {
    int rank = __popc(same & ((1u << lane) - 1));
    for (int w = 0; w < warp; ++w) rank += warp_counts[w][bucket];
    dest = a.counts[(g * kKeyOrderBuckets + bucket) * n_chunks + blockIdx.x] + int64_t{rank};
    a.ordered_from[g * a.n_keys + dest] = f;
    a.ordered_length[g * a.n_keys + dest] = static_cast<uint32_t>(u - f);
  }
  // The warp's 32 rows of K and V, 4 rows of 8 16-byte chunks per instruction (coalesced).
  constexpr int kChunksPerRow = kRowElems * 2 / 16;
  const uint4* k = reinterpret_cast<const uint4*>(a.k);
  const uint4* v = reinterpret_cast<const uint4*>(a.v);
  uint4* k_out = reinterpret_cast<uint4*>(a.ordered_k);
  uint4* v_out = reinterpret_cast<uint4*>(a.ordered_v);
#pragma unroll
  for (int it = 0; it < 32 * kChunksPerRow / 32; ++it) {
    const int r = it * (32 / kChunksPerRow) + lane / kChunksPerRow, c = lane % kChunksPerRow;
    const int64_t d = __shfl_sync(0xffffffffu, dest, r);
    if (d < 0) continue;
    const int64_t src = g * a.kv_stride + (j - lane + r);
    k_out[(g * a.n_keys + d) * kChunksPerRow + c] = k[src * kChunksPerRow + c];
    v_out[(g * a.n_keys + d) * kChunksPerRow + c] = v[src * kChunksPerRow + c];
  }
}

__global__ void ClampKernel(KeyOrderLaunch a, int64_t total) {
  const int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (idx >= total) return;
  int32_t f, u;
  Clamp(a.from[idx], a.until[idx], static_cast<int32_t>(a.n_q), &f, &u);
  a.ordered_from[idx] = f;
  a.ordered_length[idx] = static_cast<uint32_t>(u - f);
}

}  // namespace

int64_t KeyOrderCounts(int64_t n_kv_heads, int64_t n_keys) {
  return n_kv_heads * kKeyOrderBuckets * ((n_keys + kChunk - 1) / kChunk);
}

cudaError_t OrderKeys(const KeyOrderLaunch& a, cudaStream_t stream) {
  const int n_chunks = static_cast<int>((a.n_keys + kChunk - 1) / kChunk);
  const dim3 grid(static_cast<unsigned>(n_chunks), static_cast<unsigned>(a.n_kv_heads));
  CountKernel<<<grid, kChunk, 0, stream>>>(a, n_chunks);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  ScanKernel<<<static_cast<unsigned>(a.n_kv_heads), kScanThreads, 0, stream>>>(a, n_chunks);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  PlaceKernel<<<grid, kChunk, 0, stream>>>(a, n_chunks);
  return cudaGetLastError();
}

cudaError_t ClampIntervals(const KeyOrderLaunch& a, cudaStream_t stream) {
  const int64_t total = a.n_kv_heads * a.n_keys;
  ClampKernel<<<static_cast<unsigned>((total + 255) / 256), 256, 0, stream>>>(a, total);
  return cudaGetLastError();
}

}  // namespace longread::kernels::cuda::launch
