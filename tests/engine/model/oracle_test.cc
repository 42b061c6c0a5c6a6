// Our CPU model against Hugging Face transformers (fp32, CPU, same dequantized weights): the
// committed fixture tests/fixtures/oracle/ was written by scripts/hf_oracle.py.
// Criteria (issue: foundation): max |Δlogit| / max |logit| <= 1e-3 at every one of >= 256
// positions, and identical greedy continuations of 64 tokens.
#include <cmath>
#include <fstream>
#include <vector>

#include "engine/memory/runner.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/engine/test_model.h"

namespace longread::engine {
namespace {

nlohmann::json LoadFixture() {
  std::ifstream in(testing::SourceDir() + "/tests/fixtures/oracle/smollm2-135m-instruct-q4_1.json");
  if (!in) return nullptr;
  return nlohmann::json::parse(in);
}

RunnerConfig Dense() {
  RunnerConfig config;
  config.memory = MemoryConfig::Dense();
  config.segment_tokens = 4096;
  return config;
}

TEST(OracleTest, LogitsMatchTransformers) {
  REQUIRE_DEFAULT_MODEL(model);
  const nlohmann::json fixture = LoadFixture();
  ASSERT_FALSE(fixture.is_null()) << "fixture missing";
  const std::vector<int32_t> subset = fixture["vocab_subset"].get<std::vector<int32_t>>();
  const int64_t vocab = model->config().vocab_size;
  kernels::ThreadPool pool(2);
  int64_t positions_checked = 0;
  double worst = 0;
  for (const auto& prompt : fixture["prompts"]) {
    const auto ids = prompt["input_ids"].get<std::vector<int32_t>>();
    RecurrentRunner runner(model, Dense(), nullptr, &pool);
    std::vector<float> logits;
    ASSERT_TRUE(runner.ReadWithLogits(ids, &logits).ok());
    ASSERT_EQ(logits.size(), ids.size() * vocab);
    const auto& positions = prompt["positions"];
    ASSERT_EQ(positions.size(), ids.size());
    for (size_t p = 0; p < positions.size(); ++p) {
      const auto& ref = positions[p];
      const double max_abs = ref["max_abs_logit"].get<double>();
      const float* ours = logits.data() + p * vocab;
      double max_diff = 0;
      const auto top_ids = ref["top_ids"].get<std::vector<int32_t>>();
      const auto top_logits = ref["top_logits"].get<std::vector<double>>();
      for (size_t i = 0; i < top_ids.size(); ++i) {
        max_diff = std::max(max_diff, std::abs(ours[top_ids[i]] - top_logits[i]));
      }
      const auto subset_logits = ref["subset_logits"].get<std::vector<double>>();
      for (size_t i = 0; i < subset.size(); ++i) {
        max_diff = std::max(max_diff, std::abs(ours[subset[i]] - subset_logits[i]));
      }
      worst = std::max(worst, max_diff / max_abs);
      EXPECT_LE(max_diff / max_abs, 1e-3) << prompt["name"].get<std::string>() << " position " << p;
      ++positions_checked;
    }
    // The last position over the whole vocabulary.
    const auto full = prompt["last_logits_full"].get<std::vector<double>>();
    ASSERT_EQ(static_cast<int64_t>(full.size()), vocab);
    double max_abs = 0, max_diff = 0;
    const float* last = logits.data() + (ids.size() - 1) * vocab;
    for (int64_t v = 0; v < vocab; ++v) {
      max_abs = std::max(max_abs, std::abs(full[v]));
      max_diff = std::max(max_diff, std::abs(last[v] - full[v]));
    }
    EXPECT_LE(max_diff / max_abs, 1e-3) << prompt["name"].get<std::string>() << " last position";
  }
  EXPECT_GE(positions_checked, 256);
  std::printf("oracle: %lld positions, worst max|dlogit|/max|logit| = %.3g\n",
              static_cast<long long>(positions_checked), worst);
}

TEST(OracleTest, GreedyContinuationsMatchTransformers) {
  REQUIRE_DEFAULT_MODEL(model);
  const nlohmann::json fixture = LoadFixture();
  ASSERT_FALSE(fixture.is_null()) << "fixture missing";
  kernels::ThreadPool pool(2);
  for (const auto& prompt : fixture["prompts"]) {
    const auto ids = prompt["input_ids"].get<std::vector<int32_t>>();
    const auto expected = prompt["greedy_ids"].get<std::vector<int32_t>>();
    ASSERT_EQ(expected.size(), 64u);
    RecurrentRunner runner(model, Dense(), nullptr, &pool);
    GenerateOptions options;
    options.max_new_tokens = 64;           // no stop tokens: exactly 64, as the reference
    options.sampling.no_repeat_ngram = 0;  // the reference is plain greedy decoding
    auto got = runner.Generate(ids, options);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(*got, expected) << prompt["name"].get<std::string>();
  }
}

}  // namespace
}  // namespace longread::engine
