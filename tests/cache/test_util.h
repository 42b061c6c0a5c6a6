// Shared helpers for the cache tests: a fresh database directory per test.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>

#include "gtest/gtest.h"

namespace longread::cache {

// A unique empty directory under the test temp dir, removed at destruction.
class TempDir {
 public:
  // `base` "" means the test temp dir.
  explicit TempDir(const std::string& base = "") {
    std::string tmpl =
        (std::filesystem::path(base.empty() ? ::testing::TempDir() : base) / "lrcacheXXXXXX")
            .string();
    path_ = mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string path() const { return path_; }
  std::string db() const { return path_ + "/db"; }

 private:
  std::string path_;
};

}  // namespace longread::cache
