// `longread run` options: a misspelt or invalid option is a usage error (exit 2) before anything
// is loaded, and the memory modes that the options name run end to end with the real model.
#include <filesystem>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/services/cli_runner.h"

namespace longread::services {
namespace {

using testing::RunLongread;

class CliOptionsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("cli_options_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_;
};

TEST_F(CliOptionsTest, UnknownAndInvalidOptionsAreUsageErrors) {
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{"--memroy-k", "64"}, "unknown option --memroy-k"},
      {{"--mask", "fuzzy"}, "--mask must be hard or soft"},
      {{"--task-score", "psychic"}, "--task-score must be segment-mass or max-dot"},
      {{"--positions", "random"}, "--positions must be slot or original"},
      {{"--block-score", "median"}, "--block-score must be max or mean"},
      {{"--recall-scope", "global"}, "--recall-scope must be shared or head"},
      {{"--block-tokens", "0"}, "block-tokens"},
  };
  for (const Case& c : cases) {
    const testing::CliResult r = RunLongread(dir_.string(), "some text", c.args);
    EXPECT_EQ(r.exit_code, 2) << c.args[0] << ": " << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << c.args[0] << ": " << r.err;
    EXPECT_TRUE(r.out.empty()) << r.out;
  }
}

TEST_F(CliOptionsTest, NonDefaultMemoryOptionsAnswer) {
  if (!testing::HaveModel()) GTEST_SKIP() << "default model missing: run scripts/setup.sh";
  const testing::CliResult r = RunLongread(
      dir_.string(), testing::SmallDocument(),
      {"--task",         "question", "--question",       "What is the code of the east storeroom?",
       "--mask",         "soft",     "--task-score",     "max-dot",
       "--block-score",  "mean",     "--recall-scope",   "head",
       "--block-tokens", "16",       "--memory-k",       "64",
       "--window",       "64",       "--segment-tokens", "128",
       "--max-tokens",   "12",       "--json",           "--quiet"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("\"answer\":"), std::string::npos) << r.out;
  EXPECT_GT(testing::JsonInt(r.out, "document_tokens"), 300) << r.out;
}

TEST_F(CliOptionsTest, ScorerAutoThatFindsNoneSaysSo) {
  if (!testing::HaveModel()) GTEST_SKIP() << "default model missing: run scripts/setup.sh";
  // The default model under another name: no .lrscorer beside it.
  const std::string renamed = (dir_ / "renamed-model.gguf").string();
  std::filesystem::create_symlink(std::filesystem::absolute(testing::ModelPath()), renamed);
  const std::vector<std::string> small = {
      "--recall-blocks", "0", "--memory-k", "64",       "--window", "64", "--segment-tokens", "128",
      "--max-tokens",    "2", "--json",     "--scorer", "auto"};
  std::vector<std::string> args = small;
  args.insert(args.end(), {"--model", renamed});
  const testing::CliResult missing = RunLongread(dir_.string(), testing::SmallDocument(), args);
  EXPECT_EQ(missing.exit_code, 0) << missing.err;
  EXPECT_NE(missing.err.find("scorer_not_found"), std::string::npos) << missing.err;
  EXPECT_NE(missing.err.find("renamed-model.lrscorer"), std::string::npos) << missing.err;
  EXPECT_NE(missing.out.find("\"scorer\":null"), std::string::npos) << missing.out;
  EXPECT_NE(missing.out.find("\"scorer_warning\":\"no scorer file for this model"),
            std::string::npos)
      << missing.out;

  // The default model's own scorer, installed beside it: used, and no warning.
  const testing::CliResult found = RunLongread(dir_.string(), testing::SmallDocument(), small);
  EXPECT_EQ(found.exit_code, 0) << found.err;
  EXPECT_EQ(found.err.find("scorer_not_found"), std::string::npos) << found.err;
  EXPECT_NE(found.out.find(".lrscorer\",\"scorer_warning\":null"), std::string::npos) << found.out;
}

}  // namespace
}  // namespace longread::services
