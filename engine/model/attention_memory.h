// The seam between the model and its key/value memory. The model computes a segment's queries,
// keys and values for one layer and asks the memory to attend and to absorb the new keys; it
// never reaches into the memory's slots (cf. llama.cpp's KV cache interface). A dense KV cache
// and the SparseK memory are the same class with different budgets (engine/memory/).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/thread_pool.h"

namespace longread::engine {

// One layer's view of a segment of `n_tokens` consecutive document tokens.
struct SegmentLayerInput {
  int32_t layer = 0;
  int64_t n_tokens = 0;
  float* q = nullptr;             // [n_tokens][n_heads][head_dim], un-rotated; rotated in place
  const float* k = nullptr;       // [n_tokens][n_kv_heads][head_dim], un-rotated
  const float* v = nullptr;       // [n_tokens][n_kv_heads][head_dim]
  const float* x_norm = nullptr;  // [n_tokens][d_model]: the attention-norm output (scorer input)
};

class AttentionMemory {
 public:
  virtual ~AttentionMemory() = default;
  // Writes attention output [n_tokens][n_heads][head_dim] to `out`, then folds the segment's keys
  // into this layer's memory. Called once per layer, layers in order.
  virtual absl::Status AttendAndUpdate(const SegmentLayerInput& in, float* out,
                                       kernels::ThreadPool* pool) = 0;
  // Called after the last layer: the segment's tokens now belong to the past.
  virtual void EndSegment(int64_t n_tokens) = 0;
  // Position of the next document token.
  virtual int64_t next_position() const = 0;
};

}  // namespace longread::engine
