// The device twin of engine/model/sampler.cc's ChooseToken: one block per choice, so that a
// decode step hands back a token id instead of a row of logits. Same arithmetic where it decides
// a greedy token (the controls' float division and product, the first largest); for sampling,
// the probabilities are exp() in double rounded to float (the host's expf is correctly rounded
// but for rare last-bit cases), the masses are double sums in another order, and the nucleus and
// the drawn token are found by bisecting over the probabilities' float bits instead of sorting:
// the same token as the host but where a sum falls within rounding of a boundary.
#include <cfloat>
#include <climits>
#include <cmath>

#include "kernels/cuda/launch.h"

namespace longread::kernels::cuda::launch {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int32_t kOneBits = 0x3F800000;  // 1.0f: the largest probability (exp(0))

// Sum over the block (all kThreads threads call it); every thread gets the result.
__device__ double BlockSum(double v) {
  __shared__ double partial[kWarps];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // `partial` may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = partial[lane];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ float BlockMax(float v) {
  __shared__ float partial[kWarps];
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = partial[lane];
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Exclusive prefix sum over the threads in thread order (double, or counts).
template <typename T>
__device__ T BlockExclusiveScan(T v) {
  __shared__ T partial[kWarps];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  T inclusive = v;
  for (int o = 1; o < 32; o <<= 1) {
    const T other = __shfl_up_sync(0xffffffffu, inclusive, o);
    if (lane >= o) inclusive += other;
  }
  __syncthreads();
  if (lane == 31) partial[warp] = inclusive;
  __syncthreads();
  T before = 0;
  for (int w = 0; w < warp; ++w) before += partial[w];
  return before + inclusive - v;
}

// The smallest of the ids the threads propose (INT_MAX: none).
__device__ int32_t BlockMinId(int32_t id) {
  __shared__ int32_t best;
  __syncthreads();
  if (threadIdx.x == 0) best = INT_MAX;
  __syncthreads();
  if (id != INT_MAX) atomicMin(&best, id);
  __syncthreads();
  return best;
}

// Each thread's contiguous range of ids (ordered scans need id order).
struct Chunk {
  int64_t begin, end;
};
__device__ Chunk MyChunk(int64_t vocab) {
  const int64_t per = (vocab + kThreads - 1) / kThreads;
  const int64_t begin = min(vocab, threadIdx.x * per);
  return {begin, min(vocab, begin + per)};
}

// Mass of the probabilities >= the float with bits `b` (all of them: b = 0).
__device__ double MassFrom(const float* p, int64_t vocab, int32_t b) {
  const float v = __int_as_float(b);
  double s = 0;
  for (int64_t i = threadIdx.x; i < vocab; i += kThreads) s += p[i] >= v ? p[i] : 0.0f;
  return BlockSum(s);
}

// The largest b in [lo, hi] with MassFrom(b) >= target, given MassFrom(lo) >= target.
__device__ int32_t LastBitsReaching(const float* p, int64_t vocab, int32_t lo, int32_t hi,
                                    double target) {
  while (lo < hi) {
    const int32_t mid = lo + (hi - lo + 1) / 2;
    if (MassFrom(p, vocab, mid) >= target) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// The id of the j-th (from 1) smallest id whose probability is exactly v (the last one if fewer).
__device__ int32_t NthWithValue(const float* p, int64_t vocab, float v, int64_t j) {
  const Chunk c = MyChunk(vocab);
  int64_t mine = 0;
  for (int64_t i = c.begin; i < c.end; ++i) mine += p[i] == v;
  const int64_t before = BlockExclusiveScan<long long>(static_cast<long long>(mine));
  const int64_t total = BlockSum(static_cast<double>(mine));  // < 2^53: exact
  const int64_t want = min(j, total);
  int32_t found = INT_MAX;
  if (want > before && want <= before + mine) {
    int64_t seen = before;
    for (int64_t i = c.begin; i < c.end; ++i) {
      if (p[i] == v && ++seen == want) {
        found = static_cast<int32_t>(i);
        break;
      }
    }
  }
  return BlockMinId(found);
}

__global__ void __launch_bounds__(kThreads) SampleKernel(SampleArgs a) {
  const int64_t vocab = a.vocab;
  float* x = a.scratch;
  for (int64_t i = threadIdx.x; i < vocab; i += kThreads) x[i] = a.logits[i];
  __syncthreads();
  // The controls, in the host's order (penalized ids are distinct: no two threads meet).
  for (int32_t k = threadIdx.x; k < a.n_penalized; k += kThreads) {
    const int32_t t = a.penalized[k];
    if (t < 0 || t >= vocab) continue;
    const float l = x[t];
    x[t] = l > 0 ? l / a.repeat_penalty : l * a.repeat_penalty;
  }
  __syncthreads();
  for (int32_t k = threadIdx.x; k < a.n_banned; k += kThreads) {
    const int32_t t = a.banned[k];
    if (t >= 0 && t < vocab) x[t] = -INFINITY;
  }
  __syncthreads();

  if (a.temperature <= 0.0f) {
    // Argmax: the first largest; the host's loop never moves off a NaN at id 0, and NaN never
    // wins elsewhere.
    float best = -FLT_MAX;
    int32_t best_i = INT_MAX;
    for (int64_t i = threadIdx.x; i < vocab; i += kThreads) {
      const float v = x[i];
      if (v > best || (v == best && i < best_i)) {
        best = v;
        best_i = static_cast<int32_t>(i);
      }
    }
    const float top = BlockMax(best);
    const int32_t id = BlockMinId(best == top ? best_i : INT_MAX);
    if (threadIdx.x == 0) *a.out = (id == INT_MAX || isnan(x[0])) ? 0 : id;
    return;
  }

  float local_max = -INFINITY;
  for (int64_t i = threadIdx.x; i < vocab; i += kThreads) local_max = fmaxf(local_max, x[i]);
  const float max_logit = BlockMax(local_max);
  double local = 0;
  __syncthreads();  // every thread has read x before any overwrites it
  for (int64_t i = threadIdx.x; i < vocab; i += kThreads) {
    const float z = (x[i] - max_logit) / a.temperature;
    const float p = static_cast<float>(exp(static_cast<double>(z)));
    x[i] = p;
    local += p;
  }
  const double total = BlockSum(local);  // BlockSum's barrier also publishes every x[i]

  if (a.top_p >= 1.0f) {
    // No nucleus: the host walks every token in id order.
    const double r = a.uniform * total;
    const Chunk c = MyChunk(vocab);
    double mine = 0;
    for (int64_t i = c.begin; i < c.end; ++i) mine += x[i];
    double running = BlockExclusiveScan<double>(mine);
    int32_t found = INT_MAX;
    if (running + mine >= r) {
      for (int64_t i = c.begin; i < c.end; ++i) {
        running += x[i];
        if (running >= r) {
          found = static_cast<int32_t>(i);
          break;
        }
      }
    }
    const int32_t id = BlockMinId(found);
    if (threadIdx.x == 0) *a.out = id == INT_MAX ? static_cast<int32_t>(vocab - 1) : id;
    return;
  }

  // The nucleus: every probability above v, then the first `m` ids at v, where v is the value
  // at which the descending running mass first reaches top_p x total.
  const double target = a.top_p * total;
  const int32_t v_bits = LastBitsReaching(x, vocab, 0, kOneBits, target);
  const float v = __int_as_float(v_bits);
  const double above = v_bits == kOneBits ? 0.0 : MassFrom(x, vocab, v_bits + 1);
  __shared__ long long ties_kept;
  __shared__ double kept_mass;
  {
    // Ties at v join one by one in id order, as the host's loop adds them.
    const Chunk c = MyChunk(vocab);
    long long mine = 0;
    for (int64_t i = c.begin; i < c.end; ++i) mine += x[i] == v;
    const long long ties = static_cast<long long>(BlockSum(static_cast<double>(mine)));
    if (threadIdx.x == 0) {
      double cumulative = above;
      long long m = 0;
      while (m < ties) {
        cumulative += v;
        ++m;
        if (cumulative >= target) break;
      }
      ties_kept = m;
      kept_mass = cumulative;
    }
    __syncthreads();
  }
  const double r = a.uniform * kept_mass;
  int32_t id;
  if (r <= above && v_bits != kOneBits) {
    // Above v: the value w at which the descending running mass reaches r, then the tie at w.
    const int32_t w_bits = LastBitsReaching(x, vocab, v_bits + 1, kOneBits, r);
    const float w = __int_as_float(w_bits);
    const double over = w_bits == kOneBits ? 0.0 : MassFrom(x, vocab, w_bits + 1);
    __shared__ long long j_at_w;
    if (threadIdx.x == 0) {
      double cumulative = over;
      long long j = 0;
      do {
        cumulative += w;
        ++j;
      } while (cumulative < r && j < vocab);
      j_at_w = j;
    }
    __syncthreads();
    id = NthWithValue(x, vocab, w, j_at_w);
  } else {
    __shared__ long long j_at_v;
    if (threadIdx.x == 0) {
      double cumulative = above;
      long long j = 0;
      do {
        cumulative += v;
        ++j;
      } while (cumulative < r && j < ties_kept);
      j_at_v = j;
    }
    __syncthreads();
    id = NthWithValue(x, vocab, v, j_at_v);
  }
  // Nothing found only when every probability is NaN (every token excluded): the host then
  // returns its last candidate, the last id.
  if (threadIdx.x == 0) *a.out = id == INT_MAX ? static_cast<int32_t>(vocab - 1) : id;
}

}  // namespace

cudaError_t SampleToken(const SampleArgs& a, cudaStream_t stream) {
  SampleKernel<<<1, kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace longread::kernels::cuda::launch
