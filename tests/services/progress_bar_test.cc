// The progress bar's rate: a one-segment document has a single update, at its end, and must still
// show how fast it was read (it showed 0 tok/s).
#include "services/cli/progress_bar.h"

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "gtest/gtest.h"

namespace longread::services {
namespace {

// What the bar wrote to a file (not a terminal: one line per tenth).
class BarOutput {
 public:
  BarOutput() : file_(std::tmpfile()) {}
  ~BarOutput() { std::fclose(file_); }
  std::FILE* file() { return file_; }
  std::string Text() {
    std::fflush(file_);
    std::rewind(file_);
    std::string text;
    char buf[512];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof(buf), file_)) > 0) text.append(buf, n);
    return text;
  }

 private:
  std::FILE* file_;
};

TEST(ProgressBarTest, AOneSegmentDocumentShowsTheRateItWasReadAt) {
  BarOutput out;
  ProgressBar bar("doc", "tok", true, out.file());
  bar.Update(128, 128, 412.0);  // the worker's measured rate, sent with its only progress event
  bar.Finish();
  const std::string text = out.Text();
  EXPECT_NE(text.find("100% 128/128 tok  412 tok/s"), std::string::npos) << text;
}

TEST(ProgressBarTest, WithoutAMeasuredRateTheBarTimesTheWorkFromItsStart) {
  BarOutput out;
  ProgressBar bar("reading", "tok", true, out.file());
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // a short one-segment read
  bar.Update(64, 64);
  bar.Finish();
  const std::string text = out.Text();
  ASSERT_NE(text.find("100% 64/64 tok"), std::string::npos) << text;
  EXPECT_EQ(text.find(" 0 tok/s"), std::string::npos) << text;
}

TEST(ProgressBarTest, ADisabledBarWritesNothing) {
  BarOutput out;
  ProgressBar bar("doc", "tok", false, out.file());
  bar.Update(1, 2, 10.0);
  bar.Finish();
  EXPECT_EQ(out.Text(), "");
}

}  // namespace
}  // namespace longread::services
