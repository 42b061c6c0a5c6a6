// The device sampler (kernels/cuda SampleToken) against its reference, the host's ChooseToken
// (engine/model/sampler.h), on random rows: greedy exactly (ties, penalties, bans, a NaN at id 0);
// temperature and top-p the host's token in every trial but where a running mass falls within
// rounding of a boundary (allowed: 1 in 100; the counts are printed). Label gpu.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "engine/model/sampler.h"
#include "gtest/gtest.h"
#include "kernels/cuda/cuda_ops.h"

namespace longread::engine {
namespace {

namespace cu = kernels::cuda;

#define REQUIRE_GPU()                                                                  \
  if (!cu::DeviceAvailable()) {                                                        \
    const char* require = std::getenv("LONGREAD_REQUIRE_GPU");                         \
    if (require != nullptr && std::string(require) == "1") FAIL() << "no CUDA device"; \
    GTEST_SKIP() << "no CUDA device";                                                  \
  }

class CudaSamplerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cu::DeviceAvailable()) return;
    auto ctx = cu::Context::Create();
    ASSERT_TRUE(ctx.ok()) << ctx.status();
    ctx_ = std::move(*ctx);
  }

  // The device's choice for `logits` under `step`.
  int32_t DeviceChoice(const std::vector<float>& logits, const SampleStep& step) {
    const int64_t vocab = static_cast<int64_t>(logits.size());
    auto dev = cu::DeviceBuffer::Allocate(vocab * 4);
    auto scratch = cu::DeviceBuffer::Allocate(vocab * 4);
    const int64_t lists = static_cast<int64_t>(step.penalized.size() + step.banned.size());
    auto io = cu::PinnedBuffer::Allocate((1 + lists) * 4);
    EXPECT_TRUE(dev.ok() && scratch.ok() && io.ok());
    if (!dev.ok() || !scratch.ok() || !io.ok()) return -2;
    EXPECT_TRUE(cu::Upload(*ctx_, logits.data(), vocab * 4, dev->as<void>()).ok());
    int32_t* p = io->as<int32_t>();
    p[0] = -1;
    std::copy(step.penalized.begin(), step.penalized.end(), p + 1);
    std::copy(step.banned.begin(), step.banned.end(), p + 1 + step.penalized.size());
    cu::SampleArgs a;
    a.logits = dev->as<float>();
    a.vocab = vocab;
    a.penalized = p + 1;
    a.n_penalized = static_cast<int32_t>(step.penalized.size());
    a.repeat_penalty = step.repeat_penalty;
    a.banned = p + 1 + step.penalized.size();
    a.n_banned = static_cast<int32_t>(step.banned.size());
    a.temperature = step.temperature;
    a.top_p = step.top_p;
    a.uniform = step.uniform;
    a.scratch = scratch->as<float>();
    a.out = p;
    const absl::Status s = cu::SampleToken(*ctx_, a);
    EXPECT_TRUE(s.ok()) << s;
    EXPECT_TRUE(ctx_->Synchronize().ok());
    return p[0];
  }

  int32_t HostChoice(const std::vector<float>& logits, const SampleStep& step) {
    return ChooseToken(logits, step, &controlled_, &candidates_);
  }

  std::unique_ptr<cu::Context> ctx_;
  std::vector<float> controlled_;
  std::vector<std::pair<float, int32_t>> candidates_;
};

// Logits as a model gives them (normal, a few strong), or rounded to halves (many ties).
std::vector<float> RandomLogits(std::mt19937_64& rng, int64_t vocab, bool tied) {
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> logits(vocab);
  for (float& l : logits) l = tied ? std::round(normal(rng)) * 0.5f : normal(rng);
  std::uniform_int_distribution<int64_t> id(0, vocab - 1);
  for (int i = 0; i < 4; ++i) logits[id(rng)] += tied ? 6.0f : 8.0f * (i + 1) / 4.0f;
  return logits;
}

SampleStep RandomControls(std::mt19937_64& rng, int64_t vocab) {
  SampleStep step;
  std::uniform_int_distribution<int64_t> id(0, vocab - 1);
  std::uniform_int_distribution<int> count(0, 40);
  step.repeat_penalty = std::uniform_real_distribution<float>(1.0f, 1.5f)(rng);
  for (int i = count(rng); i > 0; --i) step.penalized.push_back(static_cast<int32_t>(id(rng)));
  std::sort(step.penalized.begin(), step.penalized.end());
  step.penalized.erase(std::unique(step.penalized.begin(), step.penalized.end()),
                       step.penalized.end());
  for (int i = count(rng) / 8; i > 0; --i) step.banned.push_back(static_cast<int32_t>(id(rng)));
  if (!step.banned.empty()) step.banned.push_back(step.banned.front());  // repeats are allowed
  return step;
}

TEST_F(CudaSamplerTest, GreedyIsTheHostsArgmaxExactly) {
  REQUIRE_GPU();
  std::mt19937_64 rng(7);
  int trials = 0;
  for (int64_t vocab : {int64_t{1}, int64_t{5}, int64_t{1000}, int64_t{1025}, int64_t{49152}}) {
    for (int t = 0; t < 40; ++t, ++trials) {
      std::vector<float> logits = RandomLogits(rng, vocab, t % 2 == 1);
      const SampleStep step = t % 4 < 2 ? SampleStep{} : RandomControls(rng, vocab);
      if (t % 10 == 9) logits[0] = std::numeric_limits<float>::quiet_NaN();
      if (t % 10 == 8) logits.assign(vocab, -std::numeric_limits<float>::infinity());
      ASSERT_EQ(DeviceChoice(logits, step), HostChoice(logits, step))
          << "vocab " << vocab << " trial " << t;
    }
  }
  std::printf("[device sampler] greedy: %d trials, all equal\n", trials);
}

TEST_F(CudaSamplerTest, SamplingChoosesTheHostsToken) {
  REQUIRE_GPU();
  std::mt19937_64 rng(11);
  int trials = 0, differ = 0;
  for (int64_t vocab : {int64_t{3}, int64_t{1000}, int64_t{49152}}) {
    for (int t = 0; t < 80; ++t, ++trials) {
      const std::vector<float> logits = RandomLogits(rng, vocab, t % 3 == 2);
      SampleStep step = t % 2 == 0 ? SampleStep{} : RandomControls(rng, vocab);
      step.temperature = std::uniform_real_distribution<float>(0.3f, 1.5f)(rng);
      const float top_ps[] = {1.0f, 0.9f, 0.5f, 0.0f, 0.97f};
      step.top_p = top_ps[t % 5];
      step.uniform = std::uniform_real_distribution<double>()(rng);
      if (t % 16 == 15) step.uniform = 0.0;
      const int32_t device = DeviceChoice(logits, step), host = HostChoice(logits, step);
      ASSERT_GE(device, 0);
      ASSERT_LT(device, vocab);
      if (device != host) {
        ++differ;
        std::printf("[device sampler] differs: vocab %lld trial %d top_p %.2f: %d vs host %d\n",
                    static_cast<long long>(vocab), t, step.top_p, device, host);
      }
    }
  }
  std::printf("[device sampler] sampling: %d of %d trials differ from the host\n", differ, trials);
  EXPECT_LE(differ * 100, trials);
}

}  // namespace
}  // namespace longread::engine
