// The arguments of the device sampler (cuda_ops.h SampleToken, sample.cu): plain data that both
// the host compiler and nvcc read.
#pragma once

#include <cstdint>

namespace longread::kernels::cuda {

// One token chosen from one row of logits as engine/model/sampler.h's ChooseToken chooses it.
// Every pointer must be readable (written: scratch, out) by the device: device memory, or
// pinned host memory mapped into the device (the control lists and the token, per step).
struct SampleArgs {
  const float* logits = nullptr;  // [vocab] fp32
  int64_t vocab = 0;
  // The controls: `penalized` (distinct ids) divided by the penalty when positive, multiplied
  // when not; then every id of `banned` set to -inf.
  const int32_t* penalized = nullptr;
  int32_t n_penalized = 0;
  float repeat_penalty = 1.0f;
  const int32_t* banned = nullptr;
  int32_t n_banned = 0;
  float temperature = 0.0f;  // <= 0: greedy (first largest, as the host's Argmax)
  float top_p = 1.0f;
  double uniform = 0.0;      // in [0, 1): the host sampler's draw for this token
  float* scratch = nullptr;  // [vocab] fp32 (the controlled logits, then probabilities)
  int32_t* out = nullptr;    // the chosen id
};

}  // namespace longread::kernels::cuda
