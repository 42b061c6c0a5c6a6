// How far two readings of the same text are apart: shared by the tests that bound a GPU or
// batched reading against the CPU engine, and by the bench that reports the same measure. No
// test framework here, so a bench can include it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <vector>

namespace longread::engine::testing {

// KL(p || q) in nats between the softmaxes of two logit rows of n entries.
inline double KlDivergence(const float* p_logits, const float* q_logits, int64_t n) {
  double p_max = p_logits[0], q_max = q_logits[0];
  for (int64_t i = 1; i < n; ++i) {
    p_max = std::max<double>(p_max, p_logits[i]);
    q_max = std::max<double>(q_max, q_logits[i]);
  }
  double p_sum = 0, q_sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    p_sum += std::exp(p_logits[i] - p_max);
    q_sum += std::exp(q_logits[i] - q_max);
  }
  const double p_log_z = p_max + std::log(p_sum), q_log_z = q_max + std::log(q_sum);
  double kl = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double log_p = p_logits[i] - p_log_z, log_q = q_logits[i] - q_log_z;
    kl += std::exp(log_p) * (log_p - log_q);
  }
  return kl;
}

// The largest difference of a from the reference b, relative to b's largest magnitude.
inline double MaxRelativeDiff(const std::vector<float>& a, const std::vector<float>& b) {
  double max_abs = 0, max_diff = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    max_abs = std::max(max_abs, std::abs(static_cast<double>(b[i])));
    max_diff = std::max(max_diff, std::abs(static_cast<double>(a[i]) - b[i]));
  }
  return max_diff / max_abs;
}

// How many of the positions `want` holds `got` holds too (both sorted, as the memories keep
// them): the slots two memories have in common.
inline int64_t PositionsInCommon(const std::vector<int64_t>& want,
                                 const std::vector<int64_t>& got) {
  std::vector<int64_t> both;
  std::set_intersection(want.begin(), want.end(), got.begin(), got.end(), std::back_inserter(both));
  return static_cast<int64_t>(both.size());
}

}  // namespace longread::engine::testing
