// The CPU backend's options are per backend, not process-wide (issue 19): two backends over one
// model, one decoding with 8-bit activations and one with fp32, interleaved token by token, each
// decode exactly as it does alone; the fp32 one equals the runner built on the bare model.
#include "engine/memory/cpu_backend.h"

#include <memory>
#include <vector>

#include "engine/memory/runner.h"
#include "engine/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "tests/engine/test_model.h"

namespace longread::engine {
namespace {

constexpr int kTokens = 6;

RunnerConfig SmallConfig() {
  RunnerConfig config;
  config.memory.top_k = 32;
  config.memory.window = 32;
  config.segment_tokens = 32;
  return config;
}

std::vector<int32_t> Prompt(const LlamaModel& model) {
  auto tokenizer = Tokenizer::Create(model.file().tokenizer());
  EXPECT_TRUE(tokenizer.ok());
  return (*tokenizer)
      ->Encode(
          "The harbor master counted the boats at dawn and wrote the number in the log. "
          "Then she walked to the lighthouse, where",
          false);
}

// Each token's logits (greedy), runners stepped in turn.
std::vector<std::vector<std::vector<float>>> Interleaved(std::vector<RecurrentRunner*> runners,
                                                         const std::vector<int32_t>& prompt) {
  std::vector<std::vector<std::vector<float>>> logits(runners.size());
  GenerateOptions options;
  options.max_new_tokens = kTokens;
  options.sampling.no_repeat_ngram = 0;
  for (RecurrentRunner* r : runners) EXPECT_TRUE(r->BeginGenerate(prompt, options).ok());
  for (int i = 0; i < kTokens; ++i) {
    for (size_t k = 0; k < runners.size(); ++k) {
      auto next = runners[k]->NextToken();
      EXPECT_TRUE(next.ok()) << next.status();
      logits[k].emplace_back(runners[k]->last_logits().begin(), runners[k]->last_logits().end());
    }
  }
  return logits;
}

TEST(CpuBackendTest, DecodeActivationsArePerBackend) {
  REQUIRE_DEFAULT_MODEL(model);
  const std::vector<int32_t> prompt = Prompt(*model);
  kernels::ThreadPool pool(2);
  CpuReadingBackend fp32(model, {kernels::DecodeActivations::kFloat32});
  CpuReadingBackend int8(model, {kernels::DecodeActivations::kInt8});

  auto alone_int8 = RecurrentRunner::Create(&int8, SmallConfig(), nullptr, &pool);
  ASSERT_TRUE(alone_int8.ok());
  const auto want_int8 = Interleaved({alone_int8->get()}, prompt)[0];
  RecurrentRunner bare(model, SmallConfig(), nullptr, &pool);  // the process default: fp32
  ASSERT_EQ(kernels::DefaultDecodeActivations(), kernels::DecodeActivations::kFloat32)
      << "run without LONGREAD_INT8_ACTIVATIONS / LONGREAD_INT16_ACTIVATIONS";
  const auto want_fp32 = Interleaved({&bare}, prompt)[0];

  auto a = RecurrentRunner::Create(&fp32, SmallConfig(), nullptr, &pool);
  auto b = RecurrentRunner::Create(&int8, SmallConfig(), nullptr, &pool);
  ASSERT_TRUE(a.ok() && b.ok());
  const auto got = Interleaved({a->get(), b->get()}, prompt);
  EXPECT_EQ(got[0], want_fp32);
  EXPECT_EQ(got[1], want_int8);
  // 8-bit activations change the logits: every row is a matvec of at most 3 tokens (the LM head
  // of the prompt's last token, then one token per step).
  for (int i = 0; i < kTokens; ++i) EXPECT_NE(want_fp32[i], want_int8[i]) << "token " << i;
}

}  // namespace
}  // namespace longread::engine
