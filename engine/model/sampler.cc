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

std::span<const float> Sampler::Controlled(std::span<const float> logits) {
  const bool penalty = options_.repeat_penalty != 1.0f && options_.repeat_last_n > 0;
  const size_t n = options_.no_repeat_ngram > 0 ? static_cast<size_t>(options_.no_repeat_ngram) : 0;
  const bool ngram = n > 0 && answer_.size() + 1 >= n;
  if (!penalty && !ngram) return logits;
  controlled_.assign(logits.begin(), logits.end());
  const auto vocab = static_cast<int32_t>(controlled_.size());
  if (penalty) {
    // The last repeat_last_n tokens of prompt tail + answer, each distinct token once.
    std::vector<int32_t> recent;
    const size_t want = static_cast<size_t>(options_.repeat_last_n);
    const size_t from_answer = std::min(want, answer_.size());
    const size_t from_prompt = std::min(want - from_answer, prompt_tail_.size());
    recent.insert(recent.end(), prompt_tail_.end() - static_cast<std::ptrdiff_t>(from_prompt),
                  prompt_tail_.end());
    recent.insert(recent.end(), answer_.end() - static_cast<std::ptrdiff_t>(from_answer),
                  answer_.end());
    std::sort(recent.begin(), recent.end());
    recent.erase(std::unique(recent.begin(), recent.end()), recent.end());
    for (int32_t token : recent) {
      if (token < 0 || token >= vocab) continue;
      float& logit = controlled_[static_cast<size_t>(token)];
      logit = logit > 0 ? logit / options_.repeat_penalty : logit * options_.repeat_penalty;
    }
  }
  if (ngram) {
    // Every earlier occurrence of the answer's last n-1 tokens: the token that followed it would
    // complete a repeated n-gram.
    const size_t prefix = n - 1;
    const auto tail = answer_.end() - static_cast<std::ptrdiff_t>(prefix);
    for (size_t start = 0; start + prefix < answer_.size(); ++start) {
      if (std::equal(tail, answer_.end(), answer_.begin() + static_cast<std::ptrdiff_t>(start))) {
        const int32_t token = answer_[start + prefix];
        if (token >= 0 && token < vocab) {
          controlled_[static_cast<size_t>(token)] = -std::numeric_limits<float>::infinity();
        }
      }
    }
  }
  return controlled_;
}

int32_t Sampler::Next(std::span<const float> logits) {
  const int32_t token = Choose(Controlled(logits));
  answer_.push_back(token);
  return token;
}

int32_t Sampler::Choose(std::span<const float> logits) {
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
