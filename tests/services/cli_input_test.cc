// What `longread run` does with inputs a user may hand it that are not a plain small file: a
// directory, a character device with no end, a FIFO, stdin over the byte limit. Each is refused
// with the reason that applies, or read as a stream, before the model is loaded.
#include <sys/stat.h>

#include <filesystem>
#include <regex>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/services/cli_runner.h"

namespace longread::services {
namespace {

using testing::CliResult;
using testing::RunLongreadOn;

class CliInputTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("cli_input_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_;
};

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST_F(CliInputTest, DirectoryIsRefusedAsADirectory) {
  const std::string directory = (dir_ / "a_directory").string();
  std::filesystem::create_directories(directory);
  const CliResult r = RunLongreadOn(dir_.string(), directory, {"--quiet"});
  EXPECT_EQ(r.exit_code, 3) << r.err;
  EXPECT_TRUE(Contains(r.err, "is a directory")) << r.err;
  EXPECT_FALSE(Contains(r.err, "document_too_large")) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
}

TEST_F(CliInputTest, EndlessCharacterDeviceIsReadOnlyUpToTheLimit) {
  // /dev/zero has no size and no end: read as a stream, it is refused at the limit (a read with
  // no bound would never return).
  const CliResult r = RunLongreadOn(dir_.string(), "/dev/zero", {"--quiet", "--max-bytes", "1000"});
  EXPECT_EQ(r.exit_code, 3) << r.err;
  EXPECT_TRUE(Contains(r.err, "document_too_large")) << r.err;
  EXPECT_TRUE(Contains(r.err, "limit of 1000")) << r.err;
  EXPECT_FALSE(Contains(r.err, "document_empty")) << r.err;
}

TEST_F(CliInputTest, StdinOverTheLimitIsRefusedAsTooLarge) {
  // The same refusal as a file over the limit (exit 3), not after tokenizing it.
  const CliResult r = RunLongreadOn(dir_.string(), "-", {"--quiet", "--max-bytes", "1000"},
                                    "head -c 5000 /dev/zero | tr '\\0' a | ");
  EXPECT_EQ(r.exit_code, 3) << r.err;
  EXPECT_TRUE(Contains(r.err, "document_too_large")) << r.err;
  EXPECT_TRUE(Contains(r.err, "limit of 1000")) << r.err;
}

TEST_F(CliInputTest, FifoIsReadAsAStreamAndAnswered) {
  if (!testing::HaveModel()) GTEST_SKIP() << "default model missing: run scripts/setup.sh";
  const std::string fifo = (dir_ / "fifo").string();
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const std::string source = (dir_ / "source.txt").string();
  std::ofstream(source) << testing::SmallDocument();
  const CliResult r =
      RunLongreadOn(dir_.string(), fifo,
                    {"--recall-blocks", "0", "--memory-k", "64", "--window", "64",
                     "--segment-tokens", "128", "--max-tokens", "4", "--json", "--quiet"},
                    "cat '" + source + "' > '" + fifo + "' & ");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_GT(testing::JsonInt(r.out, "document_tokens"), 300) << r.out;
}

TEST_F(CliInputTest, DenseRefusesADocumentBeyondTheContextBeforeReading) {
  if (!testing::HaveModel()) GTEST_SKIP() << "default model missing: run scripts/setup.sh";
  // ~10,000 tokens: more than the default model's trained context of 8192.
  std::string document;
  for (int i = 0; i < 22; ++i) document += testing::SmallDocument();
  const CliResult r =
      testing::RunLongread(dir_.string(), document, {"--dense", "--max-tokens", "8"});
  EXPECT_EQ(r.exit_code, 5) << r.err;
  EXPECT_TRUE(Contains(r.err, "beyond the model's trained context of 8192 tokens")) << r.err;
  EXPECT_TRUE(std::regex_search(r.err, std::regex("the document has [0-9]{5} tokens"))) << r.err;
  // Refused up front: no segment was read (the progress bar reports each one in tok/s).
  EXPECT_FALSE(Contains(r.err, "tok/s")) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
}

}  // namespace
}  // namespace longread::services
