// Replays the fuzz seeds, their one-byte mutations and any committed regression inputs through
// the fuzz target bodies, so gcc builds exercise what the fuzzers do.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/model_files/gguf.h"
#include "engine/model_files/hf_json.h"
#include "engine/model_files/model_file.h"
#include "engine/model_files/safetensors.h"
#include "tests/fuzz/fuzz_targets.h"
#include "tests/fuzz/seeds.h"

namespace longread::fuzz {
namespace {

namespace fs = std::filesystem;
using Target = void (*)(const uint8_t*, size_t);

void Run(Target target, const std::string& input) {
  std::string copy = input;  // exactly sized, so ASan builds catch over-reads
  target(reinterpret_cast<const uint8_t*>(copy.data()), copy.size());
}

// Every seed, and the seed with one byte flipped at each offset of its first 2 KiB (headers and
// metadata) and at every 61st offset after (tensor data, which parsing does not read).
void ReplaySeeds(Target target, const std::vector<std::string>& seeds) {
  ASSERT_FALSE(seeds.empty());
  for (const std::string& seed : seeds) {
    Run(target, seed);
    for (size_t i = 0; i < seed.size(); i += i < 2048 ? 1 : 61) {
      std::string mutated = seed;
      mutated[i] ^= static_cast<char>(0x80 | (i & 0x7f));
      Run(target, mutated);
    }
  }
}

// Inputs the fuzzers once found, kept under tests/fuzz/corpus/<name>/.
int ReplayCorpus(Target target, const std::string& name) {
  const char* root = std::getenv("LONGREAD_SOURCE_DIR");
  fs::path dir = fs::path(root ? root : ".") / "tests/fuzz/corpus" / name;
  int n = 0;
  if (!fs::is_directory(dir)) return n;
  for (const fs::directory_entry& e : fs::directory_iterator(dir)) {
    std::ifstream in(e.path(), std::ios::binary);
    std::stringstream bytes;
    bytes << in.rdbuf();
    Run(target, bytes.str());
    ++n;
  }
  return n;
}

TEST(SeedReplayTest, Gguf) {
  ReplaySeeds(FuzzGguf, GgufSeeds());
  ReplayCorpus(FuzzGguf, "gguf");
}

TEST(SeedReplayTest, Safetensors) {
  ReplaySeeds(FuzzSafetensors, SafetensorsSeeds());
  ReplayCorpus(FuzzSafetensors, "safetensors");
}

TEST(SeedReplayTest, HfJson) {
  ReplaySeeds(FuzzHfJson, HfJsonSeeds());
  ReplayCorpus(FuzzHfJson, "hf_json");
}

// The seeds themselves must be valid inputs, or the fuzzers would start from nothing useful.
TEST(SeedReplayTest, SeedsAreValid) {
  for (const std::string& seed : GgufSeeds()) {
    EXPECT_TRUE(engine::GgufFile::Parse(seed).ok());
  }
  EXPECT_TRUE(engine::ModelFile::ParseGguf(GgufSeeds()[0]).ok());
  EXPECT_TRUE(engine::ModelFile::ParseGguf(GgufSeeds()[1]).ok());
  for (const std::string& seed : SafetensorsSeeds()) {
    EXPECT_TRUE(engine::SafetensorsFile::Parse(seed).ok());
  }
  std::vector<std::string> json = HfJsonSeeds();
  EXPECT_TRUE(engine::ParseHfConfig(json[0].substr(1)).ok());
  EXPECT_TRUE(engine::ParseHfTokenizer(json[2].substr(1), "").ok());
}

}  // namespace
}  // namespace longread::fuzz
