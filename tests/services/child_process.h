// The service binaries as the tests run them: a child process started from argv that writes the
// port it listens on into a port file, its stdout and stderr kept in its directory, killed
// (SIGKILL) at the end if it still runs. Shared by the worker and coordinator tests.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/services/cli_runner.h"

namespace longread::services::testing {

class ChildProcess {
 public:
  // Starts argv and waits until `port_file` names a port (or the child dies). A restart in the
  // same `dir` appends to the logs: a test may read what the first run wrote.
  ChildProcess(const std::string& dir, std::vector<std::string> argv, const std::string& port_file)
      : dir_(dir) {
    std::filesystem::create_directories(dir);
    std::filesystem::remove(port_file);  // a restart must not read its predecessor's port
    pid_ = fork();
    if (pid_ == 0) {
      if (std::freopen((dir + "/stderr").c_str(), "a", stderr) == nullptr ||
          std::freopen((dir + "/stdout").c_str(), "a", stdout) == nullptr) {
        _exit(126);
      }
      std::vector<char*> args;
      for (std::string& a : argv) args.push_back(a.data());
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
    // A service loads the model before it listens: seconds idle, a minute on a loaded machine.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(2);
    while (port_ == 0 && std::chrono::steady_clock::now() < deadline) {
      if (std::filesystem::exists(port_file)) port_ = std::atoi(ReadFile(port_file).c_str());
      if (port_ != 0) break;
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        exit_status_ = status;
        pid_ = -1;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ~ChildProcess() { Kill(); }

  void Kill() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
  }
  void Signal(int signal) const { kill(pid_, signal); }
  // The exit code, or -1 if it did not exit normally.
  int WaitExit() {
    int status = 0;
    if (pid_ > 0) {
      waitpid(pid_, &status, 0);
      pid_ = -1;
      exit_status_ = status;
    }
    return WIFEXITED(exit_status_) ? WEXITSTATUS(exit_status_) : -1;
  }
  bool serving() const { return port_ > 0 && pid_ > 0; }
  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  std::string target() const { return absl::StrCat("127.0.0.1:", port_); }
  std::string log() const { return ReadFile(dir_ + "/stderr"); }

 private:
  std::string dir_;
  pid_t pid_ = -1;
  int port_ = 0;
  int exit_status_ = 0;
};

// GET http://127.0.0.1:port/metrics, the whole response ("" on failure).
inline std::string ScrapeMetrics(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string out;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string request =
        "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if (write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
      char buf[65536];
      for (ssize_t n; (n = read(fd, buf, sizeof(buf))) > 0;) {
        out.append(buf, static_cast<size_t>(n));
      }
    }
  }
  close(fd);
  return out;
}

}  // namespace longread::services::testing
