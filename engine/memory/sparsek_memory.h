// The fixed-size recurrent memory of DESIGN.md §4, per layer and KV head: the first `sinks`
// tokens of the document, the `top_k` best-scored older keys, and the most recent keys of the
// window. A dense KV cache is the same memory with a budget that never evicts.
//
// Exactness inside a segment: candidates for the top-k only ever join (a key joins when it leaves
// the window; memory keys are there from the start), so each key is visible to a contiguous range
// of the segment's queries. The memory computes those ranges with kernels::TopKExitTimes and
// hands them to one attention pass over memory ∪ segment. Keys are stored before RoPE; positions
// are assigned when attending (slot order by default, so they stay inside the trained context
// however long the document is).
#pragma once

#include <cstdint>
#include <limits>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "engine/memory/block_archive.h"
#include "engine/memory/snapshot.h"
#include "engine/model/attention_memory.h"
#include "engine/model_files/model_config.h"
#include "engine/scorer/scorer.h"

namespace longread::engine {

enum class PositionMode {
  kSlotOrder,  // position = index among the slots the query can see (default)
  kOriginal,   // position = the token's position in the document
};

// How a block's score comes from its tokens' scores.
enum class BlockScore { kMax, kMean };

// How selected keys enter attention (DESIGN.md §4).
enum class MaskMode {
  // Selected keys' values are used as they are: for a scorer not trained through the operator
  // (the calibrated one).
  kHard,
  // The trained mode: a selected block's values are scaled by its SparseK mask value
  // clip(z − τ_i, 0, 1) for query i, where τ_i makes the masks of the candidates query i can see
  // sum to k/B blocks. The candidates are those the fixed memory holds (memory ∪ segment): keys
  // evicted in earlier segments no longer enter τ — the price of a memory of fixed size. Sinks
  // and window keys are unscaled; with a budget that covers the document every mask is 1 and
  // this is dense attention again.
  kSoft,
};

// The task term added to a key's score (when the runner has a task).
enum class TaskScore {
  // task_weight x max over the task's query vectors of q·k/sqrt(d).
  kMaxDot,
  // task_weight x log of the attention mass the task's queries would give the key within its own
  // segment, relative to uniform: log(mean_t softmax_j(q_t·k_j/sqrt(d)) x L). A raw dot product
  // lets queries with large norms and keys that every query likes (punctuation, newlines) decide;
  // normalizing per query, as attention does, is what DESIGN.md §4 measured to single out the
  // fact a question asks for.
  kSegmentMass,
};

struct MemoryConfig {
  // Defaults fit the default model's 8,192-token context with a 2,048-token segment:
  // s + k + w + L = 4 + 2048 + 1024 + 2048 < 8192.
  int32_t sinks = 4;
  int64_t top_k = 2048;
  int64_t window = 1024;  // the most recent keys a query sees, itself included (>= 1)
  PositionMode position_mode = PositionMode::kSlotOrder;
  // Selection granularity B: the top-k keeps whole blocks of B consecutive positions (top_k / B
  // blocks). B = 1 is token selection. Keeping whole blocks is what lets the model copy a fact
  // (a 5-digit key is 5 tokens; DESIGN.md §4).
  int64_t block_tokens = 1;
  BlockScore block_score = BlockScore::kMax;
  // Weight of the task term: score += task_weight * max over the task's query vectors of
  // q·k / sqrt(d) (un-rotated), when the runner was given a task. 0 disables it.
  float task_weight = 1.0f;
  TaskScore task_score = TaskScore::kSegmentMass;
  MaskMode mask_mode = MaskMode::kHard;

  // A memory that never evicts: dense causal attention with a KV cache.
  static MemoryConfig Dense() {
    MemoryConfig c;
    c.top_k = std::numeric_limits<int32_t>::max() / 4;
    c.window = 1;
    c.position_mode = PositionMode::kOriginal;
    return c;
  }
  bool is_dense() const { return top_k >= std::numeric_limits<int32_t>::max() / 4; }
  absl::Status Validate() const;
  // Stable across runs and machines: part of a snapshot's identity.
  uint64_t Hash() const;
};

// The selection of one (layer, KV head) for one segment: for its M held slots (positions,
// scores) followed by the segment's n keys (positions P.., scores token_scores[j *
// token_stride]), each key's visibility [from, until) among the segment's queries and whether it
// stays (keep). Shared by SparseKMemory and the device memory (cuda_sparsek_memory.h), so both
// select the same slots from the same scores.
struct BlockSelection {
  std::vector<int32_t> join, exit, key_block, block_size;  // per candidate block; per key
  std::vector<float> scores;                               // per candidate block
};
absl::Status SelectSegmentKeys(const MemoryConfig& config, bool frozen, int64_t P, int64_t n,
                               std::span<const int64_t> positions, std::span<const float> scores,
                               const float* token_scores, int64_t token_stride, int32_t* from,
                               int32_t* until, uint8_t* keep, BlockSelection& sel);

// Adds the task term (MemoryConfig::task_weight, task_score) of `task_queries` ([n_task][n_heads]
// [head_dim], un-rotated, one layer) to scores[j][g] of the n keys k ([n][n_kv_heads][head_dim],
// un-rotated). logits and lse are scratch.
void AddTaskTerm(const MemoryConfig& config, const ModelConfig& model, const float* task_queries,
                 int64_t n_task, const float* k, int64_t n, float* scores,
                 std::vector<float>& logits, std::vector<float>& lse);

class SparseKMemory : public AttentionMemory {
 public:
  // `scorer` may be null: every key then scores 0 and ties keep the oldest keys.
  SparseKMemory(const ModelConfig& model, const MemoryConfig& config,
                std::shared_ptr<const ScorerWeights> scorer);

  absl::Status AttendAndUpdate(const SegmentLayerInput& in, float* out,
                               kernels::ThreadPool* pool) override;
  void EndSegment(int64_t n_tokens) override { next_position_ += n_tokens; }
  int64_t next_position() const override { return next_position_; }

  const MemoryConfig& config() const { return config_; }
  // Slots currently held by (layer, kv_head).
  int64_t slot_count(int32_t layer, int32_t kv_head) const;
  // Bytes of keys, values, scores and positions held now.
  int64_t resident_bytes() const;

  // The memory as plain data (runner fields left at their defaults) and back.
  void ExportTo(MemorySnapshot* snapshot) const;

  // Evicted blocks go to `archive` (not owned; null: they are dropped). A failing archive is
  // remembered in archive_status() and archiving stops; reading goes on.
  void set_archive(BlockArchive* archive) { archive_ = archive; }
  const absl::Status& archive_status() const { return archive_status_; }
  // The answer phase is short: from now on nothing is evicted (the memory grows by the prompt
  // and the answer only) and every slot held stays visible.
  void FreezeEviction() { frozen_ = true; }
  bool eviction_frozen() const { return frozen_; }
  void set_eviction_frozen(bool frozen) { frozen_ = frozen; }
  // The slots (layer, kv_head) holds now, keys before RoPE.
  const HeadMemorySnapshot& held(int32_t layer, int32_t kv_head) const {
    return heads_[layer * n_kv_heads_ + kv_head];
  }
  // Puts recalled blocks back among (layer, kv_head)'s slots, in position order; positions
  // already held are skipped. Returns the number of slots added.
  int64_t InsertRecalled(int32_t layer, int32_t kv_head, const std::vector<ArchivedBlock>& blocks);
  int64_t max_slot_count() const;
  // Forgets every slot at `position` or later and reads on from there: undoes a frozen read
  // (which only appends). FailedPrecondition unless eviction is frozen (or the memory dense).
  absl::Status Rewind(int64_t position);

  // Query vectors of the job's task per layer ([n_task][n_heads][head_dim], un-rotated), used to
  // add a task term to the score of every key created from now on.
  void SetTaskQueries(std::vector<std::vector<float>> queries, int64_t n_task);
  const std::vector<std::vector<float>>& task_queries() const { return task_queries_; }
  absl::Status ImportFrom(const MemorySnapshot& snapshot);

 private:
  HeadMemorySnapshot& head(int32_t layer, int32_t g) { return heads_[layer * n_kv_heads_ + g]; }
  void AddTaskScores(const SegmentLayerInput& in, float* scores);
  void ArchiveEvicted(const SegmentLayerInput& in, int32_t g, int64_t M, const uint8_t* keep);

  ModelConfig model_;
  MemoryConfig config_;
  std::shared_ptr<const ScorerWeights> scorer_;
  int32_t n_kv_heads_ = 0;
  int64_t next_position_ = 0;
  std::vector<HeadMemorySnapshot> heads_;
  // Per (layer, KV head), aligned with its slots: the keys rotated at `positions` (RoPE
  // positions, -1 = not rotated yet). A cache, not state: never exported, rebuilt when slots
  // change under it (import, recall).
  struct RotatedKeys {
    std::vector<float> keys;
    std::vector<int64_t> positions;
  };
  std::vector<RotatedKeys> rotated_;
  std::vector<std::vector<float>> task_queries_;  // per layer
  BlockArchive* archive_ = nullptr;
  absl::Status archive_status_;
  bool frozen_ = false;
  int64_t n_task_ = 0;

  // Scratch reused across layers and segments (no allocation in steady state).
  struct Scratch {
    std::vector<float> scores, token_scores;
    std::vector<const float*> k_heads, v_heads;
    std::vector<int32_t> from, until, cand;
    BlockSelection sel;
    std::vector<int64_t> rope_pos, query_pos;
    std::vector<float> q_group;
    std::vector<float> task_logits, task_lse;
    std::vector<float> gate_score, tau;  // soft mask mode
    std::vector<int32_t> gate_from;
    std::vector<double> tau_prefix;
    std::vector<uint8_t> keep;
  } s_;
};

}  // namespace longread::engine
