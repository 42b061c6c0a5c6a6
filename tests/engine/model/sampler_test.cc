#include "engine/model/sampler.h"

#include <cmath>
#include <map>
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
  Sampler a({.temperature = 1.0f, .top_p = 1.0f, .seed = 9});
  Sampler b({.temperature = 1.0f, .top_p = 1.0f, .seed = 9});
  for (int i = 0; i < 50; ++i) EXPECT_EQ(a.Next(logits), b.Next(logits));
}

TEST(SamplerTest, TopPExcludesTail) {
  // p = softmax: token 0 holds ~0.87 of the mass; top_p 0.5 keeps it alone.
  const std::vector<float> logits = {4.0f, 1.0f, 1.0f, 0.5f};
  Sampler sampler({.temperature = 1.0f, .top_p = 0.5f, .seed = 1});
  for (int i = 0; i < 200; ++i) EXPECT_EQ(sampler.Next(logits), 0);
}

TEST(SamplerTest, TemperatureSamplingFollowsProbabilities) {
  const std::vector<float> logits = {0.0f, std::log(3.0f)};  // p = 1/4, 3/4
  Sampler sampler({.temperature = 1.0f, .top_p = 1.0f, .seed = 3});
  std::map<int32_t, int> counts;
  for (int i = 0; i < 4000; ++i) ++counts[sampler.Next(logits)];
  EXPECT_NEAR(counts[1] / 4000.0, 0.75, 0.03);
}

}  // namespace
}  // namespace longread::engine
