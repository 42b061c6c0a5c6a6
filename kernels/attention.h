// Attention of a segment's queries over the keys of memory ∪ segment in one pass, where every
// key carries a visibility interval over query indices. Dense causal attention, sliding windows,
// sinks and exact SparseK selection are all expressed through the intervals.
#pragma once

#include <cstdint>

#include "kernels/thread_pool.h"

namespace longread::kernels {

struct AttentionArgs {
  const float* q = nullptr;  // [n_q][n_heads][head_dim], already rotated
  const float* k = nullptr;  // [n_kv_heads][n_keys][head_dim], already rotated (head-major!)
  const float* v = nullptr;  // [n_kv_heads][n_keys][head_dim]
  // Optional: when non-null, KV head g's keys (values) are the n_keys rows of head_dim floats at
  // k_heads[g] (v_heads[g]) and k (v) is ignored. Lets a memory attend over its own per-head
  // buffers without first copying them into one array.
  const float* const* k_heads = nullptr;
  const float* const* v_heads = nullptr;
  // Key j of KV head g is visible to query i iff
  //   visible_from[g*n_keys+j] <= i < visible_until[g*n_keys+j].
  // (Dense causal attention over a cache of P past keys + n_q new ones: from = max(0, j-P),
  // until = INT32_MAX.)
  const int32_t* visible_from = nullptr;
  const int32_t* visible_until = nullptr;
  // Optional "soft" SparseK mode: when score is non-null, the value of key j is scaled by
  // clamp(score[g*n_keys+j] - tau[i*n_kv_heads+g], 0, 1) for the queries i >= gate_from[g*n_keys+j]
  // (INT32_MAX: never). A key is a top-k candidate only from the query where it leaves the window
  // on; before that, and for sinks, its value is unscaled. The softmax itself is unchanged.
  const float* score = nullptr;
  const float* tau = nullptr;
  const int32_t* gate_from = nullptr;
  int64_t n_q = 0, n_keys = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0;
  float scale = 0;       // usually 1/sqrt(head_dim)
  float* out = nullptr;  // [n_q][n_heads][head_dim]
};

// A query with no visible key outputs zeros. Grouped-query: query head h uses KV head
// h / (n_heads / n_kv_heads). Tiles of queries x keys with an online softmax; key tiles that are
// invisible to a whole query tile are skipped. Result independent of the number of threads.
void Attention(const AttentionArgs& args, ThreadPool* pool);

}  // namespace longread::kernels
