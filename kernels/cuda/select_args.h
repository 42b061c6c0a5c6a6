// The arguments of the device block selection (cuda_ops.h SelectSegmentKeys) and of the row moves
// and archive copies around it: plain device pointers, shared by the host API and the .cu
// launchers (no CUDA or Abseil headers here).
#pragma once

#include <cstdint>

namespace longread::kernels::cuda {

// dst_row of a key that goes nowhere (padding beyond a head's keys).
inline constexpr int32_t kDropRow = -1;

// engine/memory's SelectSegmentKeys for every KV head of one layer, then the fold. Keys of head
// g are its counts[g] held slots (positions, scores at [g][capacity]) followed by the segment's
// n keys (positions first_position.., scores token_scores[j][g]); per-key arrays are
// [n_kv_heads][n_keys], n_keys >= counts[g] + n for every g (rows beyond are padding: invisible,
// dropped). All pointers are device memory.
struct SelectArgs {
  // MemoryConfig, as SelectSegmentKeys reads it.
  int64_t sinks = 0, block_tokens = 1, window = 1;
  int32_t k_blocks = 0;
  bool mean = false;       // BlockScore::kMean (else kMax)
  bool keep_all = false;   // a dense or frozen memory: nothing is selected or evicted
  bool slot_order = true;  // PositionMode::kSlotOrder: RoPE positions are slot indices
  int64_t first_position = 0, n = 0, n_keys = 0, capacity = 0, n_kv_heads = 0;
  int32_t* counts = nullptr;            // [G] held slots; replaced by the count after the fold
  const int64_t* positions = nullptr;   // [G][capacity]
  const float* scores = nullptr;        // [G][capacity]
  const float* token_scores = nullptr;  // [n][G]
  // Outputs per key, [G][n_keys]: visibility among the segment's queries, whether it stays,
  // its RoPE position; query_positions [n][G].
  int32_t* from = nullptr;
  int32_t* until = nullptr;
  uint8_t* keep = nullptr;
  int64_t* rope_positions = nullptr;
  int64_t* query_positions = nullptr;
  // The fold: new slots' positions and scores [G][capacity]; each key's destination (>= 0: new
  // slot; kDropRow; else evicted index e as -e - 2); evicted keys' positions and scores in key
  // order [G][capacity] and their counts [G] (may be null: no archive).
  int64_t* new_positions = nullptr;
  float* new_scores = nullptr;
  int32_t* dst_row = nullptr;
  int64_t* evicted_positions = nullptr;
  float* evicted_scores = nullptr;
  int32_t* evicted_counts = nullptr;
  // Scratch, [G][n_keys] each, and [G].
  int32_t *key_cand = nullptr, *cand_join = nullptr, *cand_first_key = nullptr;
  int32_t* cand_exit = nullptr;
  float* cand_score = nullptr;
  int32_t* cand_count = nullptr;
};

// Rows of [G][capacity][row_elems] bf16: kept rows to kept_* at their new slot, evicted rows to
// staged_* (skipped when null) at their evicted index, as SelectArgs::dst_row says.
struct MoveRowsArgs {
  const uint16_t* keys = nullptr;
  const uint16_t* values = nullptr;
  const int32_t* dst_row = nullptr;  // [G][n_keys]
  int64_t n_kv_heads = 0, n_keys = 0, capacity = 0, row_elems = 0;
  uint16_t* kept_keys = nullptr;
  uint16_t* kept_values = nullptr;
  uint16_t* staged_keys = nullptr;
  uint16_t* staged_values = nullptr;
};

// The staged evicted rows and their metadata into host memory the device can write (pinned,
// mapped): evicted_counts[g] rows of head g, [G][capacity] layouts on both sides.
struct EvictedCopyArgs {
  const uint16_t* keys = nullptr;
  const uint16_t* values = nullptr;
  const int64_t* positions = nullptr;
  const float* scores = nullptr;
  const int32_t* evicted_counts = nullptr;
  int64_t n_kv_heads = 0, capacity = 0, row_elems = 0;
  uint16_t* host_keys = nullptr;
  uint16_t* host_values = nullptr;
  int64_t* host_positions = nullptr;
  float* host_scores = nullptr;
  int32_t* host_counts = nullptr;
};

}  // namespace longread::kernels::cuda
