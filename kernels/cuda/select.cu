// The SparseK memory's block selection on the device: the twin of engine/memory's
// SelectSegmentKeys (and of kernels::TopKExitTimes inside it) followed by the memory's fold, for
// every KV head of one layer at once, so a segment needs no host round trip per layer.
//
// Three launches:
// 1. Classify (one block per head): each key's position and score (held slot or segment key),
//    its first query, sinks and window keys (kept, visible to the end), and the candidate blocks
//    in key order (a block scan numbers them), with their join times and scores (max, or the
//    mean summed in key order as the host sums it, so the block scores are the host's bits).
// 2. Exit times (one warp per candidate): candidates join in key order and join times never
//    decrease along it, so candidate c leaves the top-k at the join time of the k-th candidate,
//    in index order, that beats it (higher score, or equal score and lower index), or when it
//    joins if that one joined earlier: exactly TopKExitTimes' heap result, without the heap.
// 3. Finish (one block per head): until/keep per key, then the fold: kept keys numbered in key
//    order become the new slots (positions and scores written to the spare arrays), evicted
//    keys numbered in key order are staged for the archive; each key gets its destination row.
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <cub/block/block_scan.cuh>

#include "kernels/cuda/launch.h"
#include "kernels/cuda/select_args.h"

namespace longread::kernels::cuda::launch {
namespace {

constexpr int kScanThreads = 1024;
constexpr int kItems = 4;
constexpr int64_t kTile = int64_t{kScanThreads} * kItems;
constexpr int32_t kForever = INT32_MAX;
using Scan = cub::BlockScan<int32_t, kScanThreads>;

struct Key {
  int64_t position;
  float score;
  int32_t first_query;
};

__device__ Key KeyAt(const SelectArgs& a, int32_t g, int64_t M, int64_t key) {
  if (key < M) return {a.positions[g * a.capacity + key], a.scores[g * a.capacity + key], 0};
  const int64_t j = key - M;
  return {a.first_position + j, a.token_scores[j * a.n_kv_heads + g], static_cast<int32_t>(j)};
}

// Dynamic shared memory of ClassifyKernel: each key's candidate and score, [n_keys] each, when
// they fit (the block scores then read them there, not through global memory).
constexpr int64_t kMaxKeyBytes = 192 * 1024;
int64_t KeySharedBytes(int64_t n_keys) { return n_keys * 8 <= kMaxKeyBytes ? n_keys * 8 : 0; }

// Each thread classifies kItems consecutive keys (one block scan numbers a tile of
// kScanThreads * kItems keys: the product's ~7K keys per head take two tiles, not seven chunks).
__global__ void __launch_bounds__(kScanThreads) ClassifyKernel(SelectArgs a, bool keys_in_shared) {
  __shared__ Scan::TempStorage scan;
  extern __shared__ int32_t key_shared[];
  int32_t* shared_cand = key_shared;
  float* shared_score = reinterpret_cast<float*>(key_shared + a.n_keys);
  const int32_t g = blockIdx.x;
  const int64_t M = a.counts[g], total = M + a.n, P = a.first_position, B = a.block_tokens;
  const int64_t row0 = g * a.n_keys;
  for (int64_t i = threadIdx.x; i < a.n; i += blockDim.x) {
    a.query_positions[i * a.n_kv_heads + g] = (a.slot_order ? M : P) + i;
  }
  int32_t carry = 0;
  for (int64_t base = 0; base < a.n_keys; base += kTile) {
    const int64_t first = base + int64_t{threadIdx.x} * kItems;
    int32_t starts[kItems];
    bool candidate[kItems];
    int64_t join[kItems];
    // The previous key's position (a new candidate starts after a sink or another block).
    int64_t prev = first > 0 && first - 1 < total ? KeyAt(a, g, M, first - 1).position : 0;
#pragma unroll
    for (int it = 0; it < kItems; ++it) {
      const int64_t key = first + it;
      starts[it] = 0;
      candidate[it] = false;
      join[it] = 0;
      if (key >= a.n_keys) continue;
      int32_t from = 0, until = 0;
      uint8_t keep = 0;
      if (key < total) {
        const Key k = KeyAt(a, g, M, key);
        a.rope_positions[row0 + key] = a.slot_order ? key : k.position;
        if (keys_in_shared) shared_score[key] = k.score;
        from = k.first_query;
        const int64_t block = k.position / B;
        join[it] = (block + 1) * B - 1 + a.window - P;
        candidate[it] = !a.keep_all && k.position >= a.sinks && join[it] <= a.n;
        if (!candidate[it]) {
          until = kForever;
          keep = 1;
        } else {
          starts[it] = key == 0 || prev < a.sinks || prev / B != block ? 1 : 0;
        }
        prev = k.position;
      } else {
        a.rope_positions[row0 + key] = 0;
      }
      a.from[row0 + key] = from;
      a.until[row0 + key] = until;
      a.keep[row0 + key] = keep;
    }
    int32_t inclusive[kItems];
    int32_t added = 0;
    Scan(scan).InclusiveSum(starts, inclusive, added);
#pragma unroll
    for (int it = 0; it < kItems; ++it) {
      const int64_t key = first + it;
      if (key >= a.n_keys) continue;
      const int32_t cand = candidate[it] ? carry + inclusive[it] - 1 : -1;
      a.key_cand[row0 + key] = cand;
      if (keys_in_shared) shared_cand[key] = cand;
      if (starts[it]) {
        a.cand_join[row0 + cand] = static_cast<int32_t>(join[it] > 0 ? join[it] : 0);
        a.cand_first_key[row0 + cand] = static_cast<int32_t>(key);
      }
    }
    carry += added;
    __syncthreads();  // the scan's storage is reused by the next tile
  }
  if (threadIdx.x == 0) a.cand_count[g] = carry;
  __syncthreads();
  // Block scores, each summed by one thread in key order (the host's order and rounding).
  const int32_t* cand_of = keys_in_shared ? shared_cand : a.key_cand + row0;
  for (int32_t c = threadIdx.x; c < carry; c += blockDim.x) {
    int64_t key = a.cand_first_key[row0 + c];
    float score = keys_in_shared ? shared_score[key] : KeyAt(a, g, M, key).score;
    float sum = 0.0f;
    int32_t size = 0;
    for (; key < total && cand_of[key] == c; ++key) {
      const float s = keys_in_shared ? shared_score[key] : KeyAt(a, g, M, key).score;
      score = score < s ? s : score;
      sum = __fadd_rn(sum, s);
      ++size;
    }
    a.cand_score[row0 + c] = a.mean ? __fdiv_rn(sum, static_cast<float>(size)) : score;
  }
}

// One warp per candidate: scan candidates in index order, 32 at a time, counting those that beat
// it until the k-th.
__global__ void ExitKernel(SelectArgs a) {
  const int32_t g = blockIdx.y;
  const int32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int32_t c = blockIdx.x * (blockDim.x / 32) + warp;
  const int32_t n_cand = a.cand_count[g];
  if (c >= n_cand) return;
  const int64_t row0 = g * a.n_keys;
  const float mine = a.cand_score[row0 + c];
  const int32_t my_join = a.cand_join[row0 + c];
  int32_t exit = a.k_blocks == 0 ? my_join : kForever;
  int32_t beaten = 0;
  for (int32_t base = 0; a.k_blocks > 0 && base < n_cand; base += 32) {
    const int32_t i = base + lane;
    bool better = false;
    if (i < n_cand) {
      const float s = a.cand_score[row0 + i];
      better = s > mine || (s == mine && i < c);
    }
    uint32_t mask = __ballot_sync(0xffffffffu, better);
    const int32_t found = __popc(mask);
    if (beaten + found >= a.k_blocks) {
      for (int32_t t = 1; t < a.k_blocks - beaten; ++t) mask &= mask - 1;
      const int32_t kth = base + __ffs(mask) - 1;
      const int32_t join = a.cand_join[row0 + kth];
      exit = join > my_join ? join : my_join;
      break;
    }
    beaten += found;
  }
  if (lane == 0) a.cand_exit[row0 + c] = exit;
}

__global__ void __launch_bounds__(kScanThreads) FinishKernel(SelectArgs a) {
  __shared__ Scan::TempStorage scan;
  const int32_t g = blockIdx.x;
  const int64_t M = a.counts[g], total = M + a.n;
  const int64_t row0 = g * a.n_keys, slot0 = g * a.capacity;
  __syncthreads();  // every thread has read the old count before it is replaced below
  int32_t kept_before = 0;
  for (int64_t base = 0; base < a.n_keys; base += kTile) {
    const int64_t first = base + int64_t{threadIdx.x} * kItems;
    int32_t kept[kItems];
#pragma unroll
    for (int it = 0; it < kItems; ++it) {
      const int64_t key = first + it;
      kept[it] = 0;
      if (key >= total) continue;
      const int32_t c = a.key_cand[row0 + key];
      if (c >= 0) {
        const int32_t exit = a.cand_exit[row0 + c];
        a.until[row0 + key] = exit;
        a.keep[row0 + key] = exit == kForever ? 1 : 0;
        kept[it] = exit == kForever ? 1 : 0;
      } else {
        kept[it] = 1;  // sinks, window and keys not yet candidates (ClassifyKernel kept them)
      }
    }
    int32_t exclusive[kItems];
    int32_t added = 0;
    Scan(scan).ExclusiveSum(kept, exclusive, added);
#pragma unroll
    for (int it = 0; it < kItems; ++it) {
      const int64_t key = first + it;
      if (key >= a.n_keys) continue;
      int32_t dst = kDropRow;
      if (key < total) {
        const Key k = KeyAt(a, g, M, key);
        const int32_t slot = kept_before + exclusive[it];
        if (kept[it]) {
          a.new_positions[slot0 + slot] = k.position;
          a.new_scores[slot0 + slot] = k.score;
          dst = slot;
        } else {
          const int32_t evicted = static_cast<int32_t>(key) - slot;
          if (a.evicted_positions != nullptr) {
            a.evicted_positions[slot0 + evicted] = k.position;
            a.evicted_scores[slot0 + evicted] = k.score;
          }
          dst = -evicted - 2;  // kDropRow is -1
        }
      }
      a.dst_row[row0 + key] = dst;
    }
    kept_before += added;
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    a.counts[g] = kept_before;
    if (a.evicted_counts != nullptr)
      a.evicted_counts[g] = static_cast<int32_t>(total) - kept_before;
  }
}

// Row r = (g, key): kept rows to their new slot in the spare buffers, evicted rows to staging,
// 16 bytes per thread.
__global__ void MoveKeptAndEvictedKernel(MoveRowsArgs a) {
  const int64_t chunks = a.row_elems / 8;
  const int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (idx >= a.n_kv_heads * a.n_keys * chunks) return;
  const int64_t chunk = idx % chunks, row = idx / chunks;
  const int64_t g = row / a.n_keys, key = row % a.n_keys;
  const int32_t dst = a.dst_row[row];
  if (dst == kDropRow) return;
  const int64_t src = (g * a.capacity + key) * chunks + chunk;
  if (dst >= 0) {
    const int64_t to = (g * a.capacity + dst) * chunks + chunk;
    reinterpret_cast<uint4*>(a.kept_keys)[to] = reinterpret_cast<const uint4*>(a.keys)[src];
    reinterpret_cast<uint4*>(a.kept_values)[to] = reinterpret_cast<const uint4*>(a.values)[src];
  } else if (a.staged_keys != nullptr) {
    const int64_t to = (g * a.capacity + (-dst - 2)) * chunks + chunk;
    reinterpret_cast<uint4*>(a.staged_keys)[to] = reinterpret_cast<const uint4*>(a.keys)[src];
    reinterpret_cast<uint4*>(a.staged_values)[to] = reinterpret_cast<const uint4*>(a.values)[src];
  }
}

// keys[g][M_g + j] = k[j][g] (and values), M_g read on the device.
__global__ void AppendKernel(const uint16_t* k, const uint16_t* v, const int32_t* counts, int64_t n,
                             int64_t n_kv, int64_t row_elems, int64_t capacity, uint16_t* keys,
                             uint16_t* values) {
  const int64_t chunks = row_elems / 8;
  const int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (idx >= n * n_kv * chunks) return;
  const int64_t chunk = idx % chunks, row = idx / chunks;  // row = j * n_kv + g
  const int64_t g = row % n_kv, j = row / n_kv;
  const int64_t to = (g * capacity + counts[g] + j) * chunks + chunk;
  reinterpret_cast<uint4*>(keys)[to] = reinterpret_cast<const uint4*>(k)[row * chunks + chunk];
  reinterpret_cast<uint4*>(values)[to] = reinterpret_cast<const uint4*>(v)[row * chunks + chunk];
}

// Evicted rows and their metadata from the device staging area into (mapped, pinned) host
// memory: exactly evicted_counts[g] rows per head, so the copy's size needs no host round trip.
__global__ void CopyEvictedKernel(EvictedCopyArgs a) {
  const int64_t chunks = a.row_elems / 8;
  const int32_t g = blockIdx.y;
  const int64_t count = a.evicted_counts[g];
  for (int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; idx < count * chunks;
       idx += int64_t{gridDim.x} * blockDim.x) {
    const int64_t at = (g * a.capacity) * chunks + idx;
    reinterpret_cast<uint4*>(a.host_keys)[at] = reinterpret_cast<const uint4*>(a.keys)[at];
    reinterpret_cast<uint4*>(a.host_values)[at] = reinterpret_cast<const uint4*>(a.values)[at];
    if (idx % chunks == 0) {
      const int64_t e = g * a.capacity + idx / chunks;
      a.host_positions[e] = a.positions[e];
      a.host_scores[e] = a.scores[e];
    }
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) a.host_counts[g] = static_cast<int32_t>(count);
}

unsigned Blocks(int64_t n, int threads) {
  return static_cast<unsigned>((n + threads - 1) / threads);
}

}  // namespace

cudaError_t SelectSegment(const SelectArgs& a, cudaStream_t stream) {
  // Raised once per process: the kernel's dynamic shared memory beyond the default 48 KB.
  static const cudaError_t raised = cudaFuncSetAttribute(
      ClassifyKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kMaxKeyBytes));
  if (raised != cudaSuccess) return raised;
  const int64_t key_bytes = KeySharedBytes(a.n_keys);
  ClassifyKernel<<<static_cast<unsigned>(a.n_kv_heads), kScanThreads,
                   static_cast<size_t>(key_bytes), stream>>>(a, key_bytes > 0);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  constexpr int kWarps = 8;
  if (!a.keep_all) {
    const dim3 grid(Blocks(a.n_keys, kWarps), static_cast<unsigned>(a.n_kv_heads));
    ExitKernel<<<grid, kWarps * 32, 0, stream>>>(a);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  }
  FinishKernel<<<static_cast<unsigned>(a.n_kv_heads), kScanThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

cudaError_t MoveKeptAndEvicted(const MoveRowsArgs& a, cudaStream_t stream) {
  const int64_t work = a.n_kv_heads * a.n_keys * (a.row_elems / 8);
  if (work == 0) return cudaSuccess;
  MoveKeptAndEvictedKernel<<<Blocks(work, 256), 256, 0, stream>>>(a);
  return cudaGetLastError();
}

cudaError_t AppendSegment(const uint16_t* k, const uint16_t* v, const int32_t* counts, int64_t n,
                          int64_t n_kv_heads, int64_t row_elems, int64_t capacity, uint16_t* keys,
                          uint16_t* values, cudaStream_t stream) {
  const int64_t work = n * n_kv_heads * (row_elems / 8);
  if (work == 0) return cudaSuccess;
  AppendKernel<<<Blocks(work, 256), 256, 0, stream>>>(k, v, counts, n, n_kv_heads, row_elems,
                                                      capacity, keys, values);
  return cudaGetLastError();
}

cudaError_t CopyEvicted(const EvictedCopyArgs& a, cudaStream_t stream) {
  const dim3 grid(64, static_cast<unsigned>(a.n_kv_heads));
  CopyEvictedKernel<<<grid, 256, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace longread::kernels::cuda::launch
