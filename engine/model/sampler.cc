#include "engine/model/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace longread::engine {

int32_t Argmax(std::span<const float> logits) {
  int32_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[best]) best = static_cast<int32_t>(i);
  }
  return best;
}

void Sampler::SetPromptTail(std::span<const int32_t> prompt) {
  const size_t keep = std::min(prompt.size(), static_cast<size_t>(options_.repeat_last_n));
  prompt_tail_.assign(prompt.end() - static_cast<std::ptrdiff_t>(keep), prompt.end());
}

const SampleStep& Sampler::Plan() {
  SampleStep& step = step_;
  step.temperature = options_.temperature;
  step.top_p = options_.top_p;
  step.repeat_penalty = options_.repeat_penalty;
  step.penalized.clear();
  step.banned.clear();
  // libstdc++'s uniform_real_distribution(0, total) is total x this draw: the host's choice
  // below equals the one it made with that distribution, draw for draw.
  step.uniform = 0.0;
  if (options_.temperature > 0.0f) step.uniform = std::uniform_real_distribution<double>()(rng_);
  if (options_.repeat_penalty != 1.0f && options_.repeat_last_n > 0) {
    // The last repeat_last_n tokens of prompt tail + answer, each distinct token once.
    std::vector<int32_t>& recent = step.penalized;
    const size_t want = static_cast<size_t>(options_.repeat_last_n);
    const size_t from_answer = std::min(want, answer_.size());
    const size_t from_prompt = std::min(want - from_answer, prompt_tail_.size());
    recent.insert(recent.end(), prompt_tail_.end() - static_cast<std::ptrdiff_t>(from_prompt),
                  prompt_tail_.end());
    recent.insert(recent.end(), answer_.end() - static_cast<std::ptrdiff_t>(from_answer),
                  answer_.end());
    std::sort(recent.begin(), recent.end());
    recent.erase(std::unique(recent.begin(), recent.end()), recent.end());
  }
  const size_t n = options_.no_repeat_ngram > 0 ? static_cast<size_t>(options_.no_repeat_ngram) : 0;
  if (n > 0 && answer_.size() + 1 >= n) {
    // Every earlier occurrence of the answer's last n-1 tokens: the token that followed it would
    // complete a repeated n-gram.
    const size_t prefix = n - 1;
    const auto tail = answer_.end() - static_cast<std::ptrdiff_t>(prefix);
    for (size_t start = 0; start + prefix < answer_.size(); ++start) {
      if (std::equal(tail, answer_.end(), answer_.begin() + static_cast<std::ptrdiff_t>(start))) {
        step.banned.push_back(answer_[start + prefix]);
      }
    }
  }
  return step;
}

int32_t Sampler::Next(std::span<const float> logits) {
  const int32_t token = ChooseToken(logits, Plan(), &controlled_, &candidates_);
  answer_.push_back(token);
  return token;
}

int32_t ChooseToken(std::span<const float> all, const SampleStep& step,
                    std::vector<float>* controlled,
                    std::vector<std::pair<float, int32_t>>* candidates) {
  std::span<const float> logits = all;
  if (!step.penalized.empty() || !step.banned.empty()) {
    controlled->assign(all.begin(), all.end());
    const auto vocab = static_cast<int32_t>(controlled->size());
    for (int32_t token : step.penalized) {
      if (token < 0 || token >= vocab) continue;
      float& logit = (*controlled)[static_cast<size_t>(token)];
      logit = logit > 0 ? logit / step.repeat_penalty : logit * step.repeat_penalty;
    }
    for (int32_t token : step.banned) {
      if (token >= 0 && token < vocab) {
        (*controlled)[static_cast<size_t>(token)] = -std::numeric_limits<float>::infinity();
      }
    }
    logits = *controlled;
  }
  if (step.temperature <= 0.0f) return Argmax(logits);
  const float max_logit = *std::max_element(logits.begin(), logits.end());
  std::vector<std::pair<float, int32_t>>& c = *candidates;
  c.resize(logits.size());
  double total = 0.0;
  for (size_t i = 0; i < logits.size(); ++i) {
    const float p = std::exp((logits[i] - max_logit) / step.temperature);
    c[i] = {p, static_cast<int32_t>(i)};
    total += p;
  }
  size_t keep = c.size();
  if (step.top_p < 1.0f) {
    // Descending probability, ties by id, so the nucleus is deterministic.
    std::sort(c.begin(), c.end(), [](const auto& a, const auto& b) {
      return a.first != b.first ? a.first > b.first : a.second < b.second;
    });
    double cumulative = 0.0;
    for (keep = 0; keep < c.size();) {
      cumulative += c[keep++].first;
      if (cumulative >= step.top_p * total) break;
    }
    total = cumulative;
  }
  double r = step.uniform * total;
  for (size_t i = 0; i < keep; ++i) {
    r -= c[i].first;
    if (r <= 0.0) return c[i].second;
  }
  return c[keep - 1].second;
}

}  // namespace longread::engine
