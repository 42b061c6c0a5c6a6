#include "cache/snapshot_writer.h"

#include <memory>

#include "cache/synthetic_document.h"
#include "gtest/gtest.h"
#include "tests/cache/test_util.h"

namespace longread::cache {
namespace {

using engine::MemorySnapshot;

SyntheticShape SmallShape() {
  SyntheticShape shape;
  shape.n_layers = 2;
  shape.n_kv_heads = 1;
  shape.head_dim = 4;
  shape.sink = 1;
  shape.top_k = 4;
  shape.window = 4;
  shape.segment_len = 8;
  return shape;
}

MemorySnapshot SnapshotAt(int64_t segment) {
  SyntheticDocument doc(SmallShape());
  doc.AdvanceTo(segment);
  return doc.Snapshot();
}

class SnapshotWriterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<CacheDb>> db = CacheDb::Open(dir_.db());
    ASSERT_TRUE(db.ok()) << db.status();
    db_ = *std::move(db);
    store_ = std::make_unique<SnapshotStore>(db_.get());
  }
  int64_t LatestSegment(std::string_view doc_id) {
    absl::StatusOr<MemorySnapshot> latest =
        store_->GetLatest(doc_id, {SmallShape().model_fingerprint, SmallShape().config_hash});
    return latest.ok() ? latest->segment_index : -1;
  }

  TempDir dir_;
  std::unique_ptr<CacheDb> db_;
  std::unique_ptr<SnapshotStore> store_;
};

TEST_F(SnapshotWriterTest, EveryNSegments) {
  SnapshotWriter writer(store_.get(), {.policy = {.every_n_segments = 3}});
  int queued = 0, wanted = 0;
  for (int64_t seg = 1; seg <= 10; ++seg) {
    wanted += writer.WantsSnapshot("doc", seg);
    queued += writer.Offer("doc", SnapshotAt(seg));
  }
  EXPECT_EQ(wanted, 3);
  ASSERT_TRUE(writer.Flush().ok());
  EXPECT_EQ(queued, 3);  // segments 3, 6, 9
  EXPECT_EQ(LatestSegment("doc"), 9);
  EXPECT_EQ(writer.stats().not_due, 7u);
  EXPECT_EQ(writer.stats().written + writer.stats().coalesced, 3u);
}

TEST_F(SnapshotWriterTest, EveryTSecondsWithAnInjectedClock) {
  absl::Time now = absl::FromUnixSeconds(100);
  SnapshotWriter writer(store_.get(),
                        {.policy = {.every_n_segments = 0, .every = absl::Seconds(10)},
                         .max_pending_documents = 64,
                         .clock = [&now] { return now; }});
  EXPECT_FALSE(writer.Offer("doc", SnapshotAt(1)));  // starts the clock for this document
  now += absl::Seconds(4);
  EXPECT_FALSE(writer.Offer("doc", SnapshotAt(2)));
  now += absl::Seconds(6);
  EXPECT_TRUE(writer.Offer("doc", SnapshotAt(3)));
  now += absl::Seconds(9);
  EXPECT_FALSE(writer.Offer("doc", SnapshotAt(4)));
  EXPECT_TRUE(writer.Offer("doc", SnapshotAt(5), "", /*force=*/true));
  ASSERT_TRUE(writer.Flush().ok());
  EXPECT_EQ(LatestSegment("doc"), 5);
}

TEST_F(SnapshotWriterTest, QueueCoalescesPerDocumentAndDropsWhenFullWithoutBlocking) {
  SnapshotWriter writer(store_.get(), {.policy = {},
                                       .max_pending_documents = 2,
                                       .clock = [] { return absl::Now(); },
                                       .start_worker = false});
  // Nothing is being written, yet none of these offers waits.
  EXPECT_TRUE(writer.Offer("a", SnapshotAt(1)));
  EXPECT_TRUE(writer.Offer("a", SnapshotAt(2)));
  EXPECT_TRUE(writer.Offer("a", SnapshotAt(3)));
  EXPECT_TRUE(writer.Offer("b", SnapshotAt(1)));
  EXPECT_FALSE(writer.Offer("c", SnapshotAt(1)));  // queue full
  SnapshotWriterStats stats = writer.stats();
  EXPECT_EQ(stats.queued, 2u);
  EXPECT_EQ(stats.coalesced, 2u);
  EXPECT_EQ(stats.dropped, 1u);
  writer.Start();
  ASSERT_TRUE(writer.Flush().ok());
  EXPECT_EQ(LatestSegment("a"), 3);
  EXPECT_EQ(LatestSegment("b"), 1);
  EXPECT_EQ(LatestSegment("c"), -1);
  EXPECT_EQ(writer.stats().written, 2u);
  // The dropped document's next offer is due again.
  EXPECT_TRUE(writer.Offer("c", SnapshotAt(2)));
  ASSERT_TRUE(writer.Flush().ok());
  EXPECT_EQ(LatestSegment("c"), 2);
}

TEST_F(SnapshotWriterTest, DiscardDropsTheQueuedSnapshot) {
  SnapshotWriter writer(store_.get(), {.policy = {},
                                       .max_pending_documents = 8,
                                       .clock = [] { return absl::Now(); },
                                       .start_worker = false});
  writer.Offer("a", SnapshotAt(1));
  writer.Offer("b", SnapshotAt(1));
  writer.Discard("a");
  writer.Start();
  ASSERT_TRUE(writer.Flush().ok());
  EXPECT_EQ(LatestSegment("a"), -1);
  EXPECT_EQ(LatestSegment("b"), 1);
}

TEST_F(SnapshotWriterTest, ShutdownWritesWhatIsQueued) {
  {
    SnapshotWriter writer(store_.get(), {.policy = {},
                                         .max_pending_documents = 8,
                                         .clock = [] { return absl::Now(); },
                                         .start_worker = false});
    writer.Offer("a", SnapshotAt(4));
  }
  EXPECT_EQ(LatestSegment("a"), 4);
}

TEST_F(SnapshotWriterTest, WriteErrorsSurfaceInFlush) {
  SnapshotWriter writer(store_.get());
  MemorySnapshot bad = SnapshotAt(2);
  bad.heads[0].keys.clear();
  writer.Offer("a", std::move(bad));
  absl::Status status = writer.Flush();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_EQ(writer.stats().failed, 1u);
  EXPECT_TRUE(writer.Flush().ok());  // reported once
}

}  // namespace
}  // namespace longread::cache
