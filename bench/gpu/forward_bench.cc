// Reading on the GPU with today's kernels: a device-resident forward pass of one segment through
// a SmolLM2-135M-shaped Llama (random Q4_1 weights, dequantized once to bf16 on the device),
// every layer attending over a full SparseK memory (s + k + w keys, head-major, un-rotated, RoPE
// applied at attention time to a copy) plus the segment, with the memory's visibility intervals
// (the same construction as attention_bench). tokens/s = L / the median time of one segment.
// Not on the GPU yet, so not timed: the scorer, top-k selection and eviction, the archive.
//
//   forward_bench [--json PATH] [--reps N] [--segment 4096] [--variant -1]
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "bench/gpu/cuda_timing.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/half.h"
#include "kernels/sparsek.h"

namespace longread {
namespace {

namespace cu = kernels::cuda;
using cu::Bf16;
using cu::DeviceBuffer;
using cu::DeviceMatrix;

// SmolLM2-135M.
constexpr int64_t kLayers = 30, kDim = 576, kHeads = 9, kKvHeads = 3, kHeadDim = 64, kFf = 1536,
                  kVocab = 49152;
constexpr float kEps = 1e-5f, kTheta = 100000.0f;
constexpr int64_t kSinks = 4, kTopK = 2048, kWindow = 1024, kBlock = 32;

void Die(const std::string& what) {
  std::fprintf(stderr, "forward_bench: %s\n", what.c_str());
  std::exit(1);
}
void Check(const absl::Status& s) {
  if (!s.ok()) Die(std::string(s.message()));
}
template <typename T>
T Take(absl::StatusOr<T> v) {
  if (!v.ok()) Die(std::string(v.status().message()));
  return std::move(*v);
}

DeviceBuffer Alloc(int64_t bytes) { return Take(DeviceBuffer::Allocate(bytes)); }

template <typename T>
DeviceBuffer ToDevice(cu::Context& ctx, const std::vector<T>& v) {
  DeviceBuffer b = Alloc(static_cast<int64_t>(v.size() * sizeof(T)));
  Check(cu::Upload(ctx, v.data(), b.bytes(), b.as<void>()));
  return b;
}

// Random Q4_1 blocks: scales 1e-3..1e-2, offsets centring the nibbles.
DeviceMatrix RandomMatrix(cu::Context& ctx, int64_t rows, int64_t cols, std::mt19937& rng) {
  const kernels::MatrixView shape{kernels::DType::kQ4_1, rows, cols, nullptr};
  std::vector<uint8_t> bytes(rows * shape.row_bytes());
  std::uniform_real_distribution<float> scale(1e-3f, 1e-2f);
  for (size_t b = 0; b < bytes.size(); b += 20) {
    const float d = scale(rng);
    const uint16_t dh = kernels::FloatToHalf(d), mh = kernels::FloatToHalf(-7.5f * d);
    std::memcpy(&bytes[b], &dh, 2);
    std::memcpy(&bytes[b + 2], &mh, 2);
    const uint64_t r1 = (uint64_t{rng()} << 32) | rng(), r2 = (uint64_t{rng()} << 32) | rng();
    std::memcpy(&bytes[b + 4], &r1, 8);
    std::memcpy(&bytes[b + 12], &r2, 8);
  }
  return Take(
      cu::UploadMatrix(ctx, kernels::MatrixView{kernels::DType::kQ4_1, rows, cols, bytes.data()}));
}

struct Layer {
  DeviceMatrix wq, wk, wv, wo, gate, up, down;
  DeviceBuffer attn_norm, ffn_norm;
  DeviceBuffer k_mem, v_mem;  // [kv_head][capacity][head_dim], un-rotated
};

// The memory's visibility intervals for one segment (attention_bench's construction).
struct Intervals {
  int64_t n_keys = 0;
  std::vector<int32_t> from, until;
  std::vector<int64_t> key_positions, query_positions;
};

Intervals BuildIntervals(int64_t L, std::mt19937& rng) {
  const int64_t P = int64_t{1} << 20, memory_blocks = kTopK / kBlock;
  Intervals iv;
  iv.n_keys = kSinks + kTopK + kWindow + L;
  for (int64_t j = 0; j < kSinks; ++j) iv.key_positions.push_back(j);
  for (int64_t b = 0; b < memory_blocks; ++b) {
    for (int64_t j = 0; j < kBlock; ++j) iv.key_positions.push_back(kSinks + kBlock * b * 7 + j);
  }
  for (int64_t j = 0; j < kWindow + L; ++j) iv.key_positions.push_back(P - kWindow + j);
  for (int64_t i = 0; i < L; ++i) iv.query_positions.push_back(P + i);
  std::uniform_real_distribution<float> score(0.0f, 1.0f);
  const int64_t first = kSinks + kTopK;
  for (int64_t g = 0; g < kKvHeads; ++g) {
    std::vector<float> scores;
    std::vector<int32_t> join, candidate(iv.n_keys, -1);
    for (int64_t b = 0; b < memory_blocks; ++b) {
      for (int64_t j = 0; j < kBlock; ++j) candidate[kSinks + b * kBlock + j] = scores.size();
      scores.push_back(score(rng));
      join.push_back(0);
    }
    for (int64_t b = 0; b < (kWindow + L) / kBlock; ++b) {
      const int64_t leaves = (b + 1) * kBlock - 1;  // last position + w - P, relative
      if (leaves > L) continue;
      for (int64_t j = 0; j < kBlock; ++j) candidate[first + b * kBlock + j] = scores.size();
      scores.push_back(score(rng));
      join.push_back(static_cast<int32_t>(leaves));
    }
    std::vector<int32_t> exit(scores.size());
    Check(kernels::TopKExitTimes(scores, join, static_cast<int32_t>(memory_blocks), exit));
    for (int64_t j = 0; j < iv.n_keys; ++j) {
      iv.from.push_back(j >= first + kWindow ? static_cast<int32_t>(j - first - kWindow) : 0);
      iv.until.push_back(candidate[j] < 0 ? kernels::kNeverExits : exit[candidate[j]]);
    }
  }
  return iv;
}

int Main(int argc, char** argv) {
  std::string json;
  int reps = 10;
  int64_t L = 4096;
  int variant = -1;  // attention kernel variant (kernels/cuda/launch.h); -1: the default
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--json") {
      json = value;
    } else if (flag == "--reps") {
      reps = std::atoi(value.c_str());
    } else if (flag == "--variant") {
      variant = std::atoi(value.c_str());
    } else if (flag == "--segment") {
      L = std::atoll(value.c_str());
    } else {
      Die("unknown flag " + flag);
    }
  }
  if (reps < 1 || L < kBlock || L % kBlock != 0) Die("--reps >= 1, --segment a multiple of 32");
  std::mt19937 rng(7);
  auto ctx_or = cu::Context::Create();
  Check(ctx_or.status());
  cu::Context& ctx = **ctx_or;
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.stream());
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  size_t free_before = 0, total = 0;
  cudaMemGetInfo(&free_before, &total);

  const Intervals iv = BuildIntervals(L, rng);
  const int64_t capacity = iv.n_keys, memory_slots = iv.n_keys - L;
  DeviceMatrix embedding = RandomMatrix(ctx, kVocab, kDim, rng);
  std::vector<Layer> layers(kLayers);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<uint16_t> memory_init(kKvHeads * capacity * kHeadDim);
  for (auto& x : memory_init) x = kernels::FloatToBFloat16(normal(rng));
  const std::vector<float> ones(kDim, 1.0f);
  for (Layer& l : layers) {
    l.wq = RandomMatrix(ctx, kHeads * kHeadDim, kDim, rng);
    l.wk = RandomMatrix(ctx, kKvHeads * kHeadDim, kDim, rng);
    l.wv = RandomMatrix(ctx, kKvHeads * kHeadDim, kDim, rng);
    l.wo = RandomMatrix(ctx, kDim, kHeads * kHeadDim, rng);
    l.gate = RandomMatrix(ctx, kFf, kDim, rng);
    l.up = RandomMatrix(ctx, kFf, kDim, rng);
    l.down = RandomMatrix(ctx, kDim, kFf, rng);
    l.attn_norm = ToDevice(ctx, ones);
    l.ffn_norm = ToDevice(ctx, ones);
    l.k_mem = ToDevice(ctx, memory_init);
    l.v_mem = ToDevice(ctx, memory_init);
  }
  DeviceBuffer from = ToDevice(ctx, iv.from), until = ToDevice(ctx, iv.until);
  DeviceBuffer key_pos = ToDevice(ctx, iv.key_positions);
  DeviceBuffer query_pos = ToDevice(ctx, iv.query_positions);
  std::vector<int32_t> tokens(L);
  std::uniform_int_distribution<int32_t> id(0, kVocab - 1);
  for (auto& t : tokens) t = id(rng);
  DeviceBuffer tokens_dev = ToDevice(ctx, tokens);

  // Activations for one segment.
  const int64_t bf = sizeof(Bf16);
  DeviceBuffer hidden = Alloc(L * kDim * 4), x = Alloc(L * kDim * bf);
  DeviceBuffer q = Alloc(L * kHeads * kHeadDim * bf), k_new = Alloc(L * kKvHeads * kHeadDim * bf),
               v_new = Alloc(L * kKvHeads * kHeadDim * bf),
               attn = Alloc(L * kHeads * kHeadDim * bf);
  DeviceBuffer proj = Alloc(L * kDim * bf), gate = Alloc(L * kFf * bf), up = Alloc(L * kFf * bf);
  DeviceBuffer ffn_out = Alloc(L * kDim * bf), k_rot = Alloc(kKvHeads * capacity * kHeadDim * bf);

  // One segment through every layer; `with_attention` false leaves out RoPE and attention (the
  // difference is their share).
  auto forward = [&](bool with_attention) {
    Check(cu::EmbeddingGather(ctx, embedding, tokens_dev.as<int32_t>(), L, hidden.as<float>()));
    for (int64_t li = 0; li < kLayers; ++li) {
      Layer& l = layers[li];
      Check(cu::AddRmsNorm(ctx, hidden.as<float>(), li == 0 ? nullptr : ffn_out.as<Bf16>(),
                           l.attn_norm.as<float>(), L, kDim, kEps, x.as<Bf16>()));
      Check(cu::MatMul(ctx, l.wq, x.as<Bf16>(), L, q.as<Bf16>()));
      Check(cu::MatMul(ctx, l.wk, x.as<Bf16>(), L, k_new.as<Bf16>()));
      Check(cu::MatMul(ctx, l.wv, x.as<Bf16>(), L, v_new.as<Bf16>()));
      Check(cu::ScatterHeads(ctx, k_new.as<Bf16>(), L, kKvHeads, kHeadDim, capacity, memory_slots,
                             l.k_mem.as<Bf16>()));
      Check(cu::ScatterHeads(ctx, v_new.as<Bf16>(), L, kKvHeads, kHeadDim, capacity, memory_slots,
                             l.v_mem.as<Bf16>()));
      if (with_attention) {
        if (cudaMemcpyAsync(k_rot.as<void>(), l.k_mem.as<void>(), k_rot.bytes(),
                            cudaMemcpyDeviceToDevice, stream) != cudaSuccess) {
          Die("cudaMemcpyAsync");
        }
        Check(cu::Rope(ctx, k_rot.as<Bf16>(), kKvHeads, capacity, 1, kHeadDim,
                       key_pos.as<int64_t>(), kTheta, kernels::RopeStyle::kHalf));
        Check(cu::Rope(ctx, q.as<Bf16>(), 1, L, kHeads, kHeadDim, query_pos.as<int64_t>(), kTheta,
                       kernels::RopeStyle::kHalf));
        cu::AttentionArgs a;
        a.q = q.as<Bf16>();
        a.k = k_rot.as<Bf16>();
        a.v = l.v_mem.as<Bf16>();
        a.visible_from = from.as<int32_t>();
        a.visible_until = until.as<int32_t>();
        a.n_q = L;
        a.n_keys = capacity;
        a.n_heads = kHeads;
        a.n_kv_heads = kKvHeads;
        a.head_dim = kHeadDim;
        a.scale = 0.125f;
        a.out = attn.as<Bf16>();
        a.variant = variant;
        Check(cu::Attention(ctx, a));
      }
      Check(cu::MatMul(ctx, l.wo, attn.as<Bf16>(), L, proj.as<Bf16>()));
      Check(cu::AddRmsNorm(ctx, hidden.as<float>(), proj.as<Bf16>(), l.ffn_norm.as<float>(), L,
                           kDim, kEps, x.as<Bf16>()));
      Check(cu::MatMul(ctx, l.gate, x.as<Bf16>(), L, gate.as<Bf16>()));
      Check(cu::MatMul(ctx, l.up, x.as<Bf16>(), L, up.as<Bf16>()));
      Check(cu::SiluMul(ctx, gate.as<Bf16>(), up.as<Bf16>(), L * kFf, gate.as<Bf16>()));
      Check(cu::MatMul(ctx, l.down, gate.as<Bf16>(), L, ffn_out.as<Bf16>()));
    }
    Check(cu::AddResidual(ctx, hidden.as<float>(), ffn_out.as<Bf16>(), L * kDim));
  };

  const double full_ms = bench::MedianMs(stream, 1, reps, [&] { forward(true); });
  const double no_attention_ms = bench::MedianMs(stream, 1, reps, [&] { forward(false); });
  // The same pass captured once as a CUDA graph and replayed: what launch overhead costs.
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  double graph_ms = -1;
  if (cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal) == cudaSuccess) {
    forward(true);
    if (cudaStreamEndCapture(stream, &graph) == cudaSuccess &&
        cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess) {
      graph_ms = bench::MedianMs(stream, 1, reps, [&] { cudaGraphLaunch(exec, stream); });
    }
  }
  Check(ctx.Synchronize());
  std::vector<float> h(L * kDim);
  Check(cu::Download(ctx, hidden.as<void>(), h.size() * 4, h.data()));
  int64_t non_finite = 0;
  for (float v : h) non_finite += !std::isfinite(v);
  size_t free_after = 0;
  cudaMemGetInfo(&free_after, &total);
  const double used_gib = double(free_before - free_after) / (1 << 30);

  const double flops_matmul =
      2.0 * L * kLayers * kDim * (kHeads * kHeadDim + 2 * kKvHeads * kHeadDim) +
      2.0 * L * kLayers * (kHeads * kHeadDim * kDim + 3 * kDim * kFf);
  const double best_ms = graph_ms > 0 ? std::min(full_ms, graph_ms) : full_ms;
  std::printf(
      "device %s, SmolLM2-135M shapes, random Q4_1 weights as bf16, segment %lld over "
      "%lld memory keys per layer\n",
      prop.name, (long long)L, (long long)memory_slots);
  std::printf("forward: %.3f ms per segment (%.0f tokens/s); CUDA graph %.3f ms (%.0f tokens/s)\n",
              full_ms, L / (full_ms * 1e-3), graph_ms, L / (graph_ms * 1e-3));
  std::printf("without RoPE+attention: %.3f ms (matmuls %.1f TFLOP/s); attention share %.0f%%\n",
              no_attention_ms, flops_matmul / (no_attention_ms * 1e-3) / 1e12,
              100.0 * (full_ms - no_attention_ms) / full_ms);
  std::printf("device memory used: %.2f GiB; non-finite outputs: %lld\n", used_gib,
              (long long)non_finite);
  if (!json.empty()) {
    std::ofstream f(json);
    f << "{\"device\": \"" << prop.name << "\", \"model\": \"SmolLM2-135M shapes, random Q4_1\""
      << ", \"segment\": " << L << ", \"memory_keys\": " << memory_slots
      << ", \"attention_variant\": " << variant << ", \"reps\": " << reps
      << ", \"forward_ms\": " << full_ms << ", \"forward_graph_ms\": " << graph_ms
      << ", \"forward_without_attention_ms\": " << no_attention_ms
      << ", \"tokens_per_s\": " << L / (best_ms * 1e-3)
      << ", \"matmul_tflops\": " << flops_matmul / (no_attention_ms * 1e-3) / 1e12
      << ", \"device_memory_gib\": " << used_gib << ", \"non_finite\": " << non_finite << "}\n";
  }
  if (exec != nullptr) cudaGraphExecDestroy(exec);
  if (graph != nullptr) cudaGraphDestroy(graph);
  return non_finite == 0 ? 0 : 1;
}

}  // namespace
}  // namespace longread

int main(int argc, char** argv) { return longread::Main(argc, argv); }
