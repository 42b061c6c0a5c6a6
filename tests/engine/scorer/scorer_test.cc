#include "engine/scorer/scorer.h"

#include <gtest/gtest.h>
#include <unistd.h>
#include <xxhash.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace longread::engine {
namespace {

constexpr char kFingerprint[] = "smollm2-135m-instruct-q4_1:abc123";

ScorerWeights RandomWeights(int32_t layers, int32_t heads, int32_t d, uint64_t seed) {
  ScorerWeights s = ZeroScorerWeights(kFingerprint, layers, heads, d);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  for (float& x : s.w) x = normal(rng);
  for (float& x : s.b) x = normal(rng);
  for (float& x : s.slope) x = 1e-3f * normal(rng);
  s.provenance = "scripts/calibrate_scorer.py --tokens 100000";
  return s;
}

class ScorerFileTest : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(testing::TempDir()) /
           ("scorer_test_" + std::to_string(getpid()) + "_" +
            testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
    path_ = (dir_ / "scorer.bin").string();
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string ReadBytes() const {
    std::ifstream in(path_, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  void WriteBytes(const std::string& bytes) const {
    std::ofstream(path_, std::ios::binary | std::ios::trunc) << bytes;
  }
  // Rewrites the trailing checksum so that a crafted edit passes it and reaches field checks.
  void WriteWithValidChecksum(std::string bytes) const {
    bytes.resize(bytes.size() - 8);
    const uint64_t h = XXH64(bytes.data(), bytes.size(), 0);
    for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<char>((h >> (8 * i)) & 0xff));
    WriteBytes(bytes);
  }
  absl::StatusOr<ScorerWeights> Load(int32_t layers = 2, int32_t heads = 3, int32_t d = 13) {
    return LoadScorerWeights(path_, kFingerprint, layers, heads, d);
  }

  std::filesystem::path dir_;
  std::string path_;
};

TEST_F(ScorerFileTest, RoundTripIsBitExact) {
  const ScorerWeights saved = RandomWeights(2, 3, 13, 1);
  ASSERT_TRUE(SaveScorerWeights(path_, saved).ok());
  absl::StatusOr<ScorerWeights> loaded = Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->model_fingerprint, saved.model_fingerprint);
  EXPECT_EQ(loaded->provenance, saved.provenance);
  EXPECT_EQ(loaded->n_layers, 2);
  EXPECT_EQ(loaded->n_kv_heads, 3);
  EXPECT_EQ(loaded->d_model, 13);
  EXPECT_EQ(loaded->w, saved.w);
  EXPECT_EQ(loaded->b, saved.b);
  EXPECT_EQ(loaded->slope, saved.slope);
  // Header 8 + 4 + (4 + 33) + (4 + 43) + 12, floats (78 + 6 + 6) × 4, checksum 8.
  EXPECT_EQ(ReadBytes().size(), 8u + 4 + 4 + 33 + 4 + 43 + 12 + 90 * 4 + 8);
}

TEST_F(ScorerFileTest, SaveReplacesAtomicallyAndLeavesNoTemporary) {
  ASSERT_TRUE(SaveScorerWeights(path_, RandomWeights(2, 3, 13, 1)).ok());
  const ScorerWeights second = RandomWeights(2, 3, 13, 2);
  ASSERT_TRUE(SaveScorerWeights(path_, second).ok());
  EXPECT_EQ(Load()->w, second.w);
  int files = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir_)) ++files;
  EXPECT_EQ(files, 1);
}

TEST_F(ScorerFileTest, MismatchedFingerprintNamesBoth) {
  ASSERT_TRUE(SaveScorerWeights(path_, RandomWeights(2, 3, 13, 1)).ok());
  absl::StatusOr<ScorerWeights> loaded = LoadScorerWeights(path_, "other-model:fff", 2, 3, 13);
  ASSERT_EQ(loaded.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(loaded.status().message().find(kFingerprint), std::string::npos);
  EXPECT_NE(loaded.status().message().find("other-model:fff"), std::string::npos);
}

TEST_F(ScorerFileTest, MismatchedDimensionsAreRefused) {
  ASSERT_TRUE(SaveScorerWeights(path_, RandomWeights(2, 3, 13, 1)).ok());
  EXPECT_EQ(Load(3, 3, 13).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Load(2, 1, 13).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Load(2, 3, 576).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(ScorerFileTest, MissingFileIsNotFound) {
  EXPECT_EQ(Load().status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ScorerFileTest, EveryTruncationIsRefused) {
  ASSERT_TRUE(SaveScorerWeights(path_, RandomWeights(1, 2, 5, 3)).ok());
  const std::string full = ReadBytes();
  for (size_t len = 0; len < full.size(); ++len) {
    WriteBytes(full.substr(0, len));
    EXPECT_EQ(LoadScorerWeights(path_, kFingerprint, 1, 2, 5).status().code(),
              absl::StatusCode::kDataLoss)
        << "length " << len;
  }
}

TEST_F(ScorerFileTest, EveryBitFlipIsRefused) {
  ASSERT_TRUE(SaveScorerWeights(path_, RandomWeights(1, 2, 5, 4)).ok());
  const std::string full = ReadBytes();
  // Every bit of the magic and version, one bit (rotating) of every later byte: each file write
  // costs a syscall round trip, and the checksum treats every position alike.
  for (size_t byte = 0; byte < full.size(); ++byte) {
    for (int bit = byte < 12 ? 0 : static_cast<int>(byte % 8); bit < 8; bit += byte < 12 ? 1 : 8) {
      std::string flipped = full;
      flipped[byte] = static_cast<char>(flipped[byte] ^ (1 << bit));
      WriteBytes(flipped);
      EXPECT_EQ(LoadScorerWeights(path_, kFingerprint, 1, 2, 5).status().code(),
                absl::StatusCode::kDataLoss)
          << "byte " << byte << " bit " << bit;
    }
  }
}

TEST_F(ScorerFileTest, FieldsAreCheckedEvenWithAValidChecksum) {
  ASSERT_TRUE(SaveScorerWeights(path_, RandomWeights(2, 3, 13, 5)).ok());
  const std::string full = ReadBytes();
  const size_t dims_at = 8 + 4 + 4 + 33 + 4 + 43;

  std::string huge_layers = full;  // n_layers = 2^31 − 1.
  std::memcpy(&huge_layers[dims_at], "\xff\xff\xff\x7f", 4);
  WriteWithValidChecksum(huge_layers);
  absl::Status st = Load().status();
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(st.message().find("n_layers"), std::string::npos) << st;

  std::string long_fingerprint = full;  // Length field claims more than the file holds.
  std::memcpy(&long_fingerprint[12], "\x00\x10\x00\x00", 4);
  WriteWithValidChecksum(long_fingerprint);
  EXPECT_EQ(Load().status().code(), absl::StatusCode::kDataLoss);

  std::string version = full;
  version[8] = 2;
  WriteWithValidChecksum(version);
  EXPECT_EQ(Load().status().code(), absl::StatusCode::kFailedPrecondition);

  std::string nan_weight = full;  // First w entry.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::memcpy(&nan_weight[dims_at + 12], &nan, 4);
  WriteWithValidChecksum(nan_weight);
  EXPECT_EQ(Load().status().code(), absl::StatusCode::kInvalidArgument);

  std::string extra = full;  // A trailing byte before the checksum.
  extra.insert(extra.size() - 8, 1, '\0');
  WriteWithValidChecksum(extra);
  EXPECT_EQ(Load().status().code(), absl::StatusCode::kDataLoss);
}

TEST_F(ScorerFileTest, SaveRejectsInvalidWeights) {
  ScorerWeights s = RandomWeights(2, 3, 13, 6);
  s.b.pop_back();
  EXPECT_EQ(SaveScorerWeights(path_, s).code(), absl::StatusCode::kInvalidArgument);
  s = RandomWeights(2, 3, 13, 6);
  s.slope[4] = std::numeric_limits<float>::infinity();
  EXPECT_EQ(SaveScorerWeights(path_, s).code(), absl::StatusCode::kInvalidArgument);
  s = RandomWeights(2, 3, 13, 6);
  s.d_model = 0;
  EXPECT_EQ(SaveScorerWeights(path_, s).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(std::filesystem::exists(path_));
}

TEST(ScoreTokensTest, MatchesNaiveDotProduct) {
  const int32_t layers = 3, heads = 2, d = 37, n = 9;
  const ScorerWeights s = RandomWeights(layers, heads, d, 7);
  std::mt19937_64 rng(8);
  std::normal_distribution<float> normal;
  std::vector<float> x(n * d);
  for (float& v : x) v = normal(rng);
  std::vector<int64_t> pos(n);
  for (int32_t t = 0; t < n; ++t) pos[t] = 1000 + 3 * t;
  for (int32_t layer = 0; layer < layers; ++layer) {
    std::vector<float> with_pos(n * heads), without_pos(n * heads);
    ScoreTokens(s, layer, x.data(), n, pos.data(), with_pos.data());
    ScoreTokens(s, layer, x.data(), n, nullptr, without_pos.data());
    for (int32_t t = 0; t < n; ++t) {
      for (int32_t h = 0; h < heads; ++h) {
        const int32_t lh = layer * heads + h;
        double dot = s.b[lh];
        for (int32_t i = 0; i < d; ++i) dot += double{s.w[lh * d + i]} * x[t * d + i];
        EXPECT_NEAR(without_pos[t * heads + h], dot, 1e-4);
        EXPECT_NEAR(with_pos[t * heads + h], dot + double{s.slope[lh]} * pos[t], 1e-4);
      }
    }
  }
}

}  // namespace
}  // namespace longread::engine
