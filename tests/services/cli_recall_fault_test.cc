// `longread run --recall-blocks` when the cache cannot serve: the answer still comes, exit code 0,
// and stderr (and --json) says why recall was lost. Never a crash.
#include <filesystem>
#include <fstream>
#include <string>

#include "cache/block_archive_store.h"
#include "cache/cache_db.h"
#include "gtest/gtest.h"
#include "services/cli/run_archive.h"
#include "tests/cache/test_util.h"
#include "tests/services/cli_runner.h"

namespace longread::services {
namespace {

using testing::JsonInt;
using testing::RecallArgs;
using testing::RunLongread;
using testing::SmallDocument;

void ExpectAnswered(const testing::CliResult& run) {
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_NE(run.out.find("\"answer\":\""), std::string::npos) << run.out;
  EXPECT_EQ(run.out.find("\"answer\":\"\""), std::string::npos) << "empty answer: " << run.out;
  EXPECT_NE(run.err.find("warning"), std::string::npos) << run.err;
}

// Garbage over every file of the database (CURRENT, MANIFEST, WAL, OPTIONS): the database is moved
// aside, a fresh one serves this run, and the warning names where the damaged one went.
TEST(CliRecallFaultTest, CorruptedCacheIsMovedAsideAndTheRunAnswers) {
  if (!testing::HaveModel()) GTEST_SKIP() << "default model missing: run scripts/setup.sh";
  cache::TempDir work;
  const std::string cache_dir = work.path() + "/cache";
  std::filesystem::create_directories(cache_dir);
  {
    auto db = cache::CacheDb::Open(CacheDbPath(cache_dir));
    ASSERT_TRUE(db.ok()) << db.status();
  }
  int damaged = 0;
  for (const auto& entry : std::filesystem::directory_iterator(CacheDbPath(cache_dir))) {
    if (!entry.is_regular_file() || entry.path().filename() == "LOCK") continue;
    std::ofstream(entry.path(), std::ios::binary | std::ios::trunc) << "not a rocksdb file\n";
    ++damaged;
  }
  ASSERT_GT(damaged, 0);

  const testing::CliResult run = RunLongread(work.path(), SmallDocument(), RecallArgs(cache_dir));
  ExpectAnswered(run);
  EXPECT_NE(run.err.find("cache_damaged"), std::string::npos) << run.err;
  EXPECT_GT(JsonInt(run.out, "recalled_slots"), 0) << run.out;  // the fresh database served
  bool moved_aside = false;
  for (const auto& entry : std::filesystem::directory_iterator(cache_dir)) {
    moved_aside |= entry.path().filename().string().rfind("db.corrupt-", 0) == 0;
  }
  EXPECT_TRUE(moved_aside);
}

// A cache directory that cannot be created (its parent is a regular file; root cannot override
// that, unlike permissions): no recall, a warning, the answer.
TEST(CliRecallFaultTest, UnusableCacheDirAnswersWithoutRecall) {
  if (!testing::HaveModel()) GTEST_SKIP() << "default model missing: run scripts/setup.sh";
  cache::TempDir work;
  const std::string file = work.path() + "/a-file";
  std::ofstream(file) << "x";
  const testing::CliResult run =
      RunLongread(work.path(), SmallDocument(), RecallArgs(file + "/cache"));
  ExpectAnswered(run);
  EXPECT_NE(run.err.find("recall_disabled"), std::string::npos) << run.err;
  EXPECT_EQ(JsonInt(run.out, "recalled_slots"), 0) << run.out;
  EXPECT_NE(run.out.find("\"recall_error\":\"cache unusable"), std::string::npos) << run.out;
}

// A second run while another holds the database (RocksDB's lock): no recall, a warning, the
// answer; the holder's records are untouched.
TEST(CliRecallFaultTest, LockedCacheAnswersWithoutRecall) {
  if (!testing::HaveModel()) GTEST_SKIP() << "default model missing: run scripts/setup.sh";
  cache::TempDir work;
  const std::string cache_dir = work.path() + "/cache";
  std::filesystem::create_directories(cache_dir);
  auto held = cache::CacheDb::Open(CacheDbPath(cache_dir));
  ASSERT_TRUE(held.ok()) << held.status();
  const testing::CliResult run = RunLongread(work.path(), SmallDocument(), RecallArgs(cache_dir));
  ExpectAnswered(run);
  EXPECT_NE(run.err.find("recall_disabled"), std::string::npos) << run.err;
  EXPECT_EQ(JsonInt(run.out, "recalled_slots"), 0) << run.out;
}

// The disk refuses the archive's writes in the middle of reading (a file-size limit, as a full
// disk or a quota would; SIGXFSZ ignored so that the write fails instead of killing the process):
// the memory stops archiving, reading goes on, recall is skipped with the reason in --json and on
// stderr, and the answer comes.
TEST(CliRecallFaultTest, ArchiveWriteFailureMidJobAnswersWithRecallError) {
  if (!testing::HaveModel()) GTEST_SKIP() << "default model missing: run scripts/setup.sh";
  cache::TempDir work;
  const std::string cache_dir = work.path() + "/cache";
  const testing::CliResult run = RunLongread(work.path(), SmallDocument(), RecallArgs(cache_dir),
                                             "trap '' XFSZ; ulimit -f 1024; ");
  ExpectAnswered(run);
  EXPECT_NE(run.err.find("recall_skipped"), std::string::npos) << run.err;
  EXPECT_EQ(JsonInt(run.out, "recalled_slots"), 0) << run.out;
  EXPECT_NE(run.out.find("\"recall_error\":\"writing the archive"), std::string::npos) << run.out;
}

}  // namespace
}  // namespace longread::services
