// Writes the fuzz seed corpora: make_fuzz_seeds DIR -> DIR/{gguf,safetensors,hf_json}/seed_N.
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "tests/fuzz/seeds.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
    return 2;
  }
  namespace fs = std::filesystem;
  const std::pair<const char*, std::vector<std::string>> sets[] = {
      {"gguf", longread::fuzz::GgufSeeds()},
      {"safetensors", longread::fuzz::SafetensorsSeeds()},
      {"hf_json", longread::fuzz::HfJsonSeeds()}};
  for (const auto& [name, seeds] : sets) {
    fs::path dir = fs::path(argv[1]) / name;
    fs::create_directories(dir);
    for (size_t i = 0; i < seeds.size(); ++i) {
      std::ofstream(dir / ("seed_" + std::to_string(i)), std::ios::binary) << seeds[i];
    }
  }
  return 0;
}
