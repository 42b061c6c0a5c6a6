// One layer's attention of one segment over the SparseK memory on the GPU (kernels/cuda):
// 9 query heads, 3 KV heads, head dim 64, bf16, s sinks + k selected keys (blocks of B) + a
// window of w, segment L. The visibility intervals are the memory's own: top-k block selection
// over random scores (kernels::TopKExitTimes), blocks joining as they leave the window. Times
// RoPE of the segment's queries and of every key (the memory rotates un-rotated keys at
// attention time) and the attention kernel with CUDA events; writes JSON for bench/gpu/report.py.
//
//   attention_bench [--json PATH] [--reps N] [--sinks 4] [--top-k 2048] [--window 1024]
//                   [--segment 4096] [--block 32] [--variant -1] [--sweep 1] [--layout-only 1]
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/launch.h"
#include "kernels/half.h"
#include "kernels/sparsek.h"

namespace longread {
namespace {

using kernels::cuda::Bf16;
using kernels::cuda::DeviceBuffer;

struct Options {
  std::string json;
  int reps = 50;
  int64_t sinks = 4, top_k = 2048, window = 1024, segment = 4096, block = 32;
  int64_t n_heads = 9, n_kv_heads = 3, head_dim = 64;
  bool layout_only = false;  // print the tile statistics and stop (no GPU needed)
  int variant = -1;          // the kernel variant of the headline number (-1: the default)
  bool sweep = true;         // time every variant first (--sweep 0: only the headline one)
};

void Die(const std::string& what) {
  std::fprintf(stderr, "attention_bench: %s\n", what.c_str());
  std::exit(1);
}

template <typename T>
void DieIf(const T& status_or) {
  if (!status_or.ok()) Die(std::string(status_or.message()));
}

// Keys: [sinks | memory blocks (top_k) | previous window (w) | segment (L)], per KV head.
// Positions: the segment starts at P (a multiple of the block size); the previous window holds
// P-w..P-1; memory blocks hold older positions.
struct Layout {
  int64_t n_keys = 0;
  std::vector<int32_t> from, until;  // [kv_head][key]
  std::vector<int64_t> positions;    // [key] (the same for every head)
  int64_t visible_pairs = 0;         // sum over (kv head, query) of visible keys
};

Layout BuildLayout(const Options& o, std::mt19937& rng) {
  const int64_t P = int64_t{1} << 20, L = o.segment, B = o.block, w = o.window;
  const int64_t memory_blocks = o.top_k / B;
  Layout lay;
  lay.n_keys = o.sinks + o.top_k + w + L;
  for (int64_t j = 0; j < o.sinks; ++j) lay.positions.push_back(j);
  for (int64_t b = 0; b < memory_blocks; ++b) {
    const int64_t start = o.sinks + B * (b * 7);  // spread over the document's past
    for (int64_t j = 0; j < B; ++j) lay.positions.push_back(start + j);
  }
  for (int64_t j = 0; j < w + L; ++j) lay.positions.push_back(P - w + j);

  std::uniform_real_distribution<float> score(0.0f, 1.0f);
  for (int64_t g = 0; g < o.n_kv_heads; ++g) {
    // Candidate blocks in age order: the memory's, then the previous window's and the segment's
    // blocks that leave the window during this segment.
    std::vector<float> scores;
    std::vector<int32_t> join;
    std::vector<int32_t> key_candidate(lay.n_keys, -1);
    for (int64_t b = 0; b < memory_blocks; ++b) {
      for (int64_t j = 0; j < B; ++j) key_candidate[o.sinks + b * B + j] = int32_t(scores.size());
      scores.push_back(score(rng));
      join.push_back(0);
    }
    const int64_t first = o.sinks + o.top_k;
    for (int64_t b = 0; b < (w + L) / B; ++b) {
      const int64_t last_position = P - w + (b + 1) * B - 1;
      const int64_t leaves = last_position + w - P;  // first query that no longer sees it
      if (leaves > L) continue;
      for (int64_t j = 0; j < B; ++j) key_candidate[first + b * B + j] = int32_t(scores.size());
      scores.push_back(score(rng));
      join.push_back(static_cast<int32_t>(leaves));
    }
    std::vector<int32_t> exit(scores.size());
    if (absl::Status s =
            kernels::TopKExitTimes(scores, join, static_cast<int32_t>(memory_blocks), exit);
        !s.ok()) {
      Die(std::string(s.message()));
    }
    for (int64_t j = 0; j < lay.n_keys; ++j) {
      const bool segment_key = j >= first + w;
      lay.from.push_back(segment_key ? static_cast<int32_t>(j - first - w) : 0);
      lay.until.push_back(key_candidate[j] < 0 ? kernels::kNeverExits : exit[key_candidate[j]]);
    }
  }
  for (int64_t g = 0; g < o.n_kv_heads; ++g) {
    for (int64_t j = 0; j < lay.n_keys; ++j) {
      const int64_t a = lay.from[g * lay.n_keys + j];
      const int64_t b = std::min<int64_t>(lay.until[g * lay.n_keys + j], L);
      lay.visible_pairs += std::max<int64_t>(0, b - a);
    }
  }
  return lay;
}

// The share of the (row, key) pairs in the tiles a kernel with `rows`-row and `keys`-key tiles
// computes that are visible: the kernel skips a key tile when no key of it is visible to any
// query of the row tile (by the tile's min from / max until).
double ProcessedPairs(const Options& o, const Layout& lay, int64_t rows, int64_t keys,
                      double* mask_free = nullptr) {
  const int64_t group = o.n_heads / o.n_kv_heads, L = o.segment,
                n_tiles = (lay.n_keys + keys - 1) / keys;
  double processed = 0, unmasked = 0;
  for (int64_t g = 0; g < o.n_kv_heads; ++g) {
    for (int64_t r0 = 0; r0 < L * group; r0 += rows) {
      const int64_t q_lo = r0 / group, q_hi = (std::min(r0 + rows, L * group) - 1) / group;
      for (int64_t t = 0; t < n_tiles; ++t) {
        int64_t min_from = INT32_MAX, max_until = INT32_MIN, max_from = INT32_MIN,
                min_until = INT32_MAX;
        bool full = (t + 1) * keys <= lay.n_keys;
        for (int64_t j = t * keys; j < std::min((t + 1) * keys, lay.n_keys); ++j) {
          const int32_t f = lay.from[g * lay.n_keys + j], u = lay.until[g * lay.n_keys + j];
          if (f >= u) {
            full = false;
            continue;
          }
          min_from = std::min<int64_t>(min_from, f);
          max_until = std::max<int64_t>(max_until, u);
          max_from = std::max<int64_t>(max_from, f);
          min_until = std::min<int64_t>(min_until, u);
        }
        if (min_from <= q_hi && max_until > q_lo) processed += double(rows) * keys;
        if (full && max_from <= q_lo && min_until > q_hi) unmasked += double(rows) * keys;
      }
    }
  }
  if (mask_free != nullptr) *mask_free = unmasked / processed;
  return processed;
}

// The layout with each KV head's keys in the order the kernel's key ordering puts them
// (kernels/cuda/key_order.cu): a stable sort by bucket of the interval clamped to the segment.
Layout OrderedByInterval(const Options& o, const Layout& lay) {
  Layout sorted = lay;
  sorted.from.clear();
  sorted.until.clear();
  const int32_t n = static_cast<int32_t>(o.segment);
  const int32_t half = kernels::cuda::launch::kKeyOrderBuckets / 2 - 1, per = (n + half - 1) / half;
  for (int64_t g = 0; g < o.n_kv_heads; ++g) {
    std::vector<std::pair<int32_t, int64_t>> keys;  // (bucket, key)
    for (int64_t j = 0; j < lay.n_keys; ++j) {
      const int32_t f = std::clamp(lay.from[g * lay.n_keys + j], 0, n),
                    u = std::clamp(lay.until[g * lay.n_keys + j], 0, n);
      keys.emplace_back(f >= u ? 2 * half : f == 0 ? (u - 1) / per : half + f / per, j);
    }
    std::stable_sort(keys.begin(), keys.end());
    for (const auto& [bucket, j] : keys) {
      sorted.from.push_back(lay.from[g * lay.n_keys + j]);
      sorted.until.push_back(lay.until[g * lay.n_keys + j]);
    }
  }
  return sorted;
}

template <typename T>
DeviceBuffer ToDevice(kernels::cuda::Context& ctx, const std::vector<T>& v) {
  auto b = DeviceBuffer::Allocate(static_cast<int64_t>(v.size() * sizeof(T)));
  DieIf(b.status());
  DieIf(kernels::cuda::Upload(ctx, v.data(), b->bytes(), b->as<void>()));
  return std::move(*b);
}

std::vector<uint16_t> RandomBf16(int64_t n, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<uint16_t> v(n);
  for (auto& x : v) x = kernels::FloatToBFloat16(normal(rng));
  return v;
}

// Median milliseconds of `reps` runs of `body`, each between two events on `stream`.
template <typename F>
double MedianMs(cudaStream_t stream, int reps, F body) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  for (int i = 0; i < 3; ++i) body();
  std::vector<float> ms(reps);
  for (int i = 0; i < reps; ++i) {
    cudaEventRecord(start, stream);
    body();
    cudaEventRecord(stop, stream);
    cudaEventSynchronize(stop);
    cudaEventElapsedTime(&ms[i], start, stop);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(ms.begin(), ms.end());
  return ms[reps / 2];
}

int Main(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--json") {
      o.json = value;
    } else if (flag == "--reps") {
      o.reps = std::atoi(value.c_str());
    } else if (flag == "--sinks") {
      o.sinks = std::atoll(value.c_str());
    } else if (flag == "--top-k") {
      o.top_k = std::atoll(value.c_str());
    } else if (flag == "--window") {
      o.window = std::atoll(value.c_str());
    } else if (flag == "--segment") {
      o.segment = std::atoll(value.c_str());
    } else if (flag == "--block") {
      o.block = std::atoll(value.c_str());
    } else if (flag == "--variant") {
      o.variant = std::atoi(value.c_str());
    } else if (flag == "--sweep") {
      o.sweep = value != "0";
    } else if (flag == "--layout-only") {
      o.layout_only = value == "1";
    } else {
      Die("unknown flag " + flag);
    }
  }
  if (o.reps < 1 || o.top_k % o.block != 0 || o.window % o.block != 0 || o.segment % o.block != 0) {
    Die("--reps >= 1; --top-k, --window and --segment multiples of --block");
  }
  std::mt19937 rng(12345);
  const Layout lay = BuildLayout(o, rng);
  const double useful_pairs = double(lay.visible_pairs) * (o.n_heads / o.n_kv_heads);
  double mask_free_64 = 0, mask_free_ordered = 0;
  const double processed_64 = ProcessedPairs(o, lay, 64, 64, &mask_free_64),
               processed_32 = ProcessedPairs(o, lay, 64, 32);
  const Layout ordered = OrderedByInterval(o, lay);
  const double ordered_64 = ProcessedPairs(o, ordered, 64, 64, &mask_free_ordered);
  std::printf(
      "visible share of computed pairs: %.3f (64-key tiles), %.3f (32-key tiles), %.3f "
      "(64-key tiles, keys ordered by interval)\n",
      useful_pairs / processed_64, useful_pairs / processed_32, useful_pairs / ordered_64);
  std::printf("share of computed tiles needing no mask: %.3f (64-key tiles), %.3f (ordered)\n",
              mask_free_64, mask_free_ordered);
  if (o.layout_only) return 0;
  auto ctx_or = kernels::cuda::Context::Create();
  DieIf(ctx_or.status());
  kernels::cuda::Context& ctx = **ctx_or;
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.stream());
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);

  const int64_t L = o.segment, hd = o.head_dim;
  const int64_t q_elems = L * o.n_heads * hd, kv_elems = o.n_kv_heads * lay.n_keys * hd;
  DeviceBuffer q = ToDevice(ctx, RandomBf16(q_elems, rng));
  DeviceBuffer k = ToDevice(ctx, RandomBf16(kv_elems, rng));
  DeviceBuffer v = ToDevice(ctx, RandomBf16(kv_elems, rng));
  DeviceBuffer from = ToDevice(ctx, lay.from), until = ToDevice(ctx, lay.until);
  DeviceBuffer key_pos = ToDevice(ctx, lay.positions);
  std::vector<int64_t> query_positions(L);
  for (int64_t i = 0; i < L; ++i)
    query_positions[i] = lay.positions[o.sinks + o.top_k + o.window + i];
  DeviceBuffer q_pos = ToDevice(ctx, query_positions);
  auto out = DeviceBuffer::Allocate(q_elems * int64_t{sizeof(Bf16)});
  DieIf(out.status());

  kernels::cuda::AttentionArgs a;
  a.q = q.as<Bf16>();
  a.k = k.as<Bf16>();
  a.v = v.as<Bf16>();
  a.visible_from = from.as<int32_t>();
  a.visible_until = until.as<int32_t>();
  a.n_q = L;
  a.n_keys = lay.n_keys;
  a.n_heads = o.n_heads;
  a.n_kv_heads = o.n_kv_heads;
  a.head_dim = hd;
  a.scale = 0.125f;
  a.out = out->as<Bf16>();
  auto attention = [&] { DieIf(kernels::cuda::Attention(ctx, a)); };
  // RoPE rotates in place; timing it on the same buffers only changes the values.
  auto rope = [&] {
    DieIf(kernels::cuda::Rope(ctx, q.as<Bf16>(), 1, L, o.n_heads, hd, q_pos.as<int64_t>(), 10000.0f,
                              kernels::RopeStyle::kHalf));
    DieIf(kernels::cuda::Rope(ctx, k.as<Bf16>(), o.n_kv_heads, lay.n_keys, 1, hd,
                              key_pos.as<int64_t>(), 10000.0f, kernels::RopeStyle::kHalf));
  };
  // Every tile variant first (the default is the one the kernel uses), then the default again.
  std::vector<double> variant_ms;
  for (int variant = 0; o.sweep && variant < kernels::cuda::launch::kAttentionVariants; ++variant) {
    a.variant = variant;
    variant_ms.push_back(MedianMs(stream, o.reps, attention));
    std::printf("attention variant %d: %.4f ms\n", variant, variant_ms.back());
  }
  a.variant = o.variant;
  const double attention_ms = MedianMs(stream, o.reps, attention);
  const double rope_ms = MedianMs(stream, o.reps, rope);
  DieIf(ctx.Synchronize());

  const int64_t group = o.n_heads / o.n_kv_heads;
  const double useful_flops = 4.0 * double(lay.visible_pairs) * group * hd;
  const double tflops = useful_flops / (attention_ms * 1e-3) / 1e12;
  const double mean_visible = double(lay.visible_pairs) / (o.n_kv_heads * L);
  std::printf("device %s\n", prop.name);
  std::printf("segment L=%lld keys=%lld (s=%lld k=%lld w=%lld) mean visible keys/query=%.0f\n",
              (long long)L, (long long)lay.n_keys, (long long)o.sinks, (long long)o.top_k,
              (long long)o.window, mean_visible);
  std::printf("attention %.4f ms  rope(q+k) %.4f ms  useful %.1f TFLOP/s\n", attention_ms, rope_ms,
              tflops);
  if (!o.json.empty()) {
    std::ofstream f(o.json);
    f << "{\"device\": \"" << prop.name << "\", \"segment\": " << L
      << ", \"n_keys\": " << lay.n_keys << ", \"sinks\": " << o.sinks << ", \"top_k\": " << o.top_k
      << ", \"window\": " << o.window << ", \"block\": " << o.block
      << ", \"n_heads\": " << o.n_heads << ", \"n_kv_heads\": " << o.n_kv_heads
      << ", \"head_dim\": " << hd << ", \"reps\": " << o.reps << ", \"variant\": " << o.variant
      << ", \"mean_visible_keys_per_query\": " << mean_visible
      << ", \"attention_ms_per_segment\": " << attention_ms
      << ", \"rope_ms_per_segment\": " << rope_ms << ", \"useful_tflops\": " << tflops
      << ", \"visible_share_of_computed_pairs\": " << useful_pairs / processed_64
      << ", \"visible_share_32_key_tiles\": " << useful_pairs / processed_32
      << ", \"visible_share_keys_ordered\": " << useful_pairs / ordered_64
      << ", \"mask_free_tile_share\": " << mask_free_64
      << ", \"mask_free_tile_share_keys_ordered\": " << mask_free_ordered << ", \"variant_ms\": [";
    for (size_t i = 0; i < variant_ms.size(); ++i) f << (i ? ", " : "") << variant_ms[i];
    f << "]}\n";
  }
  return 0;
}

}  // namespace
}  // namespace longread

int main(int argc, char** argv) { return longread::Main(argc, argv); }
