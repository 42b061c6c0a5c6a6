// Next-token choice from logits: greedy, or temperature + nucleus (top-p) sampling with a seed,
// so that a run is reproducible.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace longread::engine {

struct SamplingOptions {
  float temperature = 0.0f;  // 0: greedy (argmax, lowest id wins a tie)
  float top_p = 1.0f;        // keep the smallest set of tokens whose probability sums to >= top_p
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplingOptions& options) : options_(options), rng_(options.seed) {}
  int32_t Next(std::span<const float> logits);

 private:
  SamplingOptions options_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> candidates_;
};

int32_t Argmax(std::span<const float> logits);

}  // namespace longread::engine
