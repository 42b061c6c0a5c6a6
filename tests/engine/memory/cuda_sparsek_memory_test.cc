// The SparseK memory on the GPU against the CPU memory (the reference).
// 1. Fed the same segments (fresh random bf16 queries, keys, values and attention-norm outputs;
//    scores from a random linear scorer and a random task term, so not tied), both select exactly
//    the same slots after every segment, archive the same blocks, export the same snapshot, recall
//    the same blocks back, and attend within 1e-2 relative error (bf16).
// 2. The real model reading real text through the memory on the GPU (CudaLlamaModel + this
//    memory, bf16, the default scorer) against the CPU engine (fp32, SparseKMemory): next-token
//    distributions within mean KL 1e-2 nats over the whole document, eviction included.
#include "engine/memory/cuda_sparsek_memory.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <random>
#include <sstream>
#include <tuple>
#include <vector>

#include "engine/memory/recording_archive.h"
#include "engine/memory/runner.h"
#include "engine/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "kernels/half.h"
#include "tests/engine/logit_compare.h"
#include "tests/engine/require_gpu.h"
#include "tests/engine/test_model.h"

namespace longread::engine {
namespace {

namespace cu = kernels::cuda;

std::vector<float> RandomBf16Values(std::mt19937& rng, int64_t n, float scale) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = kernels::BFloat16ToFloat(kernels::FloatToBFloat16(dist(rng)));
  return v;
}

std::vector<uint16_t> ToBits(const std::vector<float>& v) {
  std::vector<uint16_t> bits(v.size());
  for (size_t i = 0; i < v.size(); ++i) bits[i] = kernels::FloatToBFloat16(v[i]);
  return bits;
}

template <typename T>
cu::DeviceBuffer UploadVector(cu::Context& ctx, const std::vector<T>& host) {
  auto b = cu::DeviceBuffer::Allocate(static_cast<int64_t>(host.size() * sizeof(T)));
  EXPECT_TRUE(b.ok());
  EXPECT_TRUE(cu::Upload(ctx, host.data(), b->bytes(), b->as<void>()).ok());
  return std::move(*b);
}

double RelativeError(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

TEST(CudaSparseKMemoryTest, SelectsTheSameSlotsAsTheCpuMemory) {
  REQUIRE_GPU();
  ModelConfig model;
  model.n_layers = 2;
  model.d_model = 576;
  model.n_heads = 9;
  model.n_kv_heads = 3;
  model.head_dim = 64;
  model.rope_theta = 100000.0f;
  model.rope_style = RopeStyle::kHalf;
  MemoryConfig config;
  config.sinks = 4;
  config.top_k = 64;
  config.window = 32;
  config.block_tokens = 8;
  config.task_score = TaskScore::kSegmentMass;
  const int64_t n = 48, segments = 10, d = 64, H = 9, G = 3, n_task = 5;

  auto ctx = cu::Context::Create();
  ASSERT_TRUE(ctx.ok()) << ctx.status();
  std::mt19937 rng(19);
  // A random linear scorer (small weights: the task term and the scorer both matter).
  ScorerWeights weights =
      ZeroScorerWeights("test", model.n_layers, model.n_kv_heads, model.d_model);
  weights.w = RandomBf16Values(rng, static_cast<int64_t>(weights.w.size()), 0.05f);
  weights.b = RandomBf16Values(rng, static_cast<int64_t>(weights.b.size()), 0.5f);
  weights.slope = RandomBf16Values(rng, static_cast<int64_t>(weights.slope.size()), 1e-3f);
  auto scorer = std::make_shared<const ScorerWeights>(std::move(weights));
  SparseKMemory cpu(model, config, scorer);
  auto gpu = CudaSparseKMemory::Create(ctx->get(), model, config, scorer);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  std::vector<std::vector<float>> task(model.n_layers);
  for (auto& t : task) t = RandomBf16Values(rng, n_task * H * d, 1.0f);
  cpu.SetTaskQueries(task, n_task);
  (*gpu)->SetTaskQueries(task, n_task);
  InMemoryBlockArchive cpu_archive(model.n_layers, G, d), gpu_archive(model.n_layers, G, d);
  // Recorders see every put in order: the CPU memory's fp32 blocks against the device writer's
  // bf16 rows (PutRows, recorded as bf16 and widened when taken).
  RecordingBlockArchive cpu_recorder(&cpu_archive), gpu_recorder(&gpu_archive);
  cpu.set_archive(&cpu_recorder);
  (*gpu)->set_archive(&gpu_recorder);
  kernels::ThreadPool pool(2);

  double worst = 0;
  auto read_segment = [&](int64_t len) {
    for (int32_t l = 0; l < model.n_layers; ++l) {
      std::vector<float> q = RandomBf16Values(rng, len * H * d, 1.0f);
      const std::vector<float> k = RandomBf16Values(rng, len * G * d, 1.0f);
      const std::vector<float> v = RandomBf16Values(rng, len * G * d, 1.0f);
      const std::vector<float> x = RandomBf16Values(rng, len * model.d_model, 1.0f);
      cu::DeviceBuffer x_dev = UploadVector(**ctx, ToBits(x));
      cu::DeviceBuffer q_dev = UploadVector(**ctx, ToBits(q));
      cu::DeviceBuffer k_dev = UploadVector(**ctx, ToBits(k));
      cu::DeviceBuffer v_dev = UploadVector(**ctx, ToBits(v));
      auto out_dev = cu::DeviceBuffer::Allocate(len * H * d * 2);
      ASSERT_TRUE(out_dev.ok());
      std::vector<float> want(len * H * d);
      SegmentLayerInput in{l, len, q.data(), k.data(), v.data(), x.data()};
      ASSERT_TRUE(cpu.AttendAndUpdate(in, want.data(), &pool).ok());
      DeviceSegmentLayerInput din{l,
                                  len,
                                  q_dev.as<cu::Bf16>(),
                                  k_dev.as<cu::Bf16>(),
                                  v_dev.as<cu::Bf16>(),
                                  x_dev.as<cu::Bf16>()};
      const absl::Status s = (*gpu)->AttendAndUpdate(din, out_dev->as<cu::Bf16>());
      ASSERT_TRUE(s.ok()) << s;
      std::vector<uint16_t> bits(len * H * d);
      ASSERT_TRUE(cu::Download(**ctx, out_dev->as<void>(), out_dev->bytes(), bits.data()).ok());
      std::vector<float> got(bits.size());
      for (size_t i = 0; i < bits.size(); ++i) got[i] = kernels::BFloat16ToFloat(bits[i]);
      worst = std::max(worst, RelativeError(got, want));
      for (int32_t g = 0; g < G; ++g) {
        ASSERT_EQ((*gpu)->positions(l, g), cpu.held(l, g).positions)
            << "layer " << l << " head " << g;
      }
    }
    cpu.EndSegment(len);
    (*gpu)->EndSegment(len);
  };
  for (int64_t s = 0; s < segments; ++s) {
    read_segment(s == 3 ? 1 : n);  // one single-token segment
    if (HasFatalFailure()) return;
  }
  EXPECT_LE(cpu.max_slot_count(), config.sinks + config.top_k + config.window + n);
  // archive_status() waits for the puts queued so far (they run behind the reading).
  ASSERT_TRUE((*gpu)->archive_status().ok());
  EXPECT_GT(cpu_archive.stored_bytes(), 0);
  EXPECT_EQ(gpu_archive.stored_bytes(), cpu_archive.stored_bytes());
  // Compared per (layer, head, first position): the CPU memory puts during its layer's step, the
  // device writer after the segment.
  auto by_head_and_position = [](std::vector<ArchivedBlock> blocks) {
    std::stable_sort(blocks.begin(), blocks.end(), [](const auto& a, const auto& b) {
      return std::tie(a.layer, a.kv_head, a.positions[0]) <
             std::tie(b.layer, b.kv_head, b.positions[0]);
    });
    return blocks;
  };
  const std::vector<ArchivedBlock> cpu_puts = by_head_and_position(cpu_recorder.TakeRecorded());
  const std::vector<ArchivedBlock> gpu_puts = by_head_and_position(gpu_recorder.TakeRecorded());
  EXPECT_GT(cpu_puts.size(), 0u);
  ASSERT_EQ(gpu_puts.size(), cpu_puts.size());
  for (size_t i = 0; i < cpu_puts.size(); ++i) {
    EXPECT_EQ(gpu_puts[i].layer, cpu_puts[i].layer) << i;
    EXPECT_EQ(gpu_puts[i].kv_head, cpu_puts[i].kv_head) << i;
    EXPECT_EQ(gpu_puts[i].block_id, cpu_puts[i].block_id) << i;
    EXPECT_EQ(gpu_puts[i].positions, cpu_puts[i].positions) << i;
    EXPECT_EQ(gpu_puts[i].scores, cpu_puts[i].scores) << i;
    EXPECT_EQ(gpu_puts[i].keys, cpu_puts[i].keys) << i;
    EXPECT_EQ(gpu_puts[i].values, cpu_puts[i].values) << i;
  }

  // Snapshots: the same slots, keys and values (inputs are bf16-exact).
  MemorySnapshot cpu_snap, gpu_snap;
  cpu.ExportTo(&cpu_snap);
  ASSERT_TRUE((*gpu)->ExportTo(&gpu_snap).ok());
  ASSERT_EQ(gpu_snap.heads.size(), cpu_snap.heads.size());
  EXPECT_EQ(gpu_snap.token_offset, cpu_snap.token_offset);
  EXPECT_EQ(gpu_snap.config_hash, cpu_snap.config_hash);
  for (size_t h = 0; h < cpu_snap.heads.size(); ++h) {
    EXPECT_EQ(gpu_snap.heads[h].positions, cpu_snap.heads[h].positions);
    EXPECT_EQ(gpu_snap.heads[h].keys, cpu_snap.heads[h].keys);
    EXPECT_EQ(gpu_snap.heads[h].values, cpu_snap.heads[h].values);
    EXPECT_EQ(gpu_snap.heads[h].scores, cpu_snap.heads[h].scores);
  }
  // A fresh device memory restored from the CPU's snapshot holds the same slots.
  auto restored = CudaSparseKMemory::Create(ctx->get(), model, config, scorer);
  ASSERT_TRUE(restored.ok());
  ASSERT_TRUE((*restored)->ImportFrom(cpu_snap).ok());
  MemorySnapshot round_trip;
  ASSERT_TRUE((*restored)->ExportTo(&round_trip).ok());
  for (size_t h = 0; h < cpu_snap.heads.size(); ++h) {
    EXPECT_EQ(round_trip.heads[h].keys, cpu_snap.heads[h].keys);
    EXPECT_EQ(round_trip.heads[h].positions, cpu_snap.heads[h].positions);
  }

  // Recall: the same archived blocks put back in both, then an answer-phase (frozen) segment.
  for (int32_t l = 0; l < model.n_layers; ++l) {
    for (int32_t g = 0; g < G; ++g) {
      const std::vector<float> query = RandomBf16Values(rng, 4 * d, 1.0f);
      auto blocks = cpu_archive.Recall(l, g, query, 4, 2);
      ASSERT_TRUE(blocks.ok());
      ASSERT_FALSE(blocks->empty());
      const int64_t added_cpu = cpu.InsertRecalled(l, g, *blocks);
      auto added_gpu = (*gpu)->InsertRecalled(l, g, *blocks);
      ASSERT_TRUE(added_gpu.ok()) << added_gpu.status();
      EXPECT_EQ(*added_gpu, added_cpu);
      EXPECT_GT(added_cpu, 0);
      EXPECT_EQ((*gpu)->positions(l, g), cpu.held(l, g).positions);
    }
  }
  cpu.FreezeEviction();
  (*gpu)->FreezeEviction();
  read_segment(n);
  if (HasFatalFailure()) return;
  // Undo the frozen read in both: the same slots again.
  ASSERT_TRUE(cpu.Rewind(cpu.next_position() - n).ok());
  ASSERT_TRUE((*gpu)->Rewind((*gpu)->next_position() - n).ok());
  for (int32_t g = 0; g < G; ++g) EXPECT_EQ((*gpu)->positions(1, g), cpu.held(1, g).positions);
  std::printf("[errors] cuda memory vs cpu memory: worst relative error %.3g\n", worst);
  EXPECT_LE(worst, 1e-2);
}

std::vector<int32_t> DocumentTokens(const Tokenizer& tokenizer, int64_t count) {
  // Real prose, repeated if short.
  std::vector<int32_t> ids = tokenizer.Encode(testing::DocumentationText(), false);
  if (ids.empty()) return ids;
  while (static_cast<int64_t>(ids.size()) < count) ids.insert(ids.end(), ids.begin(), ids.end());
  ids.resize(count);
  return ids;
}

TEST(CudaSparseKMemoryTest, RealModelReadsLikeTheCpuEngine) {
  REQUIRE_GPU();
  REQUIRE_DEFAULT_MODEL(model);
  const ModelConfig& c = model->config();
  auto scorer_weights =
      LoadScorerWeights(testing::SourceDir() + "/models/SmolLM2-135M-Instruct.Q4_1.lrscorer",
                        model->fingerprint(), c.n_layers, c.n_kv_heads, c.d_model);
  ASSERT_TRUE(scorer_weights.ok()) << scorer_weights.status();
  auto scorer = std::make_shared<const ScorerWeights>(std::move(*scorer_weights));
  auto tokenizer = Tokenizer::Create(model->file().tokenizer());
  ASSERT_TRUE(tokenizer.ok());
  const int64_t n = 1536, vocab = model->config().vocab_size;
  const std::vector<int32_t> ids = DocumentTokens(**tokenizer, n);
  ASSERT_EQ(static_cast<int64_t>(ids.size()), n) << "documentation missing";

  RunnerConfig config;
  config.memory.top_k = 256;
  config.memory.window = 128;
  config.memory.block_tokens = 32;
  config.segment_tokens = 256;
  kernels::ThreadPool pool(2);
  RecurrentRunner runner(model, config, scorer, &pool);
  std::vector<float> cpu;
  ASSERT_TRUE(runner.ReadWithLogits(ids, &cpu).ok());

  auto ctx = cu::Context::Create();
  ASSERT_TRUE(ctx.ok()) << ctx.status();
  auto gpu_model = CudaLlamaModel::Create(*model, ctx->get());
  ASSERT_TRUE(gpu_model.ok()) << gpu_model.status();
  auto memory = CudaSparseKMemory::Create(ctx->get(), model->config(), config.memory, scorer);
  ASSERT_TRUE(memory.ok()) << memory.status();
  std::vector<float> gpu;
  for (int64_t at = 0; at < n; at += config.segment_tokens) {
    std::vector<float> part;
    const std::span<const int32_t> segment(ids.data() + at,
                                           std::min<int64_t>(config.segment_tokens, n - at));
    const absl::Status s = (*gpu_model)->Forward(segment, **memory, LogitsMode::kAll, &part);
    ASSERT_TRUE(s.ok()) << s;
    gpu.insert(gpu.end(), part.begin(), part.end());
  }
  ASSERT_EQ(gpu.size(), cpu.size());
  double kl_sum = 0, kl_max = 0;
  for (int64_t t = 0; t < n; ++t) {
    const double kl = testing::KlDivergence(&cpu[t * vocab], &gpu[t * vocab], vocab);
    ASSERT_TRUE(std::isfinite(kl)) << "position " << t;
    kl_sum += kl;
    kl_max = std::max(kl_max, kl);
  }
  // Slots: bf16 activations move scores a little, so near-ties may select differently.
  int64_t same = 0, total = 0;
  const SparseKMemory& reference = runner.memory();
  for (int32_t l = 0; l < model->config().n_layers; ++l) {
    for (int32_t g = 0; g < model->config().n_kv_heads; ++g) {
      const auto& want = reference.held(l, g).positions;
      same += testing::PositionsInCommon(want, (*memory)->positions(l, g));
      total += static_cast<int64_t>(want.size());
    }
  }
  std::printf(
      "[errors] cuda model + memory vs cpu engine: %lld tokens, mean KL %.3g nats, max KL %.3g, "
      "slots in common %lld/%lld, device memory %.1f MB\n",
      static_cast<long long>(n), kl_sum / n, kl_max, static_cast<long long>(same),
      static_cast<long long>(total), (*memory)->resident_bytes() / 1e6);
  EXPECT_EQ((*memory)->next_position(), n);
  EXPECT_LE(reference.max_slot_count(), 4 + 256 + 128 + 256);
  EXPECT_LE(kl_sum / n, 1e-2);
  EXPECT_GE(same, total * 9 / 10);
}

}  // namespace
}  // namespace longread::engine
