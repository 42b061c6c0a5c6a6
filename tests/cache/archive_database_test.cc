// cache::ArchiveDatabase, the one archive handler of `longread run` and longread-worker: what a
// dead owner left is collected at open (by prefix at once, others by age), archives open and are
// deleted per document.
#include "cache/archive_database.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/cache/test_util.h"

namespace longread::cache {
namespace {

constexpr int32_t kLayers = 2, kKvHeads = 2;
constexpr int64_t kHeadDim = 8;

void PutBlock(RocksDbBlockArchive* archive, int64_t id) {
  engine::ArchivedBlock b;
  b.layer = 1;
  b.kv_head = 0;
  b.block_id = id;
  for (int64_t t = 0; t < 4; ++t) {
    b.positions.push_back(id * 4 + t);
    b.scores.push_back(1.0f);
    for (int64_t e = 0; e < kHeadDim; ++e) {
      b.keys.push_back(static_cast<float>(e - t));
      b.values.push_back(static_cast<float>(t + e));
    }
  }
  ASSERT_TRUE(archive->Put(b).ok());
  ASSERT_TRUE(archive->Flush().ok());
}

std::vector<std::string> Archived(CacheDb* db) {
  auto docs = ListArchivedDocuments(db);
  EXPECT_TRUE(docs.ok()) << docs.status();
  std::vector<std::string> ids;
  if (docs.ok()) {
    for (const auto& [id, when] : *docs) ids.push_back(id);
  }
  return ids;
}

ArchiveDatabaseOptions Options(const std::string& dir, const std::string& prefix) {
  ArchiveDatabaseOptions o;
  o.cache_dir = dir;
  o.name = "worker-db";
  o.orphan_prefix = prefix;
  return o;
}

// A worker's database: every archive in it at open is a dead worker's ("" prefix), whatever its
// id or age.
TEST(ArchiveDatabaseTest, AnEmptyOrphanPrefixCollectsEveryArchiveAtOpen) {
  TempDir dir;
  {
    auto database = ArchiveDatabase::Open(Options(dir.path(), ""));
    ASSERT_TRUE(database.ok()) << database.status();
    for (const std::string id : {"worker-job-0-1-abc", "run-123", "anything"}) {
      auto archive = (*database)->OpenArchive(id, kLayers, kKvHeads, kHeadDim, 0);
      ASSERT_TRUE(archive.ok()) << archive.status();
      PutBlock(archive->get(), 0);
    }
    EXPECT_EQ(Archived((*database)->db()).size(), 3u);
  }
  auto reopened = ArchiveDatabase::Open(Options(dir.path(), ""));
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  EXPECT_EQ((*reopened)->collected(), 3);
  EXPECT_TRUE((*reopened)->gc_status().ok()) << (*reopened)->gc_status();
  EXPECT_TRUE(Archived((*reopened)->db()).empty());
  EXPECT_EQ((*reopened)->path(), dir.path() + "/worker-db");
}

// `longread run`'s prefix: only its own orphans go at once; a recent archive of another owner
// stays until it is older than the TTL.
TEST(ArchiveDatabaseTest, APrefixCollectsOnlyItsOwnOrphansAtOnce) {
  TempDir dir;
  {
    auto database = ArchiveDatabase::Open(Options(dir.path(), "run-"));
    ASSERT_TRUE(database.ok()) << database.status();
    for (const std::string id : {"run-1", "someone-else"}) {
      auto archive = (*database)->OpenArchive(id, kLayers, kKvHeads, kHeadDim, 0);
      ASSERT_TRUE(archive.ok()) << archive.status();
      PutBlock(archive->get(), 0);
    }
  }
  auto reopened = ArchiveDatabase::Open(Options(dir.path(), "run-"));
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  EXPECT_EQ((*reopened)->collected(), 1);
  EXPECT_EQ(Archived((*reopened)->db()), std::vector<std::string>{"someone-else"});
}

TEST(ArchiveDatabaseTest, DeleteArchiveClosesItAndRemovesWrittenAndPendingRecords) {
  TempDir dir;
  auto database = ArchiveDatabase::Open(Options(dir.path(), ""));
  ASSERT_TRUE(database.ok()) << database.status();
  auto archive = (*database)->OpenArchive("doc", kLayers, kKvHeads, kHeadDim, 0);
  ASSERT_TRUE(archive.ok()) << archive.status();
  PutBlock(archive->get(), 0);
  engine::ArchivedBlock pending;  // put, not flushed
  pending.layer = 0;
  pending.kv_head = 1;
  pending.block_id = 7;
  pending.positions = {28};
  pending.scores = {1.0f};
  pending.keys.assign(kHeadDim, 0.5f);
  pending.values.assign(kHeadDim, 0.25f);
  ASSERT_TRUE((*archive)->Put(pending).ok());
  ASSERT_TRUE((*database)->DeleteArchive(&*archive).ok());
  EXPECT_EQ(*archive, nullptr);
  EXPECT_TRUE(Archived((*database)->db()).empty());
  EXPECT_TRUE((*database)->Compact().ok());
  EXPECT_TRUE((*database)->DeleteArchive("never-opened").ok());
}

TEST(ArchiveDatabaseTest, NoCacheDirIsAFailedPrecondition) {
  auto database = ArchiveDatabase::Open(Options("", ""));
  EXPECT_EQ(database.status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace longread::cache
