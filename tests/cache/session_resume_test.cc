// A failover through the real stores: a DocumentSession checkpointed after segment 3, its
// MemorySnapshot encoded and decoded as a snapshot record (cache/snapshot_format), the archive
// blocks put up to the checkpoint shipped (LRBD) and replayed into a FRESH RocksDB archive of
// another database with the same size cap, resumed by a new session: the answer is
// byte-identical to an undisturbed run, with the same recall and the same cap decisions.
#include <memory>
#include <string>
#include <vector>

#include "cache/block_archive_store.h"
#include "cache/cache_db.h"
#include "cache/snapshot_format.h"
#include "engine/job/document_session.h"
#include "engine/memory/recording_archive.h"
#include "gtest/gtest.h"
#include "tests/cache/test_util.h"
#include "tests/engine/job/session_test_util.h"
#include "tests/engine/test_model.h"

namespace longread::cache {
namespace {

using engine::DocumentJobOptions;
using engine::DocumentJobResult;

// Small enough that the cap deletes blocks while the document is read (the uncapped archive of
// this document is ~40 MB in bf16), large enough that recall still finds the planted fact's
// neighbourhood.
constexpr uint64_t kCapBytes = uint64_t{20} << 20;

struct Store {
  TempDir dir;
  std::unique_ptr<CacheDb> db;
  std::unique_ptr<RocksDbBlockArchive> archive;
};

std::unique_ptr<Store> OpenStore(const engine::ModelConfig& c) {
  auto store = std::make_unique<Store>();
  auto db = CacheDb::Open(store->dir.db());
  EXPECT_TRUE(db.ok()) << db.status();
  if (!db.ok()) return nullptr;
  store->db = std::move(*db);
  // The same document id on every worker: key bytes count towards the cap.
  auto archive = RocksDbBlockArchive::Open(store->db.get(), "job-1/doc-0", c.n_layers, c.n_kv_heads,
                                           c.head_dim, {.max_bytes = kCapBytes});
  EXPECT_TRUE(archive.ok()) << archive.status();
  if (!archive.ok()) return nullptr;
  store->archive = std::move(*archive);
  return store;
}

TEST(SessionResumeStoreTest, ResumedFromDecodedSnapshotAndReplayedRocksDbArchiveIsIdentical) {
  REQUIRE_DEFAULT_MODEL(model);
  auto tokenizer = engine::Tokenizer::Create(model->file().tokenizer());
  ASSERT_TRUE(tokenizer.ok());
  const std::vector<int32_t> tokens =
      (*tokenizer)->Encode(engine::testing::LedgerDocument(), false);
  kernels::ThreadPool pool(2);
  const auto& c = model->config();
  DocumentJobOptions options = engine::testing::SmallSessionOptions();

  auto undisturbed_store = OpenStore(c);
  ASSERT_NE(undisturbed_store, nullptr);
  options.archive = undisturbed_store->archive.get();
  auto undisturbed =
      engine::RunTokenizedDocumentJob(*model, **tokenizer, tokens, options, nullptr, &pool);
  ASSERT_TRUE(undisturbed.ok()) << undisturbed.status();
  ASSERT_GT(undisturbed->recalled_slots, 0);
  EXPECT_TRUE(undisturbed->recall_error.empty()) << undisturbed->recall_error;
  const BlockArchiveStats expected = undisturbed_store->archive->stats();
  ASSERT_GT(expected.evicted_for_cap, 0u) << "the cap must act for this test to mean anything";

  // The first worker: checkpoint after segment 3 (+ 50 pending tokens); it dies afterwards.
  auto first_store = OpenStore(c);
  ASSERT_NE(first_store, nullptr);
  const engine::testing::Interrupted cut = engine::testing::InterruptAfter(
      *model, **tokenizer, tokens, options, first_store->archive.get(), &pool, 3, 100, 50);
  ASSERT_FALSE(cut.blocks.empty());
  ASSERT_FALSE(cut.checkpoint.memory.pending_tokens.empty());

  // What travels: the snapshot as a record, the archive delta as LRBD.
  const uint64_t hash = ContentHash(cut.checkpoint.memory);
  const std::string record = EncodeFullRecord(cut.checkpoint.memory, hash, {});
  const std::string shipped = engine::EncodeArchivedBlocks(cut.blocks, c.head_dim);
  auto decoded = DecodeRecord(record);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(ContentHash(decoded->state), hash);
  // The snapshot alone is enough: Restore derives where reading resumes.
  engine::SessionCheckpoint received;
  received.memory = std::move(decoded->state);
  auto blocks = engine::DecodeArchivedBlocks(shipped, c.head_dim);
  ASSERT_TRUE(blocks.ok()) << blocks.status();

  // The second worker: a fresh database, the delta replayed, a new session restored.
  auto second_store = OpenStore(c);
  ASSERT_NE(second_store, nullptr);
  ASSERT_TRUE(engine::ReplayBlocks(*blocks, second_store->archive.get()).ok());
  const DocumentJobResult resumed = engine::testing::ResumeAndFinish(
      *model, **tokenizer, tokens, options, second_store->archive.get(), &pool, received,
      cut.checkpoint.document_tokens_consumed, 64);
  EXPECT_EQ(resumed.answer, undisturbed->answer);
  EXPECT_EQ(resumed.recalled_slots, undisturbed->recalled_slots);
  EXPECT_TRUE(resumed.recall_error.empty()) << resumed.recall_error;

  const BlockArchiveStats got = second_store->archive->stats();
  EXPECT_EQ(got.blocks_put, expected.blocks_put);
  EXPECT_EQ(got.blocks_stored, expected.blocks_stored);
  EXPECT_EQ(got.evicted_for_cap, expected.evicted_for_cap);
  EXPECT_EQ(got.tokens_stored, expected.tokens_stored);
  EXPECT_EQ(second_store->archive->stored_bytes(), undisturbed_store->archive->stored_bytes());
}

}  // namespace
}  // namespace longread::cache
