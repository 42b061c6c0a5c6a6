#include "engine/model/sampler.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace longread::engine {
namespace {

TEST(SamplerTest, GreedyPicksArgmaxLowestIdOnTies) {
  Sampler sampler({});
  const std::vector<float> logits = {0.5f, 2.0f, 2.0f, -1.0f};
  EXPECT_EQ(sampler.Next(logits), 1);
}

TEST(SamplerTest, SameSeedSameSequence) {
  const std::vector<float> logits = {1.0f, 1.2f, 0.8f, 1.1f, 0.9f};
  Sampler a({.temperature = 1.0f, .top_p = 1.0f, .seed = 9, .no_repeat_ngram = 0});
  Sampler b({.temperature = 1.0f, .top_p = 1.0f, .seed = 9, .no_repeat_ngram = 0});
  for (int i = 0; i < 50; ++i) EXPECT_EQ(a.Next(logits), b.Next(logits));
}

TEST(SamplerTest, TopPExcludesTail) {
  // p = softmax: token 0 holds ~0.87 of the mass; top_p 0.5 keeps it alone.
  const std::vector<float> logits = {4.0f, 1.0f, 1.0f, 0.5f};
  Sampler sampler({.temperature = 1.0f, .top_p = 0.5f, .seed = 1, .no_repeat_ngram = 0});
  for (int i = 0; i < 200; ++i) EXPECT_EQ(sampler.Next(logits), 0);
}

TEST(SamplerTest, TemperatureSamplingFollowsProbabilities) {
  const std::vector<float> logits = {0.0f, std::log(3.0f)};  // p = 1/4, 3/4
  Sampler sampler({.temperature = 1.0f, .top_p = 1.0f, .seed = 3, .no_repeat_ngram = 0});
  std::map<int32_t, int> counts;
  for (int i = 0; i < 4000; ++i) ++counts[sampler.Next(logits)];
  EXPECT_NEAR(counts[1] / 4000.0, 0.75, 0.03);
}

// A "model" whose greedy continuation loops forever: token t is followed by (t + 1) % 3, with a
// weaker alternative 3 + t. Returns the tokens the sampler emits after the prompt `first`.
std::vector<int32_t> Continue(Sampler& sampler, int32_t first, int steps) {
  std::vector<int32_t> out;
  for (int i = 0; i < steps; ++i) {
    std::vector<float> logits(6, 0.0f);
    const int32_t last = (out.empty() ? first : out.back()) % 3;
    logits[static_cast<size_t>((last + 1) % 3)] = 5.0f;
    logits[static_cast<size_t>(3 + last)] = 4.0f;
    out.push_back(sampler.Next(logits));
  }
  return out;
}

// Whether some n-gram occurs twice in `tokens`.
bool RepeatsAnNgram(const std::vector<int32_t>& tokens, size_t n) {
  for (size_t a = 0; a + n <= tokens.size(); ++a) {
    for (size_t b = a + 1; b + n <= tokens.size(); ++b) {
      if (std::equal(tokens.begin() + a, tokens.begin() + a + n, tokens.begin() + b)) return true;
    }
  }
  return false;
}

TEST(SamplerTest, NoRepeatNgramBreaksAGreedyLoop) {
  Sampler off({.no_repeat_ngram = 0});
  EXPECT_TRUE(RepeatsAnNgram(Continue(off, 0, 30), 4));
  Sampler guarded({.no_repeat_ngram = 4});
  const std::vector<int32_t> out = Continue(guarded, 0, 30);
  EXPECT_FALSE(RepeatsAnNgram(out, 4));
  // The loop's first turns are left as they are: only the repeat is excluded.
  EXPECT_EQ(std::vector<int32_t>(out.begin(), out.begin() + 5),
            std::vector<int32_t>({1, 2, 0, 1, 2}));
}

TEST(SamplerTest, DefaultNoRepeatNgramLeavesShortRepeatsAlone) {
  // A number with repeated digits (the model writes one token per digit): with the default
  // guard, six equal digits are written as they are; only a seventh would repeat a 6-gram.
  Sampler sampler({});
  ASSERT_EQ(SamplingOptions{}.no_repeat_ngram, 6);
  const std::vector<float> logits = {0.0f, 1.0f};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(sampler.Next(logits), 1) << i;
  EXPECT_EQ(sampler.Next(logits), 0);
}

TEST(SamplerTest, RepeatPenaltyFollowsLlamaCppOverTheLastN) {
  // Token 1 (positive logit) is divided, token 2 (negative) multiplied; token 3 was seen, but
  // before the last 2 tokens, so it is not penalized.
  Sampler sampler({.repeat_penalty = 2.0f, .repeat_last_n = 2, .no_repeat_ngram = 0});
  const std::vector<int32_t> prompt = {3, 2, 1};
  sampler.SetPromptTail(prompt);
  // Unpenalized: 1 (3.0) > 0 (2.0) > 3 (1.9). Penalized: 1 -> 1.5, so 0 wins.
  EXPECT_EQ(sampler.Next(std::vector<float>{2.0f, 3.0f, -1.0f, 1.9f}), 0);
  // Now the last 2 are {1, 0}: 0 (2.0 -> 1.0) and 1 (3.0 -> 1.5) penalized, 3 (1.9) is not;
  // 2 is no longer recent: -1.0 stays.
  EXPECT_EQ(sampler.Next(std::vector<float>{2.0f, 3.0f, -1.0f, 1.9f}), 3);
  // A penalty on recent tokens breaks copying repeated digits: 7 after 7 loses to 1.
  Sampler digits({.repeat_penalty = 1.3f, .repeat_last_n = 64, .no_repeat_ngram = 0});
  const std::vector<int32_t> seven = {7};
  digits.SetPromptTail(seven);
  std::vector<float> logits(8, 0.0f);
  logits[7] = 1.0f;
  logits[1] = 0.8f;
  EXPECT_EQ(digits.Next(logits), 1);
}

// A device chooses from Plan()'s step what Next chooses (the device path rests on it): two
// samplers with the same options and seed, one choosing through Plan + ChooseToken + Record, pick
// the same tokens, draw for draw, with the penalty and the n-gram guard in play.
TEST(SamplerTest, PlanThenChooseIsNext) {
  std::mt19937_64 rng(5);
  std::normal_distribution<float> normal(0.0f, 1.5f);
  int banned_steps = 0;
  for (const SamplingOptions& options :
       {SamplingOptions{}, SamplingOptions{.temperature = 0.9f, .top_p = 0.8f, .seed = 3},
        SamplingOptions{.temperature = 1.3f, .seed = 4, .repeat_penalty = 1.2f},
        SamplingOptions{.temperature = 0.5f, .top_p = 0.3f, .seed = 5, .no_repeat_ngram = 2}}) {
    Sampler whole(options), halves(options);
    const std::vector<int32_t> prompt = {1, 2, 3, 2};
    whole.SetPromptTail(prompt);
    halves.SetPromptTail(prompt);
    std::vector<float> controlled;
    std::vector<std::pair<float, int32_t>> candidates;
    for (int i = 0; i < 200; ++i) {
      std::vector<float> logits(12);
      for (float& l : logits) l = normal(rng);
      logits[static_cast<size_t>(i % 3)] += 3.0f;  // a loop the guard must break
      const int32_t want = whole.Next(logits);
      const SampleStep& step = halves.Plan();
      banned_steps += !step.banned.empty();
      const int32_t got = ChooseToken(logits, step, &controlled, &candidates);
      halves.Record(got);
      ASSERT_EQ(got, want) << "step " << i << " temperature " << options.temperature;
    }
  }
  EXPECT_GT(banned_steps, 0);
}

}  // namespace
}  // namespace longread::engine
