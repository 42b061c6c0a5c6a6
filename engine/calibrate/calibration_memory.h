// Dense causal attention computed explicitly, so that the attention probabilities are seen: the
// measuring instrument of calibration. Its output is the true dense attention output (later
// layers see the real activations); on the side it records, per layer and KV head, how much
// attention each key receives from the queries after it, and the scorer input x_norm of every
// token.
//
// Definitions, per layer l, KV head g, key position j, with p_h(i, j) the softmax probability of
// query i on key j in query head h and N the tokens seen so far:
//   later_mass(l, g)[j] = Σ_{h ∈ group(g)} Σ_{j < i < N} p_h(i, j)
//   self_mass(l, g)[j]  = Σ_{h ∈ group(g)} p_h(j, j)
//   MeanLaterAttention(l, g, j) = later_mass / (|group| · (N − 1 − j)): the mean probability
//     a later query head of the group puts on key j (0 for the last token, which no query
//     follows). The query i == j is excluded: every token attends to itself a lot, which says
//     nothing about whether later tokens need it.
// For every layer, Σ_g Σ_j (later_mass + self_mass) = N · n_heads (each query row sums to 1).
#pragma once

#include <cstdint>
#include <vector>

#include "engine/model/attention_memory.h"
#include "engine/model_files/model_config.h"

namespace longread::engine {

class CalibrationMemory : public AttentionMemory {
 public:
  explicit CalibrationMemory(const ModelConfig& model);

  // Scores come from one fp32 GEMM per query head (kernels::MatMul on the rotated keys), the
  // softmax in fp32 with a double sum, the output from a second GEMM. Query heads run in
  // parallel on `pool`.
  absl::Status AttendAndUpdate(const SegmentLayerInput& in, float* out,
                               kernels::ThreadPool* pool) override;
  void EndSegment(int64_t n_tokens) override { next_position_ += n_tokens; }
  int64_t next_position() const override { return next_position_; }

  // Forgets everything: the next segment starts a new document at position 0.
  void Reset();

  const std::vector<double>& later_mass(int32_t layer, int32_t kv_head) const {
    return heads_[layer * model_.n_kv_heads + kv_head].later_mass;
  }
  const std::vector<double>& self_mass(int32_t layer, int32_t kv_head) const {
    return heads_[layer * model_.n_kv_heads + kv_head].self_mass;
  }
  double MeanLaterAttention(int32_t layer, int32_t kv_head, int64_t position) const;
  // [tokens][d_model]: the attention-norm output of each token seen, for `layer`.
  const std::vector<float>& x_norm(int32_t layer) const { return x_norm_[layer]; }

 private:
  struct Head {
    std::vector<float> keys;    // [tokens][head_dim], rotated at their positions
    std::vector<float> values;  // [tokens][head_dim]
    std::vector<double> later_mass, self_mass;
  };
  // Per query head, reused across layers: scores/probabilities, this head's mass and output.
  struct HeadScratch {
    std::vector<float> q, probs, out;
    std::vector<double> later, self;
  };

  ModelConfig model_;
  int64_t next_position_ = 0;
  std::vector<Head> heads_;                   // [layer][kv_head]
  std::vector<std::vector<float>> x_norm_;    // [layer]
  std::vector<HeadScratch> scratch_;          // [query head]
  std::vector<std::vector<float>> values_t_;  // [kv_head]: [head_dim][tokens]
  std::vector<int64_t> positions_;
};

}  // namespace longread::engine
