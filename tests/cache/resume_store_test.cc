// Resume through the real store: a document whose snapshot after segment s went through
// SnapshotStore (database closed and reopened, as after a crash) finishes bit-identically to an
// uninterrupted run (CPU, greedy), for every s; the archive of evicted blocks resumes too.
#include <rocksdb/db.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "cache/block_archive_store.h"
#include "cache/snapshot_store.h"
#include "engine/memory/runner.h"
#include "gtest/gtest.h"
#include "tests/cache/test_util.h"
#include "tests/engine/test_model.h"

namespace longread::cache {
namespace {

using engine::MemorySnapshot;
using engine::RecurrentRunner;
using engine::RunnerConfig;

struct Outcome {
  std::vector<int32_t> answer;
  MemorySnapshot final_state;
};

RunnerConfig SmallMemory(int64_t block_tokens = 1) {
  RunnerConfig config;
  config.memory.sinks = 4;
  config.memory.block_tokens = block_tokens;
  config.memory.top_k = 24;
  config.memory.window = 16;
  config.segment_tokens = 32;
  return config;
}

const std::vector<int32_t> kQuestion = {1, 9690, 198};

// Reads the rest, optionally recalls `recall_blocks` per head, answers greedily.
Outcome Finish(RecurrentRunner& runner, std::span<const int32_t> rest, int64_t recall_blocks = 0) {
  Outcome o;
  EXPECT_TRUE(runner.Feed(rest).ok());
  EXPECT_TRUE(runner.Flush().ok());
  if (recall_blocks > 0) {
    auto recalled = runner.Recall(kQuestion, {.blocks = recall_blocks});
    EXPECT_TRUE(recalled.ok()) << recalled.status();
    EXPECT_GT(recalled.value_or(0), 0);
  }
  o.final_state = runner.Snapshot();
  engine::GenerateOptions options;
  options.max_new_tokens = 6;
  auto answer = runner.Generate(kQuestion, options);
  EXPECT_TRUE(answer.ok()) << answer.status();
  if (answer.ok()) o.answer = *answer;
  return o;
}

void ExpectBitIdentical(const MemorySnapshot& a, const MemorySnapshot& b) {
  ASSERT_EQ(a.heads.size(), b.heads.size());
  EXPECT_EQ(a.token_offset, b.token_offset);
  EXPECT_EQ(a.segment_index, b.segment_index);
  for (size_t h = 0; h < a.heads.size(); ++h) {
    EXPECT_EQ(a.heads[h].positions, b.heads[h].positions);
    ASSERT_EQ(a.heads[h].keys.size(), b.heads[h].keys.size());
    ASSERT_EQ(a.heads[h].scores.size(), b.heads[h].scores.size());
    EXPECT_EQ(0, std::memcmp(a.heads[h].scores.data(), b.heads[h].scores.data(),
                             a.heads[h].scores.size() * sizeof(float)));
    EXPECT_EQ(0, std::memcmp(a.heads[h].keys.data(), b.heads[h].keys.data(),
                             a.heads[h].keys.size() * sizeof(float)));
    EXPECT_EQ(0, std::memcmp(a.heads[h].values.data(), b.heads[h].values.data(),
                             a.heads[h].values.size() * sizeof(float)));
  }
}

std::unique_ptr<CacheDb> OpenDb(const TempDir& dir) {
  auto db = CacheDb::Open(dir.db());
  EXPECT_TRUE(db.ok()) << db.status();
  return db.ok() ? *std::move(db) : nullptr;
}

// What this run expects a stored snapshot to match: its model and its own configuration (taken
// from a runner that has read nothing, not from the snapshot).
ExpectedIdentity IdentityOf(engine::LlamaModel* model, const RunnerConfig& config,
                            kernels::ThreadPool* pool) {
  RecurrentRunner probe(model, config, nullptr, pool);
  return {model->fingerprint(), probe.Snapshot().config_hash};
}

TEST(ResumeStoreTest, ResumeFromTheStoreAfterEverySegmentIsBitIdentical) {
  REQUIRE_DEFAULT_MODEL(model);
  kernels::ThreadPool pool(2);
  const std::vector<int32_t> tokens =
      engine::testing::RandomTokens(150, 42);  // 4 full segments and a partial one
  RecurrentRunner whole(model, SmallMemory(), nullptr, &pool);
  const Outcome expected = Finish(whole, tokens);
  ASSERT_EQ(expected.answer.size(), 6u);
  const ExpectedIdentity identity = IdentityOf(model, SmallMemory(), &pool);

  const size_t L = SmallMemory().segment_tokens;
  for (size_t s = 1; s * L <= tokens.size(); ++s) {
    TempDir dir;
    const size_t fed = std::min(tokens.size(), s * L + 5);  // pending tokens travel too
    {
      std::unique_ptr<CacheDb> db = OpenDb(dir);
      ASSERT_NE(db, nullptr);
      SnapshotStore store(db.get());
      RecurrentRunner first(model, SmallMemory(), nullptr, &pool);
      ASSERT_TRUE(first.Feed(std::span(tokens).first(fed)).ok());
      auto put = store.Put("doc", first.Snapshot());
      ASSERT_TRUE(put.ok()) << put.status();
    }  // the process "crashes": store and database closed

    std::unique_ptr<CacheDb> db = OpenDb(dir);
    ASSERT_NE(db, nullptr);
    SnapshotStore store(db.get());
    auto latest = store.GetLatest("doc", identity);
    ASSERT_TRUE(latest.ok()) << latest.status();
    EXPECT_EQ(latest->segment_index, static_cast<int64_t>(s));
    RecurrentRunner resumed(model, SmallMemory(), nullptr, &pool);
    ASSERT_TRUE(resumed.Restore(*latest).ok());
    const Outcome got = Finish(resumed, std::span(tokens).subspan(fed));
    EXPECT_EQ(got.answer, expected.answer) << "resumed after segment " << s;
    ExpectBitIdentical(got.final_state, expected.final_state);
  }
}

TEST(ResumeStoreTest, SnapshotOfAnotherConfigIsRefusedAndADamagedOneRestarts) {
  REQUIRE_DEFAULT_MODEL(model);
  kernels::ThreadPool pool(2);
  TempDir dir;
  std::unique_ptr<CacheDb> db = OpenDb(dir);
  ASSERT_NE(db, nullptr);
  SnapshotStore store(db.get());
  RecurrentRunner runner(model, SmallMemory(), nullptr, &pool);
  ASSERT_TRUE(runner.Feed(engine::testing::RandomTokens(70, 42)).ok());
  ASSERT_TRUE(store.Put("doc", runner.Snapshot()).ok());

  RunnerConfig other = SmallMemory();
  other.memory.top_k = 25;
  const ExpectedIdentity other_identity = IdentityOf(model, other, &pool);
  auto refused = store.GetLatest("doc", other_identity);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
  ResumePoint restart = GetLatestOrRestart(store, "doc", other_identity);
  EXPECT_FALSE(restart.snapshot.has_value());
  EXPECT_EQ(restart.refused.code(), absl::StatusCode::kFailedPrecondition);

  // Flip one byte of the stored record: the document restarts, nothing crashes.
  const std::string key = RecordKey("doc", 1);
  std::string value;
  ASSERT_TRUE(db->db()->Get(rocksdb::ReadOptions(), db->snapshots(), key, &value).ok());
  value[value.size() - 100] ^= 0x04;
  ASSERT_TRUE(db->db()->Put(rocksdb::WriteOptions(), db->snapshots(), key, value).ok());
  ResumePoint damaged = GetLatestOrRestart(store, "doc", IdentityOf(model, SmallMemory(), &pool));
  EXPECT_FALSE(damaged.snapshot.has_value());
  EXPECT_EQ(damaged.refused.code(), absl::StatusCode::kDataLoss) << damaged.refused;
}

// With the archive in RocksDB: the resumed run re-evicts what the first run archived after its
// snapshot (same keys, replaced), so recall and the answer match the uninterrupted run.
TEST(ResumeStoreTest, ResumeWithTheArchiveRecallsTheSameBlocks) {
  REQUIRE_DEFAULT_MODEL(model);
  kernels::ThreadPool pool(2);
  const engine::ModelConfig& mc = model->config();
  const RunnerConfig config = SmallMemory(/*block_tokens=*/4);
  const std::vector<int32_t> tokens = engine::testing::RandomTokens(150, 42);
  auto open_archive = [&](CacheDb* db) {
    auto archive = RocksDbBlockArchive::Open(db, "doc", mc.n_layers, mc.n_kv_heads, mc.head_dim);
    EXPECT_TRUE(archive.ok()) << archive.status();
    return archive.ok() ? *std::move(archive) : nullptr;
  };

  TempDir whole_dir;
  Outcome expected;
  {
    std::unique_ptr<CacheDb> db = OpenDb(whole_dir);
    ASSERT_NE(db, nullptr);
    auto archive = open_archive(db.get());
    ASSERT_NE(archive, nullptr);
    RecurrentRunner whole(model, config, nullptr, &pool);
    whole.set_archive(archive.get());
    expected = Finish(whole, tokens, /*recall_blocks=*/2);
    EXPECT_GT(archive->stats().blocks_stored, 0u);
  }

  TempDir dir;
  const size_t fed = 2 * config.segment_tokens + 5;
  {
    std::unique_ptr<CacheDb> db = OpenDb(dir);
    ASSERT_NE(db, nullptr);
    SnapshotStore store(db.get());
    auto archive = open_archive(db.get());
    ASSERT_NE(archive, nullptr);
    RecurrentRunner first(model, config, nullptr, &pool);
    first.set_archive(archive.get());
    ASSERT_TRUE(first.Feed(std::span(tokens).first(fed)).ok());
    ASSERT_TRUE(store.Put("doc", first.Snapshot()).ok());
    // Reading goes on past the snapshot (archiving more) before the crash.
    ASSERT_TRUE(first.Feed(std::span(tokens).subspan(fed, 40)).ok());
  }
  std::unique_ptr<CacheDb> db = OpenDb(dir);
  ASSERT_NE(db, nullptr);
  SnapshotStore store(db.get());
  auto latest = store.GetLatest("doc", IdentityOf(model, config, &pool));
  ASSERT_TRUE(latest.ok()) << latest.status();
  auto archive = open_archive(db.get());
  ASSERT_NE(archive, nullptr);
  RecurrentRunner resumed(model, config, nullptr, &pool);
  ASSERT_TRUE(resumed.Restore(*latest).ok());
  resumed.set_archive(archive.get());
  const Outcome got = Finish(resumed, std::span(tokens).subspan(fed), /*recall_blocks=*/2);
  EXPECT_EQ(got.answer, expected.answer);
  ExpectBitIdentical(got.final_state, expected.final_state);
}

}  // namespace
}  // namespace longread::cache
