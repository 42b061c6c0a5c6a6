#include "engine/model/sampler.h"

#include <algorithm>
#include <cmath>

namespace longread::engine {

int32_t Argmax(std::span<const float> logits) {
  int32_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[best]) best = static_cast<int32_t>(i);
  }
  return best;
}

int32_t Sampler::Next(std::span<const float> logits) {
  if (options_.temperature <= 0.0f) return Argmax(logits);
  const float max_logit = *std::max_element(logits.begin(), logits.end());
  candidates_.resize(logits.size());
  double total = 0.0;
  for (size_t i = 0; i < logits.size(); ++i) {
    const float p = std::exp((logits[i] - max_logit) / options_.temperature);
    candidates_[i] = {p, static_cast<int32_t>(i)};
    total += p;
  }
  size_t keep = candidates_.size();
  if (options_.top_p < 1.0f) {
    // Descending probability, ties by id, so the nucleus is deterministic.
    std::sort(candidates_.begin(), candidates_.end(), [](const auto& a, const auto& b) {
      return a.first != b.first ? a.first > b.first : a.second < b.second;
    });
    double cumulative = 0.0;
    for (keep = 0; keep < candidates_.size();) {
      cumulative += candidates_[keep++].first;
      if (cumulative >= options_.top_p * total) break;
    }
    total = cumulative;
  }
  std::uniform_real_distribution<double> uniform(0.0, total);
  double r = uniform(rng_);
  for (size_t i = 0; i < keep; ++i) {
    r -= candidates_[i].first;
    if (r <= 0.0) return candidates_[i].second;
  }
  return candidates_[keep - 1].second;
}

}  // namespace longread::engine
