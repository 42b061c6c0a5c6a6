#include "cache/snapshot_store.h"

#include <rocksdb/db.h>

#include <memory>
#include <string>

#include "absl/time/time.h"
#include "cache/synthetic_document.h"
#include "gtest/gtest.h"
#include "tests/cache/test_util.h"

namespace longread::cache {
namespace {

using engine::MemorySnapshot;

SyntheticShape SmallShape() {
  SyntheticShape shape;
  shape.n_layers = 3;
  shape.n_kv_heads = 2;
  shape.head_dim = 8;
  shape.sink = 2;
  shape.top_k = 32;
  shape.window = 8;
  shape.segment_len = 16;
  return shape;
}

ExpectedIdentity Identity() { return {SmallShape().model_fingerprint, SmallShape().config_hash}; }

MemorySnapshot SnapshotAt(int64_t segment) {
  SyntheticDocument doc(SmallShape());
  doc.AdvanceTo(segment);
  return doc.Snapshot();
}

class SnapshotStoreTest : public ::testing::Test {
 protected:
  void SetUp() override { Reopen(); }
  void Reopen(SnapshotStoreOptions options = {}) {
    store_.reset();
    db_.reset();
    absl::StatusOr<std::unique_ptr<CacheDb>> db = CacheDb::Open(dir_.db());
    ASSERT_TRUE(db.ok()) << db.status();
    db_ = *std::move(db);
    store_ = std::make_unique<SnapshotStore>(db_.get(), options);
  }
  void ExpectLatestIs(std::string_view doc_id, int64_t segment) {
    absl::StatusOr<MemorySnapshot> latest = store_->GetLatest(doc_id, Identity());
    ASSERT_TRUE(latest.ok()) << latest.status();
    EXPECT_EQ(latest->segment_index, segment);
    EXPECT_EQ(ContentHash(*latest), ContentHash(SnapshotAt(segment)));
  }

  TempDir dir_;
  std::unique_ptr<CacheDb> db_;
  std::unique_ptr<SnapshotStore> store_;
};

TEST_F(SnapshotStoreTest, MissingDocumentIsNotFound) {
  EXPECT_EQ(store_->GetLatest("nope", Identity()).status().code(), absl::StatusCode::kNotFound);
  ResumePoint resume = GetLatestOrRestart(*store_, "nope", Identity());
  EXPECT_FALSE(resume.snapshot.has_value());
  EXPECT_TRUE(resume.refused.ok());
}

TEST_F(SnapshotStoreTest, DeltaChainIsBoundedAndReadsBackExactly) {
  SyntheticDocument doc(SmallShape());
  for (int64_t seg = 1; seg <= 20; ++seg) {
    doc.AdvanceTo(seg);
    absl::StatusOr<PutResult> put = store_->Put("doc", doc.Snapshot());
    ASSERT_TRUE(put.ok()) << put.status();
    // Segment 1 is full; then 8 deltas; then full again, with the chain never longer than 9.
    EXPECT_EQ(put->kind, (seg - 1) % 9 == 0 ? RecordKind::kFull : RecordKind::kDelta)
        << "segment " << seg;
    EXPECT_EQ(put->chain_length, (seg - 1) % 9 + 1);
    if (put->kind == RecordKind::kDelta) {
      EXPECT_LT(put->raw_payload_bytes, FullPayloadBytes(doc.Snapshot()));
    }
    ExpectLatestIs("doc", seg);
  }
}

TEST_F(SnapshotStoreTest, ReopenedStoreStartsWithAFullRecord) {
  ASSERT_TRUE(store_->Put("doc", SnapshotAt(1)).ok());
  ASSERT_TRUE(store_->Put("doc", SnapshotAt(2)).ok());
  Reopen();
  ExpectLatestIs("doc", 2);
  absl::StatusOr<PutResult> put = store_->Put("doc", SnapshotAt(3));
  ASSERT_TRUE(put.ok());
  EXPECT_EQ(put->kind, RecordKind::kFull);
  EXPECT_EQ(put->chain_length, 1);
  ExpectLatestIs("doc", 3);
}

TEST_F(SnapshotStoreTest, CompressedRecordsReadBack) {
  SnapshotStoreOptions options;
  options.encode = {.codec = Codec::kZstd, .shuffle = true};
  Reopen(options);
  for (int64_t seg = 1; seg <= 4; ++seg) ASSERT_TRUE(store_->Put("doc", SnapshotAt(seg)).ok());
  ExpectLatestIs("doc", 4);
}

TEST_F(SnapshotStoreTest, OtherModelOrConfigIsRefusedNamingBoth) {
  ASSERT_TRUE(store_->Put("doc", SnapshotAt(2)).ok());
  absl::Status status = store_->GetLatest("doc", {"other-model", Identity().config_hash}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(status.message().find("other-model"), std::string::npos) << status;
  EXPECT_NE(status.message().find(SmallShape().model_fingerprint), std::string::npos) << status;
  EXPECT_EQ(store_->GetLatest("doc", {Identity().model_fingerprint, 77}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  ResumePoint resume = GetLatestOrRestart(*store_, "doc", {"other-model", 1});
  EXPECT_FALSE(resume.snapshot.has_value());
  EXPECT_EQ(resume.refused.code(), absl::StatusCode::kFailedPrecondition);
  ExpectLatestIs("doc", 2);  // not deleted: it belongs to another model
}

TEST_F(SnapshotStoreTest, FlippedByteInStoredRecordRestartsTheDocument) {
  ASSERT_TRUE(store_->Put("doc", SnapshotAt(1)).ok());
  ASSERT_TRUE(store_->Put("doc", SnapshotAt(2)).ok());  // a delta on record 1
  for (uint64_t seq : {1u, 2u}) {
    std::string value;
    const std::string key = RecordKey("doc", seq);
    ASSERT_TRUE(db_->db()->Get({}, db_->snapshots(), key, &value).ok());
    std::string damaged = value;
    damaged[damaged.size() / 2] ^= 0x04;
    ASSERT_TRUE(db_->db()->Put({}, db_->snapshots(), key, damaged).ok());
    absl::Status status = store_->GetLatest("doc", Identity()).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
    EXPECT_NE(status.message().find("checksum"), std::string::npos) << status;
    ASSERT_TRUE(db_->db()->Put({}, db_->snapshots(), key, value).ok());
    ExpectLatestIs("doc", 2);
  }
  std::string value;
  ASSERT_TRUE(db_->db()->Get({}, db_->snapshots(), RecordKey("doc", 2), &value).ok());
  value[100] ^= 1;
  ASSERT_TRUE(db_->db()->Put({}, db_->snapshots(), RecordKey("doc", 2), value).ok());
  ResumePoint resume = GetLatestOrRestart(*store_, "doc", Identity());
  EXPECT_FALSE(resume.snapshot.has_value());
  EXPECT_EQ(resume.refused.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(resume.refused.message().find("restarting"), std::string::npos);
  // The damaged document is gone, and writing it again starts a fresh chain.
  EXPECT_EQ(store_->GetLatest("doc", Identity()).status().code(), absl::StatusCode::kNotFound);
  absl::StatusOr<PutResult> put = store_->Put("doc", SnapshotAt(1));
  ASSERT_TRUE(put.ok());
  EXPECT_EQ(put->kind, RecordKind::kFull);
  ExpectLatestIs("doc", 1);
}

TEST_F(SnapshotStoreTest, DamagedHeadIsReportedAndOverwrittenByTheNextPut) {
  ASSERT_TRUE(store_->Put("doc", SnapshotAt(1)).ok());
  ASSERT_TRUE(db_->db()->Put({}, db_->snapshots(), HeadKey("doc"), "garbage-head-bytes").ok());
  EXPECT_EQ(store_->GetLatest("doc", Identity()).status().code(), absl::StatusCode::kDataLoss);
  absl::StatusOr<PutResult> put = store_->Put("doc", SnapshotAt(2));
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_EQ(put->kind, RecordKind::kFull);
  ExpectLatestIs("doc", 2);
}

TEST_F(SnapshotStoreTest, MalformedInputIsRejected) {
  MemorySnapshot s = SnapshotAt(2);
  s.heads[1].values.resize(3);
  EXPECT_EQ(store_->Put("doc", s).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->Put("", SnapshotAt(2)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->Put(std::string("a\0b", 3), SnapshotAt(2)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(SnapshotStoreTest, DocIdsThatArePrefixesOfEachOtherStayApart) {
  ASSERT_TRUE(store_->Put("a", SnapshotAt(1)).ok());
  ASSERT_TRUE(store_->Put("a/b", SnapshotAt(2)).ok());
  ASSERT_TRUE(store_->Put("a0", SnapshotAt(3)).ok());
  ASSERT_TRUE(store_->DeleteDocument("a").ok());
  EXPECT_EQ(store_->GetLatest("a", Identity()).status().code(), absl::StatusCode::kNotFound);
  ExpectLatestIs("a/b", 2);
  ExpectLatestIs("a0", 3);
}

TEST_F(SnapshotStoreTest, ListAndDeleteJob) {
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  ASSERT_TRUE(store_->Put("d1", SnapshotAt(1), {.job_id = "j1", .now = t0}).ok());
  ASSERT_TRUE(store_->Put("d2", SnapshotAt(2), {.job_id = "j1", .now = t0}).ok());
  ASSERT_TRUE(store_->Put("d3", SnapshotAt(3), {.job_id = "j2", .now = t0}).ok());
  absl::StatusOr<std::vector<DocumentInfo>> list = store_->List();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 3u);
  EXPECT_EQ((*list)[0].doc_id, "d1");
  EXPECT_EQ((*list)[1].job_id, "j1");
  EXPECT_EQ((*list)[2].segment_index, 3);
  EXPECT_EQ((*list)[2].last_write, t0);
  EXPECT_GT((*list)[2].stored_bytes, FullPayloadBytes(SnapshotAt(3)));

  absl::StatusOr<int> deleted = store_->DeleteJob("j1");
  ASSERT_TRUE(deleted.ok());
  EXPECT_EQ(*deleted, 2);
  list = store_->List();
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].doc_id, "d3");
  EXPECT_EQ(store_->GetLatest("d1", Identity()).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(SnapshotStoreTest, GarbageCollectByTtlThenOldestFirstToFitTheCap) {
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(store_
                    ->Put("d" + std::to_string(i), SnapshotAt(2),
                          {.job_id = "", .now = t0 + absl::Hours(i)})
                    .ok());
  }
  const uint64_t doc_bytes = store_->Info("d0")->stored_bytes;

  // TTL 2.5h at t0+5h: d0, d1, d2 (written at 0h, 1h, 2h) are older than 2.5h.
  absl::StatusOr<GcStats> gc =
      store_->GarbageCollect(t0 + absl::Hours(5), {.ttl = absl::Minutes(150)});
  ASSERT_TRUE(gc.ok()) << gc.status();
  EXPECT_EQ(gc->expired, 3);
  EXPECT_EQ(gc->evicted, 0);
  EXPECT_EQ(gc->bytes_remaining, 2 * doc_bytes);

  ASSERT_TRUE(store_->Put("d5", SnapshotAt(2), {.job_id = "", .now = t0 + absl::Hours(6)}).ok());
  // Cap of 2 documents: the oldest (d3) goes.
  gc = store_->GarbageCollect(t0 + absl::Hours(6),
                              {.ttl = absl::InfiniteDuration(), .max_total_bytes = 2 * doc_bytes});
  ASSERT_TRUE(gc.ok());
  EXPECT_EQ(gc->evicted, 1);
  EXPECT_EQ(gc->bytes_freed, doc_bytes);
  absl::StatusOr<std::vector<DocumentInfo>> list = store_->List();
  ASSERT_TRUE(list.ok());
  std::vector<std::string> left;
  for (const DocumentInfo& info : *list) left.push_back(info.doc_id);
  EXPECT_EQ(left, (std::vector<std::string>{"d4", "d5"}));
}

TEST_F(SnapshotStoreTest, ChainRecordsLeavingTheChainAreDeleted) {
  for (int64_t seg = 1; seg <= 10; ++seg) ASSERT_TRUE(store_->Put("doc", SnapshotAt(seg)).ok());
  // Segment 10 started a new chain: the nine records before it must be gone.
  int records = 0;
  std::unique_ptr<rocksdb::Iterator> it(db_->db()->NewIterator({}, db_->snapshots()));
  for (it->Seek("snap/"); it->Valid() && it->key().starts_with("snap/"); it->Next()) ++records;
  EXPECT_EQ(records, 1);
  EXPECT_EQ(store_->Info("doc")->chain_length, 1);
}

}  // namespace
}  // namespace longread::cache
