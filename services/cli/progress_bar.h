// A progress bar for long work on stderr: redrawn in place on a terminal, a line every 10%
// otherwise (so CI logs and pipes stay readable).
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace longread::services {

class ProgressBar {
 public:
  ProgressBar(std::string label, std::string unit, bool enabled, std::FILE* out = stderr);
  // `rate`: units per second as measured where the work runs (a worker's SegmentProgress); when
  // negative, done / the time since the bar was created (a bar that saw the work start).
  void Update(int64_t done, int64_t total, double rate = -1);
  void Finish();

 private:
  std::string label_, unit_;
  bool enabled_;
  std::FILE* out_;
  bool tty_;
  bool finished_ = false;
  int last_decile_ = -1;
  int64_t done_ = 0, total_ = 0;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

}  // namespace longread::services
