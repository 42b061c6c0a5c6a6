// Shared by engine tests that need the real default model (installed by scripts/setup.sh).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "engine/model/llama_model.h"
#include "engine/model_files/model_file.h"
#include "gtest/gtest.h"

namespace longread::engine::testing {

inline std::string SourceDir() {
  const char* dir = std::getenv("LONGREAD_SOURCE_DIR");
  return dir != nullptr ? dir : ".";
}

inline std::string DefaultModelPath() {
  return SourceDir() + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

// Real prose for reading tests: the repository's own documentation (some 40 kB).
inline std::string DocumentationText() {
  std::string text;
  for (const char* path : {"/docs/ARCHITECTURE.md", "/README.md", "/docs/SERVICE.md"}) {
    std::ifstream in(SourceDir() + path);
    std::stringstream ss;
    ss << in.rdbuf();
    text += ss.str();
  }
  return text;
}

// n token ids drawn from `seed`, in the ordinary vocabulary (no special tokens).
inline std::vector<int32_t> RandomTokens(int n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> dist(100, 20000);
  std::vector<int32_t> tokens(n);
  for (auto& t : tokens) t = dist(rng);
  return tokens;
}

// The model is loaded once per test binary: it is read-only after loading.
inline LlamaModel* SharedModel() {
  static LlamaModel* model = [] {
    auto file = ModelFile::Open(DefaultModelPath());
    if (!file.ok()) return static_cast<LlamaModel*>(nullptr);
    auto loaded = LlamaModel::Load(std::move(*file));
    return loaded.ok() ? loaded->release() : nullptr;
  }();
  return model;
}

}  // namespace longread::engine::testing

// CI installs the model (scripts/setup.sh); a developer without it gets a clear skip.
#define REQUIRE_DEFAULT_MODEL(model)                                                  \
  ::longread::engine::LlamaModel* model = ::longread::engine::testing::SharedModel(); \
  if (model == nullptr) GTEST_SKIP() << "default model missing: run scripts/setup.sh"
