// `longread run --recall-blocks` end to end with the default model: evicted blocks go to the
// RocksDB archive in --cache-dir, come back before the answer, and the run's archive is gone when
// the process has exited.
#include <filesystem>
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

TEST(CliRecallTest, RecallsFromTheRocksDbArchiveAndDeletesItAtTheEnd) {
  if (!testing::HaveModel()) GTEST_SKIP() << "default model missing: run scripts/setup.sh";
  cache::TempDir work;
  const std::string cache_dir = work.path() + "/cache";
  const testing::CliResult run = RunLongread(work.path(), SmallDocument(), RecallArgs(cache_dir));
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.err.find("warning"), std::string::npos) << run.err;
  EXPECT_NE(run.out.find("\"answer\":\""), std::string::npos) << run.out;
  EXPECT_GT(JsonInt(run.out, "document_tokens"), 256) << run.out;
  EXPECT_GT(JsonInt(run.out, "archive_bytes"), 0) << run.out;  // blocks were evicted and archived
  EXPECT_GT(JsonInt(run.out, "recalled_slots"), 0) << run.out;
  EXPECT_NE(run.out.find("\"recall_error\":null"), std::string::npos) << run.out;

  // The process has exited: nothing of its archive is left in the database.
  auto db = cache::CacheDb::Open(CacheDbPath(cache_dir));
  ASSERT_TRUE(db.ok()) << db.status();
  auto docs = cache::ListArchivedDocuments(db->get());
  ASSERT_TRUE(docs.ok()) << docs.status();
  EXPECT_TRUE(docs->empty()) << docs->size() << " archives left, first: " << docs->front().first;
}

TEST(CliRecallTest, WithoutRecallTheCacheIsNotTouched) {
  if (!testing::HaveModel()) GTEST_SKIP() << "default model missing: run scripts/setup.sh";
  cache::TempDir work;
  const std::string cache_dir = work.path() + "/cache";
  const testing::CliResult run =
      RunLongread(work.path(), SmallDocument().substr(0, 400),
                  {"--task", "question", "--question", "What is the code?", "--max-tokens", "4",
                   "--json", "--quiet", "--cache-dir", cache_dir});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(JsonInt(run.out, "recalled_slots"), 0) << run.out;
  EXPECT_EQ(JsonInt(run.out, "archive_bytes"), 0) << run.out;
  EXPECT_FALSE(std::filesystem::exists(cache_dir));
}

}  // namespace
}  // namespace longread::services
