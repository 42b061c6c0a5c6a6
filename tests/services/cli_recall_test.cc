// `longread run --recall-blocks` end to end with the default model: evicted blocks go to the
// RocksDB archive in --cache-dir, come back before the answer, and the run's archive is gone when
// the process has exited.
#include <filesystem>
#include <string>
#include <vector>

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
  EXPECT_NE(run.out.find("\"recall_seconds\":"), std::string::npos) << run.out;

  // The process has exited: nothing of its archive is left in the database.
  auto db = cache::CacheDb::Open(CacheDbPath(cache_dir));
  ASSERT_TRUE(db.ok()) << db.status();
  auto docs = cache::ListArchivedDocuments(db->get());
  ASSERT_TRUE(docs.ok()) << docs.status();
  EXPECT_TRUE(docs->empty()) << docs->size() << " archives left, first: " << docs->front().first;
}

TEST(CliRecallTest, RecallOffLeavesTheCacheUntouched) {
  if (!testing::HaveModel()) GTEST_SKIP() << "default model missing: run scripts/setup.sh";
  cache::TempDir work;
  const std::string cache_dir = work.path() + "/cache";
  const testing::CliResult run =
      RunLongread(work.path(), SmallDocument().substr(0, 400),
                  {"--task", "question", "--question", "What is the code?", "--max-tokens", "4",
                   "--recall-blocks", "0", "--json", "--quiet", "--cache-dir", cache_dir});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(JsonInt(run.out, "recalled_slots"), 0) << run.out;
  EXPECT_EQ(JsonInt(run.out, "archive_bytes"), 0) << run.out;
  EXPECT_FALSE(std::filesystem::exists(cache_dir));
}

// The defaults are the quality bench's best configuration: recall on (into the user's cache,
// here XDG_CACHE_HOME under the test's directory), no scorer; --scorer auto loads the calibrated
// scorer that setup.sh installs beside the model.
TEST(CliRecallTest, DefaultsRecallWithoutAScorerAndAutoFindsTheInstalledOne) {
  if (!testing::HaveModel()) GTEST_SKIP() << "default model missing: run scripts/setup.sh";
  cache::TempDir work;
  const std::vector<std::string> small = {"--task",
                                          "question",
                                          "--question",
                                          "What is the code of the east storeroom?",
                                          "--memory-k",
                                          "64",
                                          "--window",
                                          "64",
                                          "--segment-tokens",
                                          "128",
                                          "--max-tokens",
                                          "8",
                                          "--json"};
  const testing::CliResult run = RunLongread(work.path(), SmallDocument(), small);
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_GT(JsonInt(run.out, "recalled_slots"), 0) << run.out;
  EXPECT_EQ(run.err.find("scorer_loaded"), std::string::npos) << run.err;
  EXPECT_TRUE(std::filesystem::exists(work.path() + "/xdg-cache/longread/db")) << run.err;

  std::vector<std::string> with_scorer = small;
  with_scorer.insert(with_scorer.end(), {"--scorer", "auto"});
  const testing::CliResult scored = RunLongread(work.path(), SmallDocument(), with_scorer);
  ASSERT_EQ(scored.exit_code, 0) << scored.err;
  EXPECT_NE(scored.err.find("scorer_loaded"), std::string::npos) << scored.err;
  EXPECT_GT(JsonInt(scored.out, "recalled_slots"), 0) << scored.out;
}

}  // namespace
}  // namespace longread::services
