// `--device` of `longread run`, `longread generate` and `longread-worker`: an unknown device is a
// usage error (exit 2), and cuda where no GPU is visible (CI) is refused with exit 6 and a message
// saying why, before the document or the model is read. The cuda path itself runs on the device
// machine (label gpu: tests/engine/job/cuda_session_test.cc, bench/gpu/device_run.sh).
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "absl/strings/str_cat.h"
#include "engine/memory/open_backend.h"
#include "gtest/gtest.h"
#include "tests/services/cli_runner.h"

namespace longread::services {
namespace {

using testing::RunLongread;

class CliDeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("cli_device_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_;
};

// auto resolves to cuda exactly when this build has CUDA and a GPU is visible.
bool GpuVisible() { return engine::ResolveDevice("auto").value_or("cpu") == "cuda"; }

TEST_F(CliDeviceTest, UnknownDeviceIsAUsageError) {
  const testing::CliResult r = RunLongread(dir_.string(), "some text", {"--device", "tpu"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("--device must be cpu, cuda or auto, not 'tpu'"), std::string::npos)
      << r.err;
}

TEST_F(CliDeviceTest, RunOnCudaWithoutAGpuExitsSixBeforeReading) {
  if (GpuVisible()) GTEST_SKIP() << "a GPU is visible here";
  // A document that does not exist: the device is refused first (exit 6, not 3).
  const testing::CliResult r = testing::RunLongreadOn(
      dir_.string(), (dir_ / "no-such-file.txt").string(), {"--device", "cuda"});
  EXPECT_EQ(r.exit_code, 6) << r.err;
  EXPECT_NE(r.err.find("device_unavailable"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--device cuda"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("use --device cpu"), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
}

// The main job (scripts/summarize.sh) runs with --device auto: without a GPU it must read and
// answer on the CPU, not refuse.
TEST_F(CliDeviceTest, AutoWithoutAGpuReadsOnTheCpu) {
  if (GpuVisible()) GTEST_SKIP() << "a GPU is visible here";
  if (!testing::HaveModel()) GTEST_SKIP() << "default model missing: run scripts/setup.sh";
  const testing::CliResult r = RunLongread(
      dir_.string(), "The ferry leaves the north pier at seven. The fare is four coins.",
      {"--device", "auto", "--task", "question", "--question", "When does the ferry leave?",
       "--max-tokens", "8", "--json", "--quiet"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_GT(testing::JsonInt(r.out, "document_tokens"), 0) << r.out;
  EXPECT_GT(testing::JsonInt(r.out, "generated_tokens"), 0) << r.out;
}

// `longread generate` with `args`; stdout and stderr land in the test's directory.
testing::CliResult RunGenerate(const std::filesystem::path& dir, const std::string& args) {
  const std::string out = (dir / "stdout").string(), err = (dir / "stderr").string();
  const int status =
      std::system(absl::StrCat(LONGREAD_BINARY, " generate ", args, " >", out, " 2>", err).c_str());
  testing::CliResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = testing::ReadFile(out);
  r.err = testing::ReadFile(err);
  return r;
}

TEST_F(CliDeviceTest, GenerateRefusesAnUnknownDevice) {
  const testing::CliResult r = RunGenerate(dir_, "--prompt hello --device tpu");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("--device must be cpu, cuda or auto, not 'tpu'"), std::string::npos)
      << r.err;
}

TEST_F(CliDeviceTest, GenerateOnCudaWithoutAGpuExitsSixBeforeLoadingTheModel) {
  if (GpuVisible()) GTEST_SKIP() << "a GPU is visible here";
  // A model that does not exist: the device is refused first (exit 6, not the model's error).
  const testing::CliResult r = RunGenerate(
      dir_, absl::StrCat("--prompt hello --device cuda --model ", (dir_ / "none.gguf").string()));
  EXPECT_EQ(r.exit_code, 6) << r.err;
  EXPECT_NE(r.err.find("device_unavailable"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("use --device cpu"), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
}

TEST_F(CliDeviceTest, GenerateAutoWithoutAGpuAnswersOnTheCpu) {
  if (GpuVisible()) GTEST_SKIP() << "a GPU is visible here";
  if (!testing::HaveModel()) GTEST_SKIP() << "default model missing: run scripts/setup.sh";
  const testing::CliResult r =
      RunGenerate(dir_, absl::StrCat("--model ", testing::ModelPath(),
                                     " --threads 2 --device auto --max-tokens 6 --quiet",
                                     " --prompt 'Name a color.'"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(r.out.empty()) << r.err;
}

TEST_F(CliDeviceTest, WorkerOnCudaWithoutAGpuExitsSix) {
  if (GpuVisible()) GTEST_SKIP() << "a GPU is visible here";
  const std::string err = (dir_ / "stderr").string();
  const std::string command = absl::StrCat(
      LONGREAD_WORKER_BINARY, " --device cuda --listen 127.0.0.1:0 --metrics-listen ''",
      " --cache-dir ", dir_.string(), " 2>", err);
  const int status = std::system(command.c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 6);
  const std::string text = testing::ReadFile(err);
  EXPECT_NE(text.find("device_unavailable"), std::string::npos) << text;
  EXPECT_NE(text.find("--device cuda"), std::string::npos) << text;
}

}  // namespace
}  // namespace longread::services
