// The quality bench's --scorer: `auto` that finds no weights for the model is refused (a run that
// silently measured without a scorer once passed for a run with one), and the JSON records the
// scorer file each method used.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "gtest/gtest.h"

namespace longread::bench {
namespace {

std::string SourceDir() {
  const char* dir = std::getenv("LONGREAD_SOURCE_DIR");
  return dir != nullptr ? dir : ".";
}

std::string ModelPath() { return SourceDir() + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"; }

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

class QualityBenchScorerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(ModelPath())) {
      GTEST_SKIP() << "default model missing: run scripts/setup.sh";
    }
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("quality_bench_scorer_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  // Runs the bench with `args`; returns its exit code, stderr in *err.
  int RunBench(const std::string& args, std::string* err) {
    const std::string err_path = (dir_ / "stderr").string();
    const std::string command = std::string(LONGREAD_QUALITY_BENCH) + " --threads 2 " + args +
                                " >/dev/null 2>'" + err_path + "'";
    const int status = std::system(command.c_str());
    *err = ReadFile(err_path);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  std::filesystem::path dir_;
};

TEST_F(QualityBenchScorerTest, AutoWithNoWeightsForTheModelIsRefused) {
  const std::string renamed = (dir_ / "renamed-model.gguf").string();
  std::filesystem::create_symlink(std::filesystem::absolute(ModelPath()), renamed);
  std::string err;
  const int rc = RunBench("--model '" + renamed + "' --scorer auto --methods sparsek", &err);
  EXPECT_NE(rc, 0) << err;
  EXPECT_NE(err.find("--scorer auto: no scorer file for this model"), std::string::npos) << err;
  EXPECT_NE(err.find("renamed-model.lrscorer"), std::string::npos) << err;
}

TEST_F(QualityBenchScorerTest, RecordsTheScorerEachMethodUsed) {
  const std::string json = (dir_ / "out.json").string();
  std::string err;
  const int rc = RunBench(
      "--model '" + ModelPath() +
          "' --scorer auto --methods dense,sparsek,sparsek-noscorer --lengths 384 --depths 0.5 "
          "--trials 1 --haystack filler --answer-tokens 4 --budget 256 --sparsek-window 64 "
          "--segment-tokens 128 --json '" +
          json + "'",
      &err);
  ASSERT_EQ(rc, 0) << err;
  const std::string report = ReadFile(json);
  const std::string weights = "/engine/scorer/weights/SmolLM2-135M-Instruct.Q4_1.lrscorer\"";
  const size_t at = report.find("\"method_scorers\": {\"dense\": \"none\", \"sparsek\": \"");
  ASSERT_NE(at, std::string::npos) << report;
  const size_t end = report.find('}', at);
  const std::string scorers = report.substr(at, end - at);
  EXPECT_NE(scorers.find(weights + ", \"sparsek-noscorer\": \"none\""), std::string::npos)
      << scorers;
}

}  // namespace
}  // namespace longread::bench
