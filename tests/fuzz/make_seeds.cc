// Writes the fuzz seed corpora:
// make_fuzz_seeds DIR -> DIR/{gguf,safetensors,hf_json,streaming_encoder}/seed_N.
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "tests/fuzz/seeds.h"

namespace {

// StreamingEncoder inputs: tokenizer byte, cut count, cut offsets (u16 LE), text.
std::vector<std::string> StreamingEncoderSeeds() {
  auto seed = [](uint8_t tokenizer, std::vector<uint16_t> cuts, std::string text) {
    std::string s;
    s.push_back(static_cast<char>(tokenizer));
    s.push_back(static_cast<char>(cuts.size()));
    for (uint16_t c : cuts) {
      s.push_back(static_cast<char>(c & 0xff));
      s.push_back(static_cast<char>(c >> 8));
    }
    return s + text;
  };
  return {
      seed(0x80, {3, 5, 9}, "ab  a's 12 <x>y \xE2\x82 aa..\n\n b"),
      seed(0x81, {1, 2, 3, 4}, "1234  \t\n\n  x, y; <x <|c|> 's 'S"),
      seed(0x82, {6, 7}, "\xE4\xB8\xAD\xE6\x96\x87   \r\n\r\n  \xF0\x9F\x98\x80!!\n"),
      seed(0x03, {10, 20}, "The keeper's ledger: 1791, 40817 steps.\n\n    indented()"),
      seed(0x84, {2, 4, 8, 16}, "don't   won't\n\n\n\t\t 1.5e10 \xFF\xFE \xC3\x28 end"),
  };
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
    return 2;
  }
  namespace fs = std::filesystem;
  const std::pair<const char*, std::vector<std::string>> sets[] = {
      {"gguf", longread::fuzz::GgufSeeds()},
      {"safetensors", longread::fuzz::SafetensorsSeeds()},
      {"hf_json", longread::fuzz::HfJsonSeeds()},
      {"streaming_encoder", StreamingEncoderSeeds()}};
  for (const auto& [name, seeds] : sets) {
    fs::path dir = fs::path(argv[1]) / name;
    fs::create_directories(dir);
    for (size_t i = 0; i < seeds.size(); ++i) {
      std::ofstream(dir / ("seed_" + std::to_string(i)), std::ios::binary) << seeds[i];
    }
  }
  return 0;
}
