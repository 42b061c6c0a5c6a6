// What a benchmark result needs to say about where and when it was measured: CPU model, cores,
// load, resident memory, UTC time, git commit. Linux /proc only; unknown values read "unknown".
#pragma once

#include <cstdint>
#include <string>

namespace longread::bench {

std::string CpuModel();
int OnlineCores();
std::string LoadAverage();
std::string UtcTimestamp();  // 2026-11-25T13:04:05Z
std::string UtcDate();       // 2026-11-25
// HEAD of the repository at `source_dir`, with "-dirty" when tracked files are modified.
std::string GitCommit(const std::string& source_dir);

// Kilobytes from /proc/self/status: the resident set now (VmRSS) and its peak (VmHWM).
int64_t ResidentKb();
int64_t PeakResidentKb();
// Restarts VmHWM from the current resident set (Linux >= 4.0), so a peak belongs to one run.
void ResetPeakResident();

// A JSON string literal with quotes, backslashes and control characters escaped.
std::string JsonString(const std::string& s);

}  // namespace longread::bench
