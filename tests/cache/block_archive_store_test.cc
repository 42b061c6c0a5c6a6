#include "cache/block_archive_store.h"

#include <rocksdb/db.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <memory>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "engine/memory/recording_archive.h"
#include "gtest/gtest.h"
#include "kernels/half.h"
#include "tests/cache/test_util.h"

namespace longread::cache {
namespace {

using engine::ArchivedBlock;

constexpr int32_t kLayers = 2, kKvHeads = 2;
constexpr int64_t kHeadDim = 16, kBlockTokens = 8;

// Block `id` of (layer, head): gaussian keys/values, scores distinct per block; `partial` drops
// the block's first tokens as an eviction of part of a block would.
ArchivedBlock MakeBlock(int32_t layer, int32_t kv_head, int64_t id, int partial = 0) {
  std::mt19937_64 rng((layer * 131 + kv_head) * 100003 + id * 7 + partial);
  std::normal_distribution<float> normal;
  ArchivedBlock b;
  b.layer = layer;
  b.kv_head = kv_head;
  b.block_id = id;
  for (int64_t t = partial; t < kBlockTokens; ++t) {
    b.positions.push_back(id * kBlockTokens + t);
    b.scores.push_back(static_cast<float>(id % 13) + 0.01f * t + 0.001f * normal(rng));
    for (int64_t e = 0; e < kHeadDim; ++e) {
      b.keys.push_back(normal(rng) * (e % 5 == 0 ? 4.0f : 1.0f));
      b.values.push_back(normal(rng));
    }
  }
  return b;
}

// Blocks 0..n-1 of every head, in a shuffled order (eviction is by score, not by age).
std::vector<ArchivedBlock> Blocks(int64_t n) {
  std::vector<ArchivedBlock> all;
  for (int32_t l = 0; l < kLayers; ++l) {
    for (int32_t g = 0; g < kKvHeads; ++g) {
      for (int64_t id = 0; id < n; ++id) all.push_back(MakeBlock(l, g, id));
    }
  }
  std::shuffle(all.begin(), all.end(), std::mt19937_64(3));
  return all;
}

std::vector<float> Queries(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> q(n * kHeadDim);
  for (float& x : q) x = normal(rng);
  return q;
}

std::vector<int64_t> FirstPositions(const std::vector<ArchivedBlock>& blocks) {
  std::vector<int64_t> out;
  for (const ArchivedBlock& b : blocks) out.push_back(b.positions.front());
  return out;
}

bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

class BlockArchiveStoreTest : public ::testing::Test {
 protected:
  void SetUp() override { ReopenDb(); }
  void ReopenDb() {
    db_.reset();
    absl::StatusOr<std::unique_ptr<CacheDb>> db = CacheDb::Open(dir_.db());
    ASSERT_TRUE(db.ok()) << db.status();
    db_ = *std::move(db);
  }
  std::unique_ptr<RocksDbBlockArchive> OpenArchive(BlockArchiveOptions options = {},
                                                   const std::string& doc = "doc",
                                                   int64_t head_dim = kHeadDim) {
    auto archive = RocksDbBlockArchive::Open(db_.get(), doc, kLayers, kKvHeads, head_dim, options);
    EXPECT_TRUE(archive.ok()) << archive.status();
    return archive.ok() ? *std::move(archive) : nullptr;
  }
  void PutAll(engine::BlockArchive& archive, const std::vector<ArchivedBlock>& blocks) {
    for (const ArchivedBlock& b : blocks) ASSERT_TRUE(archive.Put(b).ok());
  }
  std::string RawGet(const std::string& key) {
    std::string value;
    EXPECT_TRUE(db_->db()->Get(rocksdb::ReadOptions(), db_->block_archive(), key, &value).ok());
    return value;
  }
  void RawPut(const std::string& key, const std::string& value) {
    ASSERT_TRUE(db_->db()->Put(rocksdb::WriteOptions(), db_->block_archive(), key, value).ok());
  }

  TempDir dir_;
  std::unique_ptr<CacheDb> db_;
};

TEST_F(BlockArchiveStoreTest, Fp32RecallIsTheInMemoryArchivesChoiceBitForBit) {
  const std::vector<ArchivedBlock> blocks = Blocks(40);
  engine::InMemoryBlockArchive reference(kLayers, kKvHeads, kHeadDim);
  PutAll(reference, blocks);
  BlockArchiveOptions options;
  options.precision = ArchivePrecision::kFp32;
  options.flush_every_blocks = 7;  // several batches, one left pending at Recall
  auto archive = OpenArchive(options);
  ASSERT_NE(archive, nullptr);
  PutAll(*archive, blocks);
  for (int32_t l = 0; l < kLayers; ++l) {
    for (int32_t g = 0; g < kKvHeads; ++g) {
      for (int64_t r : {1, 5, 100}) {
        const std::vector<float> q = Queries(6, l * 10 + g + r);
        auto want = reference.Recall(l, g, q, 6, r);
        auto got = archive->Recall(l, g, q, 6, r);
        ASSERT_TRUE(want.ok() && got.ok()) << got.status();
        ASSERT_EQ(FirstPositions(*got), FirstPositions(*want)) << l << "/" << g << " r=" << r;
        for (size_t i = 0; i < got->size(); ++i) {
          EXPECT_EQ((*got)[i].positions, (*want)[i].positions);
          EXPECT_EQ((*got)[i].block_id, (*want)[i].block_id);
          EXPECT_TRUE(SameBits((*got)[i].scores, (*want)[i].scores));
          EXPECT_TRUE(SameBits((*got)[i].keys, (*want)[i].keys));
          EXPECT_TRUE(SameBits((*got)[i].values, (*want)[i].values));
        }
      }
    }
  }
  EXPECT_EQ(archive->stats().blocks_stored, blocks.size());
  EXPECT_EQ(archive->stats().recalls, 12u);
}

TEST_F(BlockArchiveStoreTest, Bf16RecallsTheSameBlocksWithinRounding) {
  const std::vector<ArchivedBlock> blocks = Blocks(30);
  engine::InMemoryBlockArchive reference(kLayers, kKvHeads, kHeadDim);
  PutAll(reference, blocks);
  auto archive = OpenArchive();  // bf16 is the default
  ASSERT_NE(archive, nullptr);
  PutAll(*archive, blocks);
  const std::vector<float> q = Queries(4, 9);
  auto want = reference.Recall(1, 0, q, 4, 6);
  auto got = archive->Recall(1, 0, q, 4, 6);
  ASSERT_TRUE(want.ok() && got.ok()) << got.status();
  // Representatives are fp32 in both precisions, so the choice is identical.
  ASSERT_EQ(FirstPositions(*got), FirstPositions(*want));
  bool any_rounded = false;
  for (size_t i = 0; i < got->size(); ++i) {
    EXPECT_TRUE(SameBits((*got)[i].scores, (*want)[i].scores));
    for (const auto& [a, b] : {std::pair{&(*got)[i].keys, &(*want)[i].keys},
                               std::pair{&(*got)[i].values, &(*want)[i].values}}) {
      ASSERT_EQ(a->size(), b->size());
      for (size_t e = 0; e < a->size(); ++e) {
        EXPECT_LE(std::fabs((*a)[e] - (*b)[e]), std::fabs((*b)[e]) * (1.0f / 256));
        any_rounded |= (*a)[e] != (*b)[e];
      }
    }
  }
  EXPECT_TRUE(any_rounded);
}

TEST_F(BlockArchiveStoreTest, BytesPerTokenAreReportedAndBf16IsSmaller) {
  double per_token[2];
  for (ArchivePrecision p : {ArchivePrecision::kFp32, ArchivePrecision::kBf16}) {
    BlockArchiveOptions options;
    options.precision = p;
    auto archive = OpenArchive(options, p == ArchivePrecision::kFp32 ? "fp32" : "bf16");
    ASSERT_NE(archive, nullptr);
    PutAll(*archive, Blocks(10));
    const BlockArchiveStats s = archive->stats();
    EXPECT_EQ(s.tokens_stored, 10u * kLayers * kKvHeads * kBlockTokens);
    const uint64_t key_bytes = ArchivePayloadKey("fp32", 0, 0, 0, 0).size();
    EXPECT_EQ(s.payload_bytes + s.representative_bytes + 2 * s.blocks_stored * key_bytes,
              static_cast<uint64_t>(archive->stored_bytes()));
    per_token[static_cast<int>(p)] =
        static_cast<double>(archive->stored_bytes()) / static_cast<double>(s.tokens_stored);
    // Payload per token: position + score + key + value.
    const double elem = p == ArchivePrecision::kFp32 ? 4 : 2;
    EXPECT_NEAR(static_cast<double>(s.payload_bytes) / s.tokens_stored,
                12 + 2 * kHeadDim * elem + (36.0 + 8) / kBlockTokens, 1e-9);
    RecordProperty(p == ArchivePrecision::kFp32 ? "fp32_bytes_per_token" : "bf16_bytes_per_token",
                   std::to_string(per_token[static_cast<int>(p)]));
  }
  EXPECT_LT(per_token[1], per_token[0]);
}

TEST_F(BlockArchiveStoreTest, RecallAfterReopenWorksFromRocksDbAlone) {
  const std::vector<ArchivedBlock> blocks = Blocks(25);
  const std::vector<float> q = Queries(3, 77);
  std::vector<int64_t> before;
  int64_t bytes = 0;
  {
    auto archive = OpenArchive();
    ASSERT_NE(archive, nullptr);
    PutAll(*archive, blocks);  // the destructor writes the pending batch
    auto got = archive->Recall(0, 1, q, 3, 4);
    ASSERT_TRUE(got.ok());
    before = FirstPositions(*got);
    bytes = archive->stored_bytes();
  }
  ReopenDb();
  for (bool in_ram : {true, false}) {
    BlockArchiveOptions options;
    options.keep_representatives_in_ram = in_ram;
    auto archive = OpenArchive(options);
    ASSERT_NE(archive, nullptr);
    EXPECT_EQ(archive->stored_bytes(), bytes);
    EXPECT_EQ(archive->stats().blocks_stored, blocks.size());
    auto got = archive->Recall(0, 1, q, 3, 4);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(FirstPositions(*got), before);
  }
}

TEST_F(BlockArchiveStoreTest, PuttingABlockAgainReplacesIt) {
  auto archive = OpenArchive();
  ASSERT_NE(archive, nullptr);
  PutAll(*archive, Blocks(5));
  const int64_t bytes = archive->stored_bytes();
  PutAll(*archive, Blocks(5));  // a resumed document evicts the same blocks again
  EXPECT_EQ(archive->stored_bytes(), bytes);
  EXPECT_EQ(archive->stats().blocks_stored, 5u * kLayers * kKvHeads);
  // Another part of an already archived block is a separate record.
  ASSERT_TRUE(archive->Put(MakeBlock(0, 0, 2, /*partial=*/3)).ok());
  EXPECT_EQ(archive->stats().blocks_stored, 5u * kLayers * kKvHeads + 1);
}

// PutBatch encodes on a pool but must store what Puts one after another store, cap decisions
// and batch boundaries included; a recorder over it records exactly the blocks put.
TEST_F(BlockArchiveStoreTest, PutBatchOnThreadsStoresWhatPutsStore) {
  std::vector<ArchivedBlock> blocks = Blocks(60);
  blocks[150].keys.pop_back();  // malformed: the batch holding it stops there
  BlockArchiveOptions options;
  options.max_bytes = 60 * 1024;  // the cap deletes blocks
  options.flush_every_blocks = 50;
  auto one_by_one = OpenArchive(options, "seq");
  options.encode_threads = 3;
  auto batched = OpenArchive(options, "bat");
  ASSERT_NE(one_by_one, nullptr);
  ASSERT_NE(batched, nullptr);
  engine::RecordingBlockArchive recorder(batched.get());
  size_t expected_put = 0;
  for (const ArchivedBlock& b : blocks) {
    if (!one_by_one->Put(b).ok()) break;
    ++expected_put;
  }
  ASSERT_EQ(expected_put, 150u);
  size_t put = 0, recorded = 0;
  for (size_t at = 0; at < blocks.size(); at += 37) {
    const size_t n = std::min<size_t>(37, blocks.size() - at);
    size_t n_put = 0;
    const absl::Status s = recorder.PutBatch(std::span(blocks).subspan(at, n), &n_put);
    put += n_put;
    if (!s.ok()) {
      EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
      break;
    }
  }
  EXPECT_EQ(put, expected_put);
  for (const ArchivedBlock& b : recorder.TakeRecorded()) {
    EXPECT_EQ(FirstPositions({b}), FirstPositions({blocks[recorded]}));
    ++recorded;
  }
  EXPECT_EQ(recorded, expected_put);
  ASSERT_TRUE(one_by_one->Flush().ok());
  ASSERT_TRUE(batched->Flush().ok());
  const BlockArchiveStats a = one_by_one->stats(), b = batched->stats();
  EXPECT_GT(a.evicted_for_cap, 0u);
  EXPECT_EQ(a.blocks_put, b.blocks_put);
  EXPECT_EQ(a.blocks_stored, b.blocks_stored);
  EXPECT_EQ(a.evicted_for_cap, b.evicted_for_cap);
  EXPECT_EQ(a.batches_written, b.batches_written);
  EXPECT_EQ(one_by_one->stored_bytes(), batched->stored_bytes());
  std::vector<int64_t> ids(60);
  std::iota(ids.begin(), ids.end(), 0);
  for (int32_t l = 0; l < kLayers; ++l) {
    for (int32_t g = 0; g < kKvHeads; ++g) {
      auto want = one_by_one->Fetch(l, g, ids);
      auto got = batched->Fetch(l, g, ids);
      ASSERT_TRUE(want.ok() && got.ok());
      ASSERT_EQ(FirstPositions(*want), FirstPositions(*got));
      for (size_t i = 0; i < want->size(); ++i) {
        EXPECT_TRUE(SameBits((*want)[i].keys, (*got)[i].keys));
        EXPECT_TRUE(SameBits((*want)[i].values, (*got)[i].values));
        EXPECT_TRUE(SameBits((*want)[i].scores, (*got)[i].scores));
      }
    }
  }
}

// The GPU memory's writer puts bf16 rows as they are: the records (payloads and representatives,
// byte for byte), the cap's choices and the recorded delta equal those of putting the same rows
// widened to fp32, NaNs included (narrowing a widened NaN quiets it).
TEST_F(BlockArchiveStoreTest, PutRowsStoresWhatPutBatchOfTheWidenedRowsStores) {
  std::vector<ArchivedBlock> blocks = Blocks(40);
  std::vector<std::vector<uint16_t>> keys16(blocks.size()), values16(blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    for (float x : blocks[i].keys) keys16[i].push_back(kernels::FloatToBFloat16(x));
    for (float x : blocks[i].values) values16[i].push_back(kernels::FloatToBFloat16(x));
  }
  keys16[7][3] = 0x7f81;    // a signalling NaN key
  values16[9][5] = 0xffc1;  // a negative quiet NaN value
  keys16[11][0] = 0x8000;   // -0
  std::vector<engine::Bf16BlockRows> rows(blocks.size());
  std::vector<ArchivedBlock> widened(blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    rows[i].layer = blocks[i].layer;
    rows[i].kv_head = blocks[i].kv_head;
    rows[i].block_id = blocks[i].block_id;
    rows[i].positions = blocks[i].positions;
    rows[i].scores = blocks[i].scores;
    rows[i].keys = keys16[i];
    rows[i].values = values16[i];
    engine::WidenRows(rows[i], &widened[i]);
  }
  BlockArchiveOptions options;
  options.max_bytes = 50 * 1024;  // the cap deletes blocks
  options.flush_every_blocks = 30;
  auto from_fp32 = OpenArchive(options, "fp32");
  options.encode_threads = 3;
  auto from_rows = OpenArchive(options, "rows");
  ASSERT_NE(from_fp32, nullptr);
  ASSERT_NE(from_rows, nullptr);
  engine::RecordingBlockArchive recorder(from_rows.get());
  for (size_t at = 0; at < blocks.size(); at += 23) {
    const size_t n = std::min<size_t>(23, blocks.size() - at);
    size_t put_fp32 = 0, put_rows = 0;
    ASSERT_TRUE(from_fp32->PutBatch(std::span(widened).subspan(at, n), &put_fp32).ok());
    ASSERT_TRUE(
        recorder.PutRows(std::span<const engine::Bf16BlockRows>(rows).subspan(at, n), &put_rows)
            .ok());
    EXPECT_EQ(put_fp32, n);
    EXPECT_EQ(put_rows, n);
  }
  int64_t recorded_bytes = 0;
  for (const ArchivedBlock& b : widened) recorded_bytes += engine::ArchivedBlockBytes(b);
  EXPECT_EQ(recorder.recorded_bytes(), recorded_bytes);
  const std::vector<ArchivedBlock> recorded = recorder.TakeRecorded();
  ASSERT_EQ(recorded.size(), widened.size());
  for (size_t i = 0; i < widened.size(); ++i) {
    EXPECT_EQ(FirstPositions({recorded[i]}), FirstPositions({widened[i]}));
    EXPECT_TRUE(SameBits(recorded[i].keys, widened[i].keys)) << i;
    EXPECT_TRUE(SameBits(recorded[i].values, widened[i].values)) << i;
    EXPECT_TRUE(SameBits(recorded[i].scores, widened[i].scores)) << i;
  }
  ASSERT_TRUE(from_fp32->Flush().ok());
  ASSERT_TRUE(from_rows->Flush().ok());
  EXPECT_GT(from_fp32->stats().evicted_for_cap, 0u);
  EXPECT_EQ(from_fp32->stats().blocks_stored, from_rows->stats().blocks_stored);
  EXPECT_EQ(from_fp32->stored_bytes(), from_rows->stored_bytes());
  int compared = 0;
  for (const ArchivedBlock& b : blocks) {
    for (auto key : {&ArchivePayloadKey, &ArchiveRepresentativeKey}) {
      std::string a, r;
      const rocksdb::Status sa =
          db_->db()->Get(rocksdb::ReadOptions(), db_->block_archive(),
                         key("fp32", b.layer, b.kv_head, b.block_id, b.positions[0]), &a);
      const rocksdb::Status sr =
          db_->db()->Get(rocksdb::ReadOptions(), db_->block_archive(),
                         key("rows", b.layer, b.kv_head, b.block_id, b.positions[0]), &r);
      ASSERT_EQ(sa.ok(), sr.ok()) << b.block_id;
      EXPECT_EQ(a, r) << b.block_id;
      compared += sa.ok() ? 1 : 0;
    }
  }
  EXPECT_GT(compared, 20);
  // Recall ranks by the representatives: the same blocks come back.
  const std::vector<float> q = Queries(3, 5);
  for (int32_t l = 0; l < kLayers; ++l) {
    for (int32_t g = 0; g < kKvHeads; ++g) {
      auto want = from_fp32->Recall(l, g, q, 3, 4);
      auto got = from_rows->Recall(l, g, q, 3, 4);
      ASSERT_TRUE(want.ok() && got.ok());
      EXPECT_EQ(FirstPositions(*want), FirstPositions(*got));
    }
  }
}

TEST_F(BlockArchiveStoreTest, MalformedBlocksAreRefused) {
  auto archive = OpenArchive();
  ASSERT_NE(archive, nullptr);
  ArchivedBlock b = MakeBlock(0, 0, 1);
  b.values.pop_back();
  EXPECT_EQ(archive->Put(b).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(archive->Put(MakeBlock(kLayers, 0, 1)).code(), absl::StatusCode::kInvalidArgument);
  b = MakeBlock(0, 0, 1);
  std::swap(b.positions[0], b.positions[1]);
  EXPECT_EQ(archive->Put(b).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(archive->Recall(0, kKvHeads, Queries(1, 1), 1, 2).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(archive->stored_bytes(), 0);
  EXPECT_EQ(RocksDbBlockArchive::Open(db_.get(), std::string("a\0b", 3), 1, 1, 4).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(BlockArchiveStoreTest, CapKeepsTheMostImportantBlocks) {
  // 39 blocks of head (0, 0) with importance id % 13: the cap holds 20 of them.
  const std::vector<ArchivedBlock> blocks = [] {
    std::vector<ArchivedBlock> v;
    for (int64_t id = 0; id < 39; ++id) v.push_back(MakeBlock(0, 0, id));
    return v;
  }();
  uint64_t one_block = 0;
  {
    auto probe = OpenArchive({}, "dox");  // same key length as "doc"
    ASSERT_NE(probe, nullptr);
    ASSERT_TRUE(probe->Put(blocks[0]).ok());
    one_block = probe->stored_bytes();
  }
  BlockArchiveOptions options;
  options.max_bytes = 20 * one_block;
  options.flush_every_blocks = 5;
  {
    auto archive = OpenArchive(options);
    ASSERT_NE(archive, nullptr);
    PutAll(*archive, blocks);
    EXPECT_LE(static_cast<uint64_t>(archive->stored_bytes()), options.max_bytes);
    const BlockArchiveStats s = archive->stats();
    EXPECT_EQ(s.blocks_stored, 20u);
    EXPECT_EQ(s.evicted_for_cap, 19u);
    // Blocks of importance 0..5 put once the archive is full are the first victims: never written.
    EXPECT_GT(s.blocks_skipped_for_cap, 0u);
    EXPECT_LT(s.blocks_skipped_for_cap, s.evicted_for_cap);
  }
  ReopenDb();
  auto archive = OpenArchive(options);
  ASSERT_NE(archive, nullptr);
  EXPECT_EQ(archive->stats().blocks_stored, 20u);  // the evicted records are gone from disk
  auto all = archive->Recall(0, 0, Queries(1, 5), 1, 100);
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->size(), 20u);
  // Importance ~ id % 13 in 0..12, three blocks each: the 20 kept are the 21 of importance 6..12
  // but one of those of importance 6 (the lowest of the three).
  int importance_6 = 0;
  for (const ArchivedBlock& b : *all) {
    EXPECT_GE(b.block_id % 13, 6) << b.block_id;
    importance_6 += b.block_id % 13 == 6;
  }
  EXPECT_EQ(importance_6, 2);
}

TEST_F(BlockArchiveStoreTest, DeleteDocumentAndGarbageCollection) {
  {
    auto a = OpenArchive({}, "a");
    auto b = OpenArchive({}, "a/b");  // a prefix of another id must not collide
    ASSERT_NE(a, nullptr);
    ASSERT_NE(b, nullptr);
    PutAll(*a, Blocks(4));
    PutAll(*b, Blocks(4));
  }
  auto docs = ListArchivedDocuments(db_.get());
  ASSERT_TRUE(docs.ok());
  ASSERT_EQ(docs->size(), 2u);
  ASSERT_TRUE(DeleteArchivedDocument(db_.get(), "a").ok());
  auto a = OpenArchive({}, "a");
  auto b = OpenArchive({}, "a/b");
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(a->stored_bytes(), 0);
  EXPECT_EQ(b->stats().blocks_stored, 4u * kLayers * kKvHeads);
  auto none = a->Recall(0, 0, Queries(1, 1), 1, 3);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());

  // TTL: nothing is older than an hour now; everything is a day from now.
  auto kept = GarbageCollectArchives(db_.get(), absl::Now(), absl::Hours(1));
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ(*kept, 0);
  auto expired = GarbageCollectArchives(db_.get(), absl::Now() + absl::Hours(24), absl::Hours(1));
  ASSERT_TRUE(expired.ok());
  EXPECT_EQ(*expired, 1);
  b.reset();
  auto reopened = OpenArchive({}, "a/b");
  ASSERT_NE(reopened, nullptr);
  EXPECT_EQ(reopened->stored_bytes(), 0);

  // DeleteAll on an open archive forgets its RAM index too.
  PutAll(*reopened, Blocks(2));
  ASSERT_TRUE(reopened->DeleteAll().ok());
  EXPECT_EQ(reopened->stored_bytes(), 0);
  EXPECT_TRUE(ListArchivedDocuments(db_.get())->empty());
}

uint64_t DirectoryBytes(const std::string& path) {
  uint64_t bytes = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(path)) {
    if (e.is_regular_file()) bytes += e.file_size();
  }
  return bytes;
}

// A deleted archive's records stay on disk (range tombstones) until CompactArchives; the other
// documents' archives come through the compaction intact.
TEST_F(BlockArchiveStoreTest, CompactionFreesDeletedArchivesAndKeepsTheOthers) {
  const std::vector<ArchivedBlock> blocks = Blocks(1500);
  const std::vector<float> q = Queries(2, 5);
  std::vector<int64_t> before;
  {
    auto a = OpenArchive({}, "a");
    auto b = OpenArchive({}, "b");
    ASSERT_NE(a, nullptr);
    ASSERT_NE(b, nullptr);
    PutAll(*a, blocks);
    PutAll(*b, blocks);
    auto got = b->Recall(1, 0, q, 2, 4);
    ASSERT_TRUE(got.ok()) << got.status();
    before = FirstPositions(*got);
  }
  // Archive writes skip the WAL: the records reach the disk when their memtable is flushed.
  ASSERT_TRUE(db_->db()->Flush(rocksdb::FlushOptions(), db_->block_archive()).ok());
  ASSERT_TRUE(DeleteArchivedDocument(db_.get(), "a").ok());
  const uint64_t deleted_only = DirectoryBytes(dir_.db());
  ASSERT_TRUE(CompactArchives(db_.get()).ok());
  const uint64_t compacted = DirectoryBytes(dir_.db());
  EXPECT_LT(compacted, deleted_only * 3 / 4) << deleted_only << " -> " << compacted;
  ReopenDb();
  auto b = OpenArchive({}, "b");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->stats().blocks_stored, blocks.size());
  auto got = b->Recall(1, 0, q, 2, 4);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(FirstPositions(*got), before);
  ASSERT_TRUE(CompactArchives(db_.get()).ok());  // nothing to drop: still fine
}

class ArchiveCorruptionTest : public BlockArchiveStoreTest {
 protected:
  // Writes 12 blocks per head; returns the block the question recalls first in (1, 1).
  int64_t Populate(const std::vector<float>& q) {
    auto archive = OpenArchive();
    EXPECT_NE(archive, nullptr);
    if (archive == nullptr) return -1;
    PutAll(*archive, Blocks(12));
    auto got = archive->Recall(1, 1, q, 2, 1);
    EXPECT_TRUE(got.ok());
    return got.ok() && !got->empty() ? got->front().block_id : -1;
  }
  // The damaged archive's recall: DataLoss naming the key; other heads still recall.
  void ExpectDataLoss(const std::string& key_part, const std::string& problem,
                      const std::vector<float>& q) {
    ReopenDb();
    auto archive = OpenArchive();
    ASSERT_NE(archive, nullptr);
    auto got = archive->Recall(1, 1, q, 2, 1);
    ASSERT_FALSE(got.ok());
    EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss) << got.status();
    EXPECT_NE(got.status().message().find(key_part), std::string::npos) << got.status();
    EXPECT_NE(got.status().message().find(problem), std::string::npos) << got.status();
    auto other = archive->Recall(0, 1, q, 2, 3);
    ASSERT_TRUE(other.ok()) << other.status();
    EXPECT_EQ(other->size(), 3u);
  }
  static std::string Suffix(int64_t block_id) {
    return absl::StrFormat("%016x/%016x", block_id, block_id * kBlockTokens);
  }
};

TEST_F(ArchiveCorruptionTest, FlippedPayloadByteIsDataLoss) {
  const std::vector<float> q = Queries(2, 4);
  const int64_t id = Populate(q);
  const std::string key = ArchivePayloadKey("doc", 1, 1, id, id * kBlockTokens);
  std::string value = RawGet(key);
  value[value.size() / 2] ^= 0x10;
  RawPut(key, value);
  ExpectDataLoss(Suffix(id), "checksum", q);
}

TEST_F(ArchiveCorruptionTest, TruncatedPayloadIsDataLoss) {
  const std::vector<float> q = Queries(2, 4);
  const int64_t id = Populate(q);
  const std::string key = ArchivePayloadKey("doc", 1, 1, id, id * kBlockTokens);
  RawPut(key, RawGet(key).substr(0, 20));
  ExpectDataLoss(Suffix(id), "bytes", q);
}

TEST_F(ArchiveCorruptionTest, DeletedPayloadIsDataLoss) {
  const std::vector<float> q = Queries(2, 4);
  const int64_t id = Populate(q);
  ASSERT_TRUE(db_->db()
                  ->Delete(rocksdb::WriteOptions(), db_->block_archive(),
                           ArchivePayloadKey("doc", 1, 1, id, id * kBlockTokens))
                  .ok());
  ExpectDataLoss(Suffix(id), "missing", q);
}

TEST_F(ArchiveCorruptionTest, FlippedRepresentativeByteIsDataLoss) {
  const std::vector<float> q = Queries(2, 4);
  Populate(q);
  const std::string key = ArchiveRepresentativeKey("doc", 1, 1, 7, 7 * kBlockTokens);
  std::string value = RawGet(key);
  value[70] ^= 0x01;
  RawPut(key, value);
  ExpectDataLoss(Suffix(7), "checksum", q);
  // The same through a scan of RocksDB instead of the RAM index.
  BlockArchiveOptions options;
  options.keep_representatives_in_ram = false;
  auto archive = OpenArchive(options);
  ASSERT_NE(archive, nullptr);
  EXPECT_EQ(archive->Recall(1, 1, q, 2, 1).status().code(), absl::StatusCode::kDataLoss);
}

TEST_F(ArchiveCorruptionTest, WrongShapeIsDataLoss) {
  const std::vector<float> q = Queries(2, 4);
  Populate(q);
  ReopenDb();
  // The same document opened with another head_dim: every representative is the wrong size.
  auto archive = OpenArchive({}, "doc", kHeadDim * 2);
  ASSERT_NE(archive, nullptr);
  const std::vector<float> wide(2 * kHeadDim * 2, 1.0f);
  auto got = archive->Recall(0, 0, wide, 2, 1);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss) << got.status();
  EXPECT_NE(got.status().message().find("expected"), std::string::npos) << got.status();
}

TEST(CacheDbArchiveFamilyTest, OpeningAnOlderDatabaseAddsTheFamily) {
  TempDir dir;
  {
    rocksdb::DBOptions options;
    options.create_if_missing = true;
    options.create_missing_column_families = true;
    std::vector<rocksdb::ColumnFamilyDescriptor> families = {
        {rocksdb::kDefaultColumnFamilyName, {}},
        {kSnapshotColumnFamily, {}},
        {kJobStateColumnFamily, {}}};
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    rocksdb::DB* raw = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(options, dir.db(), families, &handles, &raw).ok());
    ASSERT_TRUE(raw->Put(rocksdb::WriteOptions(), handles[2], "job", "state").ok());
    for (auto* h : handles) raw->DestroyColumnFamilyHandle(h);
    delete raw;
  }
  auto db = CacheDb::Open(dir.db());
  ASSERT_TRUE(db.ok()) << db.status();
  ASSERT_NE((*db)->block_archive(), nullptr);
  std::string value;
  EXPECT_TRUE((*db)->db()->Get(rocksdb::ReadOptions(), (*db)->job_state(), "job", &value).ok());
  EXPECT_EQ(value, "state");
  auto archive = RocksDbBlockArchive::Open(db->get(), "doc", 1, 1, kHeadDim);
  ASSERT_TRUE(archive.ok());
  EXPECT_TRUE((*archive)->Put(MakeBlock(0, 0, 3)).ok());
  EXPECT_TRUE((*archive)->Flush().ok());
}

}  // namespace
}  // namespace longread::cache
