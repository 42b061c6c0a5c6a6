// Task-aware scores and recall from the archive of evicted blocks.
#include <algorithm>
#include <cmath>
#include <random>
#include <set>
#include <vector>

#include "engine/memory/block_archive.h"
#include "engine/memory/runner.h"
#include "gtest/gtest.h"
#include "tests/engine/test_model.h"

namespace longread::engine {
namespace {

RunnerConfig Small(int64_t block) {
  RunnerConfig config;
  config.memory.sinks = 2;
  config.memory.block_tokens = block;
  config.memory.top_k = 4 * block;
  config.memory.window = 8;
  config.segment_tokens = 24;
  return config;
}

TEST(BlockArchiveTest, BoundsNeverUnderestimateAndTopRIsStable) {
  std::mt19937_64 rng(5);
  std::normal_distribution<float> normal;
  const int64_t d = 16;
  ArchivedBlock block;
  for (int t = 0; t < 7; ++t) {
    block.positions.push_back(t);
    block.scores.push_back(0);
    for (int e = 0; e < d; ++e) block.keys.push_back(normal(rng));
  }
  block.values = block.keys;
  const BlockBounds bounds = ComputeBounds(block, d);
  for (int trial = 0; trial < 100; ++trial) {
    std::vector<float> q(d);
    for (auto& x : q) x = normal(rng);
    float best = -1e30f;
    for (int t = 0; t < 7; ++t) {
      float dot = 0;
      for (int e = 0; e < d; ++e) dot += q[e] * block.keys[t * d + e];
      best = std::max(best, dot);
    }
    EXPECT_GE(RecallScore(bounds, q, 1, d), best - 1e-4f);
  }
  const std::vector<float> scores = {1.0f, 3.0f, 3.0f, 2.0f};
  EXPECT_EQ(TopRIndices(scores, 2), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(TopRIndices(scores, 9), (std::vector<int64_t>{0, 1, 2, 3}));
}

// The exact recall score against float64: per query row, softmax over held ∪ candidate keys; a
// block's peak is the largest probability mass one row gives its keys.
TEST(BlockArchiveTest, AttentionPeakIsTheLargestMassOneQueryGivesEachBlock) {
  std::mt19937_64 rng(11);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  const int64_t d = 8, n_rows = 5, n_held = 6;
  std::vector<float> queries(n_rows * d), held(n_held * d);
  for (auto& x : queries) x = normal(rng);
  for (auto& x : held) x = normal(rng);
  std::vector<ArchivedBlock> blocks(4);
  for (size_t b = 0; b < blocks.size(); ++b) {
    for (size_t t = 0; t < 1 + b; ++t) {  // blocks of unequal length, as a cap or a tail makes
      blocks[b].positions.push_back(static_cast<int64_t>(10 * b + t));
      for (int64_t e = 0; e < d; ++e) blocks[b].keys.push_back(normal(rng));
    }
  }
  // One block sits exactly on the first query's direction: it must get the most mass.
  for (int64_t e = 0; e < d; ++e) blocks[2].keys[e] = 3.0f * queries[e];
  const std::vector<double> mass = BlockAttentionPeak(queries, n_rows, d, held, n_held, blocks);
  ASSERT_EQ(mass.size(), blocks.size());
  std::vector<double> expected(blocks.size(), 0.0);
  double total_mass = 0;
  for (int64_t r = 0; r < n_rows; ++r) {
    auto logit = [&](const float* k) {
      double dot = 0;
      for (int64_t e = 0; e < d; ++e) dot += double{queries[r * d + e]} * k[e];
      return dot / std::sqrt(double(d));
    };
    double z = 0;
    for (int64_t j = 0; j < n_held; ++j) z += std::exp(logit(&held[j * d]));
    for (const auto& b : blocks) {
      for (size_t t = 0; t < b.positions.size(); ++t) z += std::exp(logit(&b.keys[t * d]));
    }
    double row_total = 0;
    for (size_t b = 0; b < blocks.size(); ++b) {
      double block_mass = 0;
      for (size_t t = 0; t < blocks[b].positions.size(); ++t) {
        block_mass += std::exp(logit(&blocks[b].keys[t * d])) / z;
      }
      expected[b] = std::max(expected[b], block_mass);
      row_total += block_mass;
    }
    total_mass = std::max(total_mass, row_total);
  }
  for (size_t b = 0; b < blocks.size(); ++b) {
    EXPECT_NEAR(mass[b], expected[b], 1e-5 * std::max(1.0, expected[b])) << "block " << b;
  }
  EXPECT_LT(total_mass, 1.0);  // the held keys take the rest of every row
  const std::vector<float> score(mass.begin(), mass.end());
  EXPECT_EQ(TopRIndices(score, 1), std::vector<int64_t>{2});
}

// In the answer phase nothing is evicted and everything held stays visible; a frozen read can be
// undone exactly (recall reads the question that way to capture its queries).
TEST(RecallTest, FrozenMemoryKeepsEverySlotAndRewindsExactly) {
  REQUIRE_DEFAULT_MODEL(model);
  const ModelConfig& c = model->config();
  kernels::ThreadPool pool(2);
  RecurrentRunner runner(model, Small(4), nullptr, &pool);
  ASSERT_TRUE(runner.Feed(testing::RandomTokens(72, 12)).ok());
  ASSERT_TRUE(runner.Flush().ok());
  const MemorySnapshot before = runner.Snapshot();
  SparseKMemory& memory = const_cast<SparseKMemory&>(runner.memory());
  EXPECT_EQ(memory.Rewind(before.token_offset).code(), absl::StatusCode::kFailedPrecondition);
  GenerateOptions options;
  options.max_new_tokens = 3;
  const std::vector<int32_t> prompt =
      testing::RandomTokens(30, 13);  // longer than window + a block
  auto generated = runner.Generate(prompt, options);
  ASSERT_TRUE(generated.ok()) << generated.status();
  const int64_t read = 30 + static_cast<int64_t>(generated->size()) - 1;
  for (size_t h = 0; h < before.heads.size(); ++h) {
    const auto& held =
        memory.held(static_cast<int32_t>(h) / c.n_kv_heads, static_cast<int32_t>(h) % c.n_kv_heads);
    ASSERT_EQ(static_cast<int64_t>(held.positions.size()),
              static_cast<int64_t>(before.heads[h].positions.size()) + read)
        << "head " << h << ": a frozen memory evicted a slot";
  }
  ASSERT_TRUE(memory.Rewind(before.token_offset).ok());
  const MemorySnapshot after = runner.Snapshot();
  EXPECT_EQ(after.token_offset, before.token_offset);
  for (size_t h = 0; h < before.heads.size(); ++h) {
    EXPECT_EQ(after.heads[h].positions, before.heads[h].positions);
    EXPECT_EQ(after.heads[h].keys, before.heads[h].keys);
    EXPECT_EQ(after.heads[h].values, before.heads[h].values);
  }
  // The rewound memory answers exactly as the untouched one did.
  auto again = runner.Generate(prompt, options);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *generated);
}

TEST(RecallTest, EvictedBlocksAreArchivedOnceAndRecallBringsThemBack) {
  REQUIRE_DEFAULT_MODEL(model);
  const ModelConfig& c = model->config();
  kernels::ThreadPool pool(2);
  for (int64_t block : {1, 4}) {
    RecurrentRunner runner(model, Small(block), nullptr, &pool);
    InMemoryBlockArchive archive(c.n_layers, c.n_kv_heads, c.head_dim);
    runner.set_archive(&archive);
    const std::vector<int32_t> tokens = testing::RandomTokens(100, 3);
    ASSERT_TRUE(runner.Feed(tokens).ok());
    ASSERT_TRUE(runner.Flush().ok());
    ASSERT_GT(archive.stored_bytes(), 0);
    // Memory and archive together hold every position exactly once, for every head.
    const MemorySnapshot before = runner.Snapshot();
    const std::vector<float> all_queries(c.head_dim, 1.0f);
    for (int32_t l = 0; l < c.n_layers; l += 7) {
      for (int32_t g = 0; g < c.n_kv_heads; ++g) {
        auto everything = archive.Recall(l, g, all_queries, 1, 1000);
        ASSERT_TRUE(everything.ok());
        std::multiset<int64_t> seen(before.heads[l * c.n_kv_heads + g].positions.begin(),
                                    before.heads[l * c.n_kv_heads + g].positions.end());
        for (const auto& b : *everything) {
          for (int64_t p : b.positions) {
            seen.insert(p);
            EXPECT_EQ(p / block, b.block_id);
          }
        }
        ASSERT_EQ(seen.size(), 100u);
        int64_t expect = 0;
        for (int64_t p : seen) EXPECT_EQ(p, expect++);
      }
    }
    // Per head by bounds alone (candidates <= blocks), per head exactly among 6 candidates, and
    // one choice shared by all heads.
    for (const RecallOptions options :
         {RecallOptions{.blocks = 2, .candidates = 0, .shared = false},
          RecallOptions{.blocks = 2, .candidates = 6, .shared = false},
          RecallOptions{.blocks = 2, .candidates = 6, .shared = true}}) {
      ASSERT_TRUE(runner.Restore(before).ok());
      auto added = runner.Recall(testing::RandomTokens(6, 9), options);
      ASSERT_TRUE(added.ok()) << added.status();
      EXPECT_GT(*added, 0);
      const MemorySnapshot after = runner.Snapshot();
      // The question read to capture its queries leaves no trace: only recalled slots are new.
      EXPECT_EQ(after.token_offset, before.token_offset);
      int64_t new_slots = 0;
      std::set<int64_t> recalled_blocks;
      for (size_t h = 0; h < after.heads.size(); ++h) {
        const auto& p = after.heads[h].positions;
        const auto& b = before.heads[h].positions;
        for (int64_t position : p) {
          if (!std::binary_search(b.begin(), b.end(), position)) {
            recalled_blocks.insert(position / block);
          }
        }
        EXPECT_TRUE(std::is_sorted(p.begin(), p.end()));
        EXPECT_LE(p.size(), before.heads[h].positions.size() + 2 * block);
        EXPECT_LT(p.back(), before.token_offset);
        new_slots += static_cast<int64_t>(p.size() - before.heads[h].positions.size());
      }
      EXPECT_EQ(new_slots, *added);
      // Shared: one choice of R blocks for the whole model.
      if (options.shared) {
        EXPECT_LE(recalled_blocks.size(), 2u);
      }
    }
    GenerateOptions options;
    options.max_new_tokens = 4;
    EXPECT_TRUE(runner.Generate(testing::RandomTokens(5, 1), options).ok());
  }
}

class BrokenArchive : public BlockArchive {
 public:
  absl::Status Put(ArchivedBlock) override { return absl::OkStatus(); }
  absl::StatusOr<std::vector<ArchivedBlock>> Recall(int32_t, int32_t, std::span<const float>,
                                                    int64_t, int64_t) override {
    return absl::DataLossError("archive: checksum mismatch in block 3");
  }
  absl::StatusOr<std::vector<ArchivedBlock>> Fetch(int32_t, int32_t,
                                                   std::span<const int64_t>) override {
    return absl::DataLossError("archive: checksum mismatch in block 3");
  }
  int64_t stored_bytes() const override { return 0; }
};

TEST(RecallTest, BrokenArchiveLeavesMemoryUntouchedAndAnswerStillWorks) {
  REQUIRE_DEFAULT_MODEL(model);
  kernels::ThreadPool pool(2);
  RecurrentRunner runner(model, Small(4), nullptr, &pool);
  BrokenArchive archive;
  runner.set_archive(&archive);
  ASSERT_TRUE(runner.Feed(testing::RandomTokens(60, 4)).ok());
  ASSERT_TRUE(runner.Flush().ok());
  const MemorySnapshot before = runner.Snapshot();
  auto added = runner.Recall(testing::RandomTokens(3, 2), {.blocks = 2});
  EXPECT_EQ(added.status().code(), absl::StatusCode::kDataLoss);
  const MemorySnapshot after = runner.Snapshot();
  for (size_t h = 0; h < after.heads.size(); ++h) {
    EXPECT_EQ(after.heads[h].positions, before.heads[h].positions);
  }
  GenerateOptions options;
  options.max_new_tokens = 3;
  EXPECT_TRUE(runner.Generate(testing::RandomTokens(4, 1), options).ok());
}

// An archive whose ranked reads work but whose reads by id fail: the shared choice's second
// read (heads whose bounds missed a chosen block) must leave the memory as it was, too.
class FetchFailsArchive : public InMemoryBlockArchive {
 public:
  using InMemoryBlockArchive::InMemoryBlockArchive;
  absl::StatusOr<std::vector<ArchivedBlock>> Fetch(int32_t, int32_t,
                                                   std::span<const int64_t>) override {
    ++fetches;
    return absl::DataLossError("archive: payload of block 7 missing");
  }
  int fetches = 0;
};

TEST(RecallTest, FailedFetchByIdLeavesMemoryUntouched) {
  REQUIRE_DEFAULT_MODEL(model);
  const ModelConfig& c = model->config();
  kernels::ThreadPool pool(2);
  RecurrentRunner runner(model, Small(4), nullptr, &pool);
  FetchFailsArchive archive(c.n_layers, c.n_kv_heads, c.head_dim);
  runner.set_archive(&archive);
  ASSERT_TRUE(runner.Feed(testing::RandomTokens(100, 5)).ok());
  ASSERT_TRUE(runner.Flush().ok());
  const MemorySnapshot before = runner.Snapshot();
  // Each head's bounds pass on its own 4 blocks; the one choice for all heads differs from some
  // head's, which then reads a chosen block by id (asserted: fetches > 0).
  auto added =
      runner.Recall(testing::RandomTokens(3, 2), {.blocks = 4, .candidates = 2, .shared = true});
  ASSERT_GT(archive.fetches, 0);
  EXPECT_EQ(added.status().code(), absl::StatusCode::kDataLoss) << added.status();
  const MemorySnapshot after = runner.Snapshot();
  for (size_t h = 0; h < after.heads.size(); ++h) {
    EXPECT_EQ(after.heads[h].positions, before.heads[h].positions);
  }
}

TEST(TaskScoreTest, TaskTermIsTheLargestTaskQueryDotProduct) {
  REQUIRE_DEFAULT_MODEL(model);
  const ModelConfig& c = model->config();
  kernels::ThreadPool pool(2);
  RunnerConfig config = Small(1);
  config.memory.task_weight = 0.5f;
  config.memory.task_score = TaskScore::kMaxDot;
  const std::vector<int32_t> task = testing::RandomTokens(5, 8), doc = testing::RandomTokens(50, 6);

  RecurrentRunner plain(model, config, nullptr, &pool);
  ASSERT_TRUE(plain.SetTask({}).ok());  // empty task: the plain scorer
  ASSERT_TRUE(plain.Feed(doc).ok());
  RecurrentRunner aware(model, config, nullptr, &pool);
  ASSERT_TRUE(aware.SetTask(task).ok());
  ASSERT_TRUE(aware.Feed(doc).ok());
  EXPECT_FALSE(aware.SetTask(task).ok()) << "a task after reading started must be refused";

  const MemorySnapshot p = plain.Snapshot(), a = aware.Snapshot();
  const auto& tq = aware.memory().task_queries();
  ASSERT_EQ(tq.size(), static_cast<size_t>(c.n_layers));
  const int64_t d = c.head_dim, group = c.n_heads / c.n_kv_heads;
  for (int32_t l : {0, 29}) {
    for (int32_t g = 0; g < c.n_kv_heads; ++g) {
      const auto& ha = a.heads[l * c.n_kv_heads + g];
      const auto& hp = p.heads[l * c.n_kv_heads + g];
      for (size_t s = 0; s < ha.positions.size(); ++s) {
        // Without a scorer the plain score is 0: what remains is the task term.
        auto it = std::find(hp.positions.begin(), hp.positions.end(), ha.positions[s]);
        if (it != hp.positions.end()) {
          EXPECT_EQ(hp.scores[it - hp.positions.begin()], 0.0f);
        }
        double best = -1e300;
        for (int64_t t = 0; t < 5; ++t) {
          for (int64_t h = g * group; h < (g + 1) * group; ++h) {
            double dot = 0;
            for (int64_t e = 0; e < d; ++e) {
              dot += double{tq[l][(t * c.n_heads + h) * d + e]} * ha.keys[s * d + e];
            }
            best = std::max(best, dot);
          }
        }
        EXPECT_NEAR(ha.scores[s], 0.5 * best / std::sqrt(double(d)), 1e-3);
      }
    }
  }
}

// The default task term: log of the attention mass the task's queries give a key within its
// segment, relative to uniform, checked in float64 against every key of the segment (a memory
// large enough to keep them all).
TEST(TaskScoreTest, SegmentMassIsTheTaskQueriesMeanSoftmaxOverTheSegment) {
  REQUIRE_DEFAULT_MODEL(model);
  const ModelConfig& c = model->config();
  kernels::ThreadPool pool(2);
  RunnerConfig config;
  config.memory.sinks = 2;
  config.memory.top_k = 1000;
  config.memory.window = 8;
  config.memory.task_weight = 2.0f;
  config.memory.task_score = TaskScore::kSegmentMass;
  config.segment_tokens = 20;
  const int64_t n_task = 4, n_doc = 40;
  const std::vector<int32_t> task = testing::RandomTokens(n_task, 9),
                             doc = testing::RandomTokens(n_doc, 10);
  RecurrentRunner runner(model, config, nullptr, &pool);
  ASSERT_TRUE(runner.SetTask(task).ok());
  ASSERT_TRUE(runner.Feed(doc).ok());
  const MemorySnapshot snap = runner.Snapshot();
  const auto& tq = runner.memory().task_queries();
  const int64_t d = c.head_dim, group = c.n_heads / c.n_kv_heads, L = config.segment_tokens;
  for (int32_t l : {0, 17}) {
    for (int32_t g = 0; g < c.n_kv_heads; ++g) {
      const auto& head = snap.heads[l * c.n_kv_heads + g];
      ASSERT_EQ(head.positions.size(), static_cast<size_t>(n_doc));
      for (int64_t seg = 0; seg < n_doc / L; ++seg) {
        // logits[r][j] for the segment's keys, r = task token x query head of the group.
        std::vector<std::vector<double>> logits;
        for (int64_t t = 0; t < n_task; ++t) {
          for (int64_t h = g * group; h < (g + 1) * group; ++h) {
            std::vector<double> row(L);
            for (int64_t j = 0; j < L; ++j) {
              double dot = 0;
              for (int64_t e = 0; e < d; ++e) {
                dot +=
                    double{tq[l][(t * c.n_heads + h) * d + e]} * head.keys[(seg * L + j) * d + e];
              }
              row[j] = dot / std::sqrt(double(d));
            }
            logits.push_back(row);
          }
        }
        for (int64_t j = 0; j < L; ++j) {
          double mass = 0;
          for (const auto& row : logits) {
            double z = 0;
            for (double x : row) z += std::exp(x - row[j]);
            mass += 1.0 / z;  // softmax of key j under this query
          }
          mass /= static_cast<double>(logits.size());
          const double expected = 2.0 * std::log(mass * static_cast<double>(L));
          EXPECT_NEAR(head.scores[seg * L + j], expected, 1e-3 * std::max(1.0, std::abs(expected)))
              << "layer " << l << " head " << g << " position " << seg * L + j;
        }
      }
    }
  }
}

}  // namespace
}  // namespace longread::engine
