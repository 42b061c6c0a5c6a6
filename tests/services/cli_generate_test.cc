// `longread generate` with the real model: greedy decoding of a small model falls into loops, and
// the default no-repeat n-gram guard keeps the answer from repeating a sentence verbatim.
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/services/cli_runner.h"

namespace longread::services {
namespace {

class CliGenerateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!testing::HaveModel()) GTEST_SKIP() << "default model missing: run scripts/setup.sh";
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("cli_generate_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  // The continuation of `prompt` (raw text, no chat template), greedy, 40 tokens.
  std::string Continue(const std::string& prompt, const std::vector<std::string>& args) {
    std::string command = absl::StrCat(LONGREAD_BINARY, " generate --quiet --raw --threads 2 ",
                                       "--max-tokens 40 --model '", testing::ModelPath(), "'");
    for (const std::string& a : args) absl::StrAppend(&command, " ", a);
    const std::string prompt_file = (dir_ / "prompt").string(), out = (dir_ / "out").string();
    std::ofstream(prompt_file) << prompt;
    absl::StrAppend(&command, " --prompt \"$(cat '", prompt_file, "')\" >'", out, "'");
    const int status = std::system(command.c_str());
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << command;
    return testing::ReadFile(out);
  }
  std::filesystem::path dir_;
};

int Count(const std::string& text, const std::string& part) {
  int n = 0;
  for (size_t at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++n;
  return n;
}

TEST_F(CliGenerateTest, DefaultGuardKeepsALoopingContinuationFromRepeatingItself) {
  // A sentence the model looped on when analyzing Python's json/decoder.py, three times: greedy
  // decoding continues the loop.
  const std::string sentence =
      "The class is designed to be easy to use and to handle any possible errors.";
  const std::string prompt = absl::StrCat(sentence, " ", sentence, " ", sentence);
  const std::string unguarded = Continue(prompt, {"--no-repeat-ngram", "0"});
  EXPECT_GE(Count(unguarded, sentence), 2) << unguarded;
  const std::string guarded = Continue(prompt, {});
  EXPECT_LE(Count(guarded, sentence), 1) << guarded;
  EXPECT_FALSE(guarded.empty());
}

}  // namespace
}  // namespace longread::services
