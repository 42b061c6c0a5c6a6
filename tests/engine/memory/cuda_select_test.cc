// The device block selection (kernels/cuda SelectSegmentKeys) against the CPU memory's
// SelectSegmentKeys and fold, the reference, on fresh random inputs: random configurations
// (block sizes, sinks, windows, budgets, block score kinds, frozen), random held slots and
// random scores (continuous, so not tied; a second pass rounds them to a few values, so ties
// are many and the tie rule, older first, decides). Everything must be equal: intervals, keep
// flags, RoPE and query positions, new slots, evicted keys in key order.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "engine/memory/sparsek_memory.h"
#include "gtest/gtest.h"
#include "kernels/cuda/cuda_ops.h"

namespace longread::engine {
namespace {

namespace cu = kernels::cuda;

#define REQUIRE_GPU()                                                                  \
  if (!cu::DeviceAvailable()) {                                                        \
    const char* require = std::getenv("LONGREAD_REQUIRE_GPU");                         \
    if (require != nullptr && std::string(require) == "1") FAIL() << "no CUDA device"; \
    GTEST_SKIP() << "no CUDA device";                                                  \
  }

// LONGREAD_SELECT_TRIALS cuts the trials (for the sanitizers, which run each launch slowly).
int Trials(int standard) {
  const char* env = std::getenv("LONGREAD_SELECT_TRIALS");
  return env != nullptr ? std::max(1, std::atoi(env)) : standard;
}

template <typename T>
cu::DeviceBuffer Upload(cu::Context& ctx, const std::vector<T>& host) {
  auto b = cu::DeviceBuffer::Allocate(std::max<int64_t>(1, host.size()) * sizeof(T));
  EXPECT_TRUE(b.ok());
  EXPECT_TRUE(cu::Upload(ctx, host.data(), host.size() * sizeof(T), b->template as<void>()).ok());
  return std::move(*b);
}

template <typename T>
std::vector<T> Fetch(cu::Context& ctx, const cu::DeviceBuffer& b, int64_t n) {
  std::vector<T> out(n);
  EXPECT_TRUE(cu::Download(ctx, b.as<void>(), n * sizeof(T), out.data()).ok());
  return out;
}

cu::DeviceBuffer Scratch(int64_t bytes) {
  auto b = cu::DeviceBuffer::Allocate(bytes);
  EXPECT_TRUE(b.ok());
  return std::move(*b);
}

// One random trial, with held slots drawn from the positions before a random first position in
// [min_first, max_first); adds the number of evicted keys to *evicted_total (the tests check
// that eviction happened).
void RunTrial(cu::Context& ctx, std::mt19937& rng, bool tied, int trial, int64_t* evicted_total,
              int64_t min_first = 0, int64_t max_first = 2000) {
  MemoryConfig config;
  const int64_t block_choices[] = {1, 4, 8, 32};
  config.block_tokens = block_choices[rng() % 4];
  config.sinks = static_cast<int32_t>(rng() % 3 == 0 ? 0 : rng() % 40);
  config.window = 1 + rng() % 200;
  config.top_k = rng() % 400;
  config.block_score = rng() % 2 ? BlockScore::kMax : BlockScore::kMean;
  config.position_mode = rng() % 2 ? PositionMode::kSlotOrder : PositionMode::kOriginal;
  const bool frozen = rng() % 8 == 0;
  const int64_t G = 3, n = 1 + rng() % 300, P = min_first + rng() % (max_first - min_first);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  auto score = [&] {
    const float x = normal(rng);
    return tied ? std::round(x) : x;
  };
  std::vector<std::vector<int64_t>> positions(G);
  std::vector<std::vector<float>> scores(G);
  int64_t most = 0;
  for (int64_t g = 0; g < G; ++g) {
    // A random subset of the earlier positions, sorted (a held memory).
    for (int64_t p = 0; p < P; ++p) {
      if (rng() % 4 == 0) positions[g].push_back(p);
    }
    for (size_t i = 0; i < positions[g].size(); ++i) scores[g].push_back(score());
    most = std::max<int64_t>(most, positions[g].size());
  }
  std::vector<float> token_scores(n * G);
  for (float& s : token_scores) s = score();
  const int64_t n_keys = most + n, cap = n_keys + 7;

  std::vector<int64_t> pos_flat(G * cap, 0);
  std::vector<float> score_flat(G * cap, 0.0f);
  std::vector<int32_t> counts(G);
  for (int64_t g = 0; g < G; ++g) {
    std::copy(positions[g].begin(), positions[g].end(), pos_flat.begin() + g * cap);
    std::copy(scores[g].begin(), scores[g].end(), score_flat.begin() + g * cap);
    counts[g] = static_cast<int32_t>(positions[g].size());
  }
  cu::DeviceBuffer counts_dev = Upload(ctx, counts), pos_dev = Upload(ctx, pos_flat),
                   score_dev = Upload(ctx, score_flat), tok_dev = Upload(ctx, token_scores);
  const int64_t per_key = G * n_keys;
  cu::DeviceBuffer from = Scratch(per_key * 4), until = Scratch(per_key * 4),
                   keep = Scratch(per_key), rope = Scratch(per_key * 8), query = Scratch(n * G * 8),
                   new_pos = Scratch(G * cap * 8), new_score = Scratch(G * cap * 4),
                   dst = Scratch(per_key * 4), ev_pos = Scratch(G * cap * 8),
                   ev_score = Scratch(G * cap * 4), ev_count = Scratch(G * 4),
                   key_cand = Scratch(per_key * 4), cand_join = Scratch(per_key * 4),
                   cand_first = Scratch(per_key * 4), cand_exit = Scratch(per_key * 4),
                   cand_score = Scratch(per_key * 4), cand_count = Scratch(G * 4);
  cu::SelectArgs a;
  a.sinks = config.sinks;
  a.block_tokens = config.block_tokens;
  a.window = config.window;
  a.k_blocks = static_cast<int32_t>(config.top_k / config.block_tokens);
  a.mean = config.block_score == BlockScore::kMean;
  a.keep_all = frozen;
  a.slot_order = config.position_mode == PositionMode::kSlotOrder;
  a.first_position = P;
  a.n = n;
  a.n_keys = n_keys;
  a.capacity = cap;
  a.n_kv_heads = G;
  a.counts = counts_dev.as<int32_t>();
  a.positions = pos_dev.as<int64_t>();
  a.scores = score_dev.as<float>();
  a.token_scores = tok_dev.as<float>();
  a.from = from.as<int32_t>();
  a.until = until.as<int32_t>();
  a.keep = keep.as<uint8_t>();
  a.rope_positions = rope.as<int64_t>();
  a.query_positions = query.as<int64_t>();
  a.new_positions = new_pos.as<int64_t>();
  a.new_scores = new_score.as<float>();
  a.dst_row = dst.as<int32_t>();
  a.evicted_positions = ev_pos.as<int64_t>();
  a.evicted_scores = ev_score.as<float>();
  a.evicted_counts = ev_count.as<int32_t>();
  a.key_cand = key_cand.as<int32_t>();
  a.cand_join = cand_join.as<int32_t>();
  a.cand_first_key = cand_first.as<int32_t>();
  a.cand_exit = cand_exit.as<int32_t>();
  a.cand_score = cand_score.as<float>();
  a.cand_count = cand_count.as<int32_t>();
  const absl::Status s = cu::SelectSegmentKeys(ctx, a);
  EXPECT_TRUE(s.ok()) << s;
  const auto got_from = Fetch<int32_t>(ctx, from, per_key);
  const auto got_until = Fetch<int32_t>(ctx, until, per_key);
  const auto got_keep = Fetch<uint8_t>(ctx, keep, per_key);
  const auto got_rope = Fetch<int64_t>(ctx, rope, per_key);
  const auto got_query = Fetch<int64_t>(ctx, query, n * G);
  const auto got_new_pos = Fetch<int64_t>(ctx, new_pos, G * cap);
  const auto got_new_score = Fetch<float>(ctx, new_score, G * cap);
  const auto got_ev_pos = Fetch<int64_t>(ctx, ev_pos, G * cap);
  const auto got_ev_score = Fetch<float>(ctx, ev_score, G * cap);
  const auto got_counts = Fetch<int32_t>(ctx, counts_dev, G);
  const auto got_ev_count = Fetch<int32_t>(ctx, ev_count, G);
  const auto got_dst = Fetch<int32_t>(ctx, dst, per_key);

  for (int64_t g = 0; g < G; ++g) {
    const int64_t M = static_cast<int64_t>(positions[g].size()), total = M + n;
    std::vector<int32_t> from_cpu(total), until_cpu(total);
    std::vector<uint8_t> keep_cpu(total);
    BlockSelection sel;
    ASSERT_TRUE(SelectSegmentKeys(config, frozen, P, n, positions[g], scores[g],
                                  token_scores.data() + g, G, from_cpu.data(), until_cpu.data(),
                                  keep_cpu.data(), sel)
                    .ok());
    std::vector<int64_t> kept_pos, ev_pos_cpu;
    std::vector<float> kept_score, ev_score_cpu;
    const bool slot_order = config.position_mode == PositionMode::kSlotOrder;
    for (int64_t key = 0; key < n_keys; ++key) {
      const int64_t at = g * n_keys + key;
      SCOPED_TRACE(::testing::Message() << "trial " << trial << " head " << g << " key " << key
                                        << " of " << M << "+" << n << " B " << config.block_tokens
                                        << " k " << config.top_k << " w " << config.window);
      if (key >= total) {  // padding: invisible, dropped
        ASSERT_EQ(got_until[at], 0);
        ASSERT_EQ(got_keep[at], 0);
        ASSERT_EQ(got_dst[at], cu::kDropRow);
        continue;
      }
      const int64_t pos = key < M ? positions[g][key] : P + (key - M);
      const float sc = key < M ? scores[g][key] : token_scores[(key - M) * G + g];
      ASSERT_EQ(got_from[at], from_cpu[key]);
      ASSERT_EQ(got_until[at], until_cpu[key]);
      ASSERT_EQ(got_keep[at], keep_cpu[key]);
      ASSERT_EQ(got_rope[at], slot_order ? key : pos);
      if (keep_cpu[key]) {
        ASSERT_EQ(got_dst[at], static_cast<int32_t>(kept_pos.size()));
        kept_pos.push_back(pos);
        kept_score.push_back(sc);
      } else {
        ASSERT_EQ(got_dst[at], -static_cast<int32_t>(ev_pos_cpu.size()) - 2);
        ev_pos_cpu.push_back(pos);
        ev_score_cpu.push_back(sc);
      }
    }
    ASSERT_EQ(got_counts[g], static_cast<int32_t>(kept_pos.size()));
    ASSERT_EQ(got_ev_count[g], static_cast<int32_t>(ev_pos_cpu.size()));
    for (size_t i = 0; i < kept_pos.size(); ++i) {
      ASSERT_EQ(got_new_pos[g * cap + i], kept_pos[i]);
      ASSERT_EQ(got_new_score[g * cap + i], kept_score[i]);
    }
    for (size_t i = 0; i < ev_pos_cpu.size(); ++i) {
      ASSERT_EQ(got_ev_pos[g * cap + i], ev_pos_cpu[i]);
      ASSERT_EQ(got_ev_score[g * cap + i], ev_score_cpu[i]);
    }
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_EQ(got_query[i * G + g], (slot_order ? M : P) + i);
    }
    *evicted_total += static_cast<int64_t>(ev_pos_cpu.size());
  }
}

TEST(CudaSelectTest, EqualsTheCpuSelectionOnRandomInputs) {
  REQUIRE_GPU();
  auto ctx = cu::Context::Create();
  ASSERT_TRUE(ctx.ok()) << ctx.status();
  std::mt19937 rng(20261202);
  int64_t evicted = 0;
  const int trials = Trials(150);
  for (int trial = 0; trial < trials; ++trial) {
    RunTrial(**ctx, rng, /*tied=*/false, trial, &evicted);
    if (HasFatalFailure()) return;
  }
  if (trials >= 20) {
    EXPECT_GT(evicted, 0);
  }
  std::printf("[select] %d random trials equal, %lld keys evicted\n", trials,
              static_cast<long long>(evicted));
}

TEST(CudaSelectTest, TiedScoresKeepTheOlderBlockAsTheCpuDoes) {
  REQUIRE_GPU();
  auto ctx = cu::Context::Create();
  ASSERT_TRUE(ctx.ok()) << ctx.status();
  std::mt19937 rng(77);
  int64_t evicted = 0;
  const int trials = Trials(100);
  for (int trial = 0; trial < trials; ++trial) {
    RunTrial(**ctx, rng, /*tied=*/true, trial, &evicted);
    if (HasFatalFailure()) return;
  }
  // A handful of trials (the sanitizers' runs) may evict nothing; a full run must.
  if (trials >= 20) {
    EXPECT_GT(evicted, 0);
  }
}

// Held memories of thousands of keys: the kernels classify and fold several tiles of keys per
// head, and beyond ~24K keys per head the block scores read the keys from global memory instead
// of shared memory (the product's memory holds ~7K keys per head).
TEST(CudaSelectTest, LargeMemoriesSpanSeveralTilesAsTheCpuDoes) {
  REQUIRE_GPU();
  auto ctx = cu::Context::Create();
  ASSERT_TRUE(ctx.ok()) << ctx.status();
  std::mt19937 rng(4096);
  int64_t evicted = 0;
  const int trials = Trials(6);
  for (int trial = 0; trial < trials; ++trial) {
    // About P/4 held keys per head: 4K-6K (two tiles) or 25K-35K (global memory).
    const bool huge = trial % 2 == 1;
    RunTrial(**ctx, rng, /*tied=*/trial % 3 == 2, trial, &evicted, huge ? 100000 : 16000,
             huge ? 140000 : 24000);
    if (HasFatalFailure()) return;
  }
  std::printf("[select] %d large trials equal, %lld keys evicted\n", trials,
              static_cast<long long>(evicted));
}

}  // namespace
}  // namespace longread::engine
