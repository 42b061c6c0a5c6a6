#include "bench/engine/system_info.h"

#include <unistd.h>

#include <cstdio>
#include <ctime>
#include <fstream>

namespace longread::bench {
namespace {

int64_t StatusFieldKb(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::string prefix = std::string(field) + ":";
  while (std::getline(in, line)) {
    if (line.rfind(prefix, 0) == 0) return std::stoll(line.substr(prefix.size()));
  }
  return -1;
}

std::string Strftime(const char* format) {
  const std::time_t now = std::time(nullptr);
  std::tm utc;
  gmtime_r(&now, &utc);
  char buf[64];
  std::strftime(buf, sizeof buf, format, &utc);
  return buf;
}

std::string CommandOutput(const std::string& command) {
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return "";
  std::string out;
  char buf[256];
  while (std::fgets(buf, sizeof buf, pipe) != nullptr) out += buf;
  pclose(pipe);
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

}  // namespace

std::string CpuModel() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

int OnlineCores() { return static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN)); }

std::string LoadAverage() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return a + " " + b + " " + c;
}

std::string UtcTimestamp() { return Strftime("%Y-%m-%dT%H:%M:%SZ"); }
std::string UtcDate() { return Strftime("%Y-%m-%d"); }

std::string GitCommit(const std::string& source_dir) {
  const std::string git = "git -C '" + source_dir + "' ";
  std::string head = CommandOutput(git + "rev-parse HEAD 2>/dev/null");
  if (head.empty()) return "unknown";
  if (!CommandOutput(git + "status --porcelain --untracked-files=no 2>/dev/null").empty()) {
    head += "-dirty";
  }
  return head;
}

int64_t ResidentKb() { return StatusFieldKb("VmRSS"); }
int64_t PeakResidentKb() { return StatusFieldKb("VmHWM"); }

void ResetPeakResident() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

}  // namespace longread::bench
