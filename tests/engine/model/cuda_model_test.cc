// The model on the GPU (bf16 weights and activations, fp32 accumulation) against the CPU engine
// (the reference) on the oracle prompts, read through a dense cache: next-token distributions
// within mean KL 1e-2 nats (issue 19's bf16 criterion), the GPU reading the text in three
// segments (one of a single token) while the CPU reads it in one.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <vector>

#include "engine/memory/runner.h"
#include "engine/model/cuda_llama_model.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/engine/logit_compare.h"
#include "tests/engine/require_gpu.h"
#include "tests/engine/test_model.h"

namespace longread::engine {
namespace {

using testing::KlDivergence;

std::vector<int32_t> OraclePromptTokens() {
  std::ifstream in(testing::SourceDir() + "/tests/fixtures/oracle/smollm2-135m-instruct-q4_1.json");
  if (!in) return {};
  const nlohmann::json fixture = nlohmann::json::parse(in);
  std::vector<int32_t> ids;
  for (const auto& prompt : fixture["prompts"]) {
    for (int32_t id : prompt["input_ids"].get<std::vector<int32_t>>()) ids.push_back(id);
  }
  return ids;
}

int64_t ArgMax(const float* row, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i) {
    if (row[i] > row[best]) best = i;
  }
  return best;
}

TEST(CudaModelTest, NextTokenDistributionsMatchTheCpuEngine) {
  REQUIRE_GPU();
  REQUIRE_DEFAULT_MODEL(model);
  const std::vector<int32_t> ids = OraclePromptTokens();
  ASSERT_GT(ids.size(), 200u) << "oracle fixture missing";
  const int64_t n = static_cast<int64_t>(ids.size()), vocab = model->config().vocab_size;

  kernels::ThreadPool pool(2);
  RunnerConfig config;
  config.memory = MemoryConfig::Dense();
  config.segment_tokens = 4096;
  RecurrentRunner runner(model, config, nullptr, &pool);
  std::vector<float> cpu;
  ASSERT_TRUE(runner.ReadWithLogits(ids, &cpu).ok());
  ASSERT_EQ(static_cast<int64_t>(cpu.size()), n * vocab);

  auto ctx = kernels::cuda::Context::Create();
  ASSERT_TRUE(ctx.ok()) << ctx.status();
  auto gpu_model = CudaLlamaModel::Create(*model, ctx->get());
  ASSERT_TRUE(gpu_model.ok()) << gpu_model.status();
  auto cache = (*gpu_model)->NewCache(n + 7);
  ASSERT_TRUE(cache.ok()) << cache.status();
  std::vector<float> gpu;
  const int64_t cuts[] = {0, 150, 151, n};
  for (int s = 0; s < 3; ++s) {
    std::vector<float> part;
    const std::span<const int32_t> segment(ids.data() + cuts[s], cuts[s + 1] - cuts[s]);
    const absl::Status status = (*gpu_model)->Forward(segment, *cache, LogitsMode::kAll, &part);
    ASSERT_TRUE(status.ok()) << status;
    gpu.insert(gpu.end(), part.begin(), part.end());
  }
  ASSERT_EQ(gpu.size(), cpu.size());
  EXPECT_EQ(cache->length, n);

  double kl_sum = 0, kl_max = 0;
  int64_t same_argmax = 0;
  for (int64_t t = 0; t < n; ++t) {
    const double kl = KlDivergence(&cpu[t * vocab], &gpu[t * vocab], vocab);
    ASSERT_TRUE(std::isfinite(kl)) << "position " << t;
    kl_sum += kl;
    kl_max = std::max(kl_max, kl);
    same_argmax += ArgMax(&cpu[t * vocab], vocab) == ArgMax(&gpu[t * vocab], vocab);
  }
  std::printf(
      "[errors] cuda model vs cpu: %lld positions, mean KL %.3g nats, max KL %.3g, "
      "same argmax %lld/%lld\n",
      static_cast<long long>(n), kl_sum / n, kl_max, static_cast<long long>(same_argmax),
      static_cast<long long>(n));
  EXPECT_LE(kl_sum / n, 1e-2);
  EXPECT_GE(same_argmax, n * 9 / 10);
  // Past the cache's capacity is refused, not overrun.
  std::vector<float> unused;
  EXPECT_EQ(
      (*gpu_model)
          ->Forward(std::span<const int32_t>(ids.data(), 8), *cache, LogitsMode::kNone, &unused)
          .code(),
      absl::StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace longread::engine
