#include "services/cli/run_archive.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "cache/block_archive_store.h"
#include "cache/cache_db.h"
#include "gtest/gtest.h"
#include "tests/cache/test_util.h"

namespace longread::services {
namespace {

constexpr int32_t kLayers = 2, kKvHeads = 2;
constexpr int64_t kHeadDim = 8;

RunArchiveOptions Options(const std::string& cache_dir) {
  RunArchiveOptions o;
  o.cache_dir = cache_dir;
  o.n_layers = kLayers;
  o.n_kv_heads = kKvHeads;
  o.head_dim = kHeadDim;
  return o;
}

engine::ArchivedBlock Block(int32_t layer, int32_t kv_head, int64_t id) {
  engine::ArchivedBlock b;
  b.layer = layer;
  b.kv_head = kv_head;
  b.block_id = id;
  for (int64_t t = 0; t < 4; ++t) {
    b.positions.push_back(id * 4 + t);
    b.scores.push_back(static_cast<float>(id + t));
    for (int64_t e = 0; e < kHeadDim; ++e) {
      b.keys.push_back(static_cast<float>((id + 1) * (e + 1) % 7) - 3.0f);
      b.values.push_back(static_cast<float>(t - e));
    }
  }
  return b;
}

std::vector<std::string> Archived(const std::string& cache_dir) {
  auto db = cache::CacheDb::Open(CacheDbPath(cache_dir));
  EXPECT_TRUE(db.ok()) << db.status();
  if (!db.ok()) return {"<unopenable>"};
  auto docs = cache::ListArchivedDocuments(db->get());
  EXPECT_TRUE(docs.ok()) << docs.status();
  std::vector<std::string> ids;
  if (docs.ok()) {
    for (const auto& [id, when] : *docs) ids.push_back(id);
  }
  return ids;
}

void PutSome(cache::RocksDbBlockArchive* archive) {
  for (int64_t id = 0; id < 3; ++id) ASSERT_TRUE(archive->Put(Block(1, 1, id)).ok());
  ASSERT_TRUE(archive->Flush().ok());
}

TEST(RunArchiveTest, CloseDeletesTheRunsRecords) {
  cache::TempDir dir;
  auto run = RunArchive::Open(Options(dir.path() + "/nested/cache"));
  ASSERT_TRUE(run.ok()) << run.status();
  PutSome((*run)->archive());
  EXPECT_GT((*run)->archive()->stored_bytes(), 0);
  const std::vector<float> queries(kHeadDim, 1.0f);
  auto recalled = (*run)->archive()->Recall(1, 1, queries, 1, 2);
  ASSERT_TRUE(recalled.ok()) << recalled.status();
  EXPECT_EQ(recalled->size(), 2u);
  EXPECT_TRUE((*run)->Close().ok());
  EXPECT_TRUE((*run)->Close().ok());  // idempotent
  EXPECT_TRUE(Archived(dir.path() + "/nested/cache").empty());
}

// An early return in the CLI (a failed job) destroys the RunArchive without Close: the records,
// including Puts still pending in the batch, are gone as well.
TEST(RunArchiveTest, DestructionDeletesPendingAndWrittenRecords) {
  cache::TempDir dir;
  {
    auto run = RunArchive::Open(Options(dir.path()));
    ASSERT_TRUE(run.ok()) << run.status();
    PutSome((*run)->archive());
    ASSERT_TRUE((*run)->archive()->Put(Block(0, 0, 9)).ok());  // pending, not flushed
  }
  EXPECT_TRUE(Archived(dir.path()).empty());
}

uint64_t DirectoryBytes(const std::string& path) {
  uint64_t bytes = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(path)) {
    if (e.is_regular_file()) bytes += e.file_size();
  }
  return bytes;
}

// Range deletions alone leave the records on disk; Close compacts them away, including those
// flushed to SST files (more than the 16 MiB memtable of the archive family is written).
TEST(RunArchiveTest, CloseFreesTheDiskSpace) {
  cache::TempDir dir;
  RunArchiveOptions options = Options(dir.path());
  options.head_dim = 64;
  auto run = RunArchive::Open(options);
  ASSERT_TRUE(run.ok()) << run.status();
  for (int64_t id = 0; id < 3000; ++id) {
    engine::ArchivedBlock b;
    b.layer = static_cast<int32_t>(id % kLayers);
    b.block_id = id;
    for (int64_t t = 0; t < 32; ++t) {
      b.positions.push_back(id * 32 + t);
      b.scores.push_back(static_cast<float>(t));
      for (int64_t e = 0; e < 64; ++e) {
        b.keys.push_back(static_cast<float>((id * 31 + t * 7 + e) % 17));
        b.values.push_back(static_cast<float>((id + t * e) % 13));
      }
    }
    ASSERT_TRUE((*run)->archive()->Put(std::move(b)).ok());
  }
  ASSERT_TRUE((*run)->archive()->Flush().ok());
  // Archive writes skip the WAL: what is on disk is the SST files flushed so far (one memtable).
  const uint64_t written = DirectoryBytes(dir.path());
  EXPECT_GT(written, uint64_t{12} << 20);
  ASSERT_TRUE((*run)->Close().ok());
  EXPECT_LT(DirectoryBytes(dir.path()), uint64_t{1} << 20) << "written: " << written;
  EXPECT_TRUE(Archived(dir.path()).empty());
}

TEST(RunArchiveTest, RunsGetDistinctDocumentIds) {
  EXPECT_NE(NewRunDocumentId(), NewRunDocumentId());
  EXPECT_EQ(NewRunDocumentId().rfind("run-", 0), 0u);
}

// A killed run leaves its archive behind; a later run collects it once it is older than the TTL
// and keeps it before (the TTL is what tells a killed run from a slow one).
TEST(RunArchiveTest, OpenCollectsStaleArchivesOnly) {
  cache::TempDir dir;
  {
    auto db = cache::CacheDb::Open(CacheDbPath(dir.path()));
    ASSERT_TRUE(db.ok()) << db.status();
    auto killed =
        cache::RocksDbBlockArchive::Open(db->get(), "killed-run", kLayers, kKvHeads, kHeadDim);
    ASSERT_TRUE(killed.ok()) << killed.status();
    PutSome(killed->get());
  }
  RunArchiveOptions options = Options(dir.path());
  {
    options.gc_ttl = absl::Hours(1);
    auto run = RunArchive::Open(options);
    ASSERT_TRUE(run.ok()) << run.status();
    EXPECT_EQ((*run)->collected(), 0);
    EXPECT_TRUE((*run)->gc_status().ok());
  }
  EXPECT_EQ(Archived(dir.path()), std::vector<std::string>{"killed-run"});
  {
    options.gc_ttl = absl::ZeroDuration();
    absl::SleepFor(absl::Milliseconds(2));
    auto run = RunArchive::Open(options);
    ASSERT_TRUE(run.ok()) << run.status();
    EXPECT_EQ((*run)->collected(), 1);
  }
  EXPECT_TRUE(Archived(dir.path()).empty());
}

// A run that was killed (its process gone, so the lock released) leaves an archive under a run
// id: the next run deletes it at once, whatever the TTL, and frees its disk space.
TEST(RunArchiveTest, OpenDeletesArchivesOfKilledRunsAtOnce) {
  cache::TempDir dir;
  const std::string orphan = NewRunDocumentId();
  {  // what a SIGKILLed run leaves: its records, flushed, and no Close
    auto db = cache::CacheDb::Open(CacheDbPath(dir.path()));
    ASSERT_TRUE(db.ok()) << db.status();
    auto killed = cache::RocksDbBlockArchive::Open(db->get(), orphan, kLayers, kKvHeads, kHeadDim);
    ASSERT_TRUE(killed.ok()) << killed.status();
    PutSome(killed->get());
  }
  EXPECT_EQ(Archived(dir.path()), std::vector<std::string>{orphan});
  auto next = RunArchive::Open(Options(dir.path()));  // default TTL: 24 h
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ((*next)->collected(), 1);
  EXPECT_TRUE((*next)->gc_status().ok()) << (*next)->gc_status();
  ASSERT_TRUE((*next)->Close().ok());
  EXPECT_TRUE(Archived(dir.path()).empty());
}

TEST(RunArchiveTest, UncreatableDirectoryIsAnError) {
  cache::TempDir dir;
  const std::string file = dir.path() + "/file";
  std::ofstream(file) << "x";
  auto run = RunArchive::Open(Options(file + "/cache"));
  ASSERT_FALSE(run.ok());
  EXPECT_NE(run.status().message().find(file), std::string::npos) << run.status();
}

TEST(RunArchiveTest, LockedDatabaseIsAnError) {
  cache::TempDir dir;
  std::filesystem::create_directories(dir.path());
  auto held = cache::CacheDb::Open(CacheDbPath(dir.path()));
  ASSERT_TRUE(held.ok()) << held.status();
  auto run = RunArchive::Open(Options(dir.path()));
  EXPECT_FALSE(run.ok());
}

TEST(RunArchiveTest, NoCacheDirIsAnError) {
  auto run = RunArchive::Open(Options(""));
  ASSERT_FALSE(run.ok());
  EXPECT_EQ(run.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(RunArchiveTest, DefaultCacheDirFollowsXdgThenHome) {
  const char* old_xdg = std::getenv("XDG_CACHE_HOME");
  const char* old_home = std::getenv("HOME");
  const std::string saved_xdg = old_xdg ? old_xdg : "", saved_home = old_home ? old_home : "";
  setenv("XDG_CACHE_HOME", "/x/cache", 1);
  setenv("HOME", "/home/u", 1);
  EXPECT_EQ(DefaultCacheDir(), "/x/cache/longread");
  setenv("XDG_CACHE_HOME", "relative", 1);  // invalid per the XDG spec: ignored
  EXPECT_EQ(DefaultCacheDir(), "/home/u/.cache/longread");
  unsetenv("XDG_CACHE_HOME");
  EXPECT_EQ(DefaultCacheDir(), "/home/u/.cache/longread");
  unsetenv("HOME");
  EXPECT_EQ(DefaultCacheDir(), "");
  if (old_xdg) setenv("XDG_CACHE_HOME", saved_xdg.c_str(), 1);
  if (old_home) setenv("HOME", saved_home.c_str(), 1);
}

}  // namespace
}  // namespace longread::services
