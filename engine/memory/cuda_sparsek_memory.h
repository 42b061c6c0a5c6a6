// The SparseK memory of sparsek_memory.h on the GPU: the same sinks, block selection by score
// (with the task term), window, eviction, archive writes of evicted blocks, recall's
// InsertRecalled, Rewind and snapshots, for CudaLlamaModel's segment forward.
//
// What runs where, and why:
// - Device: every key and value (bf16, un-rotated keys, [kv_head][slot][head_dim] per layer), the
//   RoPE of keys at their slot positions and of queries at attention time, attention over
//   memory ∪ segment with the per-key visibility intervals, the append of the segment's keys and
//   values, the compaction after eviction (row copies into a spare buffer, then a swap) and the
//   staging of evicted rows for the archive. Keys and values are what is large (30 layers x
//   3 heads x ~3K slots x 64 x 2 x 2 bytes ≈ 66 MB): they never cross the bus while reading.
// - Device, small: the task term of each new key's score (kernels/cuda TaskTerm: the CPU's
//   AddTaskTerm in the same operation order, so the scores agree to the last bit of exp/log).
//   On the host it cost ~10 ms per layer-segment, 90% of the reading time (bench/gpu/NOTES.md).
// - Device, small: the scorer (kernels/cuda LinearScores: ScoreTokens in its operation order on
//   the bf16 attention-norm output), so only [n][G] scores cross the bus per layer.
// - Host: the block selection and exit times
//   (SelectSegmentKeys, the CPU memory's own code, on a few thousand scores per head), and each
//   slot's position and score. Computing the selection with the CPU's code on the same scores is
//   what makes both memories select the same slots.
// - Host, synchronously for now: evicted rows are downloaded (staged on the device first) and
//   put into the BlockArchive as fp32, as the CPU memory puts them; snapshots download and
//   upload every slot. Neither is overlapped with the next layer yet (issue 19, item 2).
// Not supported: MaskMode::kSoft (the CUDA attention kernel has no soft mode); Create refuses it.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/memory/block_archive.h"
#include "engine/memory/snapshot.h"
#include "engine/memory/sparsek_memory.h"
#include "engine/model/cuda_llama_model.h"
#include "engine/scorer/scorer.h"
#include "kernels/cuda/cuda_ops.h"

namespace longread::engine {

class CudaSparseKMemory : public DeviceAttentionMemory {
 public:
  // `ctx` (not owned) must outlive the memory. `scorer` may be null (every key scores 0).
  static absl::StatusOr<std::unique_ptr<CudaSparseKMemory>> Create(
      kernels::cuda::Context* ctx, const ModelConfig& model, const MemoryConfig& config,
      std::shared_ptr<const ScorerWeights> scorer);

  absl::Status AttendAndUpdate(const DeviceSegmentLayerInput& in,
                               kernels::cuda::Bf16* out) override;
  void EndSegment(int64_t n_tokens) override { next_position_ += n_tokens; }
  int64_t next_position() const override { return next_position_; }

  const MemoryConfig& config() const { return config_; }
  int64_t slot_count(int32_t layer, int32_t kv_head) const {
    return static_cast<int64_t>(meta(layer, kv_head).positions.size());
  }
  int64_t max_slot_count() const;
  // Positions of the slots (layer, kv_head) holds now, in order.
  const std::vector<int64_t>& positions(int32_t layer, int32_t kv_head) const {
    return meta(layer, kv_head).positions;
  }
  // Device bytes held (slots, spare, scratch).
  int64_t resident_bytes() const;

  // As SparseKMemory's (values go through bf16 on the device).
  void set_archive(BlockArchive* archive) { archive_ = archive; }
  const absl::Status& archive_status() const { return archive_status_; }
  void FreezeEviction() { frozen_ = true; }
  bool eviction_frozen() const { return frozen_; }
  void set_eviction_frozen(bool frozen) { frozen_ = frozen; }
  absl::StatusOr<int64_t> InsertRecalled(int32_t layer, int32_t kv_head,
                                         const std::vector<ArchivedBlock>& blocks);
  absl::Status Rewind(int64_t position);
  void SetTaskQueries(std::vector<std::vector<float>> queries, int64_t n_task);
  absl::Status ExportTo(MemorySnapshot* snapshot);
  absl::Status ImportFrom(const MemorySnapshot& snapshot);

 private:
  struct HeadMeta {
    std::vector<int64_t> positions;
    std::vector<float> scores;
  };
  CudaSparseKMemory(kernels::cuda::Context* ctx, const ModelConfig& model,
                    const MemoryConfig& config, std::shared_ptr<const ScorerWeights> scorer);
  const HeadMeta& meta(int32_t layer, int32_t g) const { return meta_[layer * n_kv_heads_ + g]; }
  HeadMeta& meta(int32_t layer, int32_t g) { return meta_[layer * n_kv_heads_ + g]; }
  // Grows every per-head buffer to hold `slots` rows (held slots are kept).
  absl::Status EnsureCapacity(int64_t slots);
  absl::Status TokenScores(const DeviceSegmentLayerInput& in);
  absl::Status ArchiveEvicted(const DeviceSegmentLayerInput& in);

  kernels::cuda::Context* ctx_;
  ModelConfig model_;
  MemoryConfig config_;
  std::shared_ptr<const ScorerWeights> scorer_;
  int32_t n_kv_heads_ = 0;
  int64_t next_position_ = 0;
  bool frozen_ = false;
  BlockArchive* archive_ = nullptr;
  absl::Status archive_status_;
  std::vector<std::vector<float>> task_queries_;
  int64_t n_task_ = 0;
  std::vector<HeadMeta> meta_;  // [layer][kv_head]

  int64_t capacity_ = 0;                                    // rows per head in every buffer below
  std::vector<kernels::cuda::DeviceBuffer> keys_, values_;  // per layer: [G][capacity][d]
  kernels::cuda::DeviceBuffer spare_keys_, spare_values_;   // compaction targets, then swapped
  kernels::cuda::DeviceBuffer rotated_;                     // [G][capacity][d], one layer's
  kernels::cuda::DeviceBuffer staging_keys_, staging_values_;  // evicted rows
  kernels::cuda::DeviceBuffer from_, until_;                   // int32 [G][n_keys]
  kernels::cuda::DeviceBuffer rope_positions_;                 // int64 [G][n_keys]
  kernels::cuda::DeviceBuffer query_positions_;                // int64 [n][G]
  kernels::cuda::DeviceBuffer src_rows_, dst_rows_;            // int32 row lists
  std::vector<kernels::cuda::DeviceBuffer> task_queries_dev_;  // per layer, fp32
  kernels::cuda::DeviceBuffer task_logits_, task_lse_, task_out_;
  kernels::cuda::DeviceBuffer scorer_w_, scorer_b_, scorer_slope_;  // fp32, all layers

  // Host scratch reused across layers and segments.
  struct Scratch {
    std::vector<float> token_scores, x_norm, keys;
    std::vector<uint16_t> bits;
    std::vector<int32_t> from, until, src_rows, dst_rows, evicted_rows;
    std::vector<uint8_t> keep;
    std::vector<int64_t> rope_positions, query_positions, slots;
    BlockSelection sel;
  } s_;
};

}  // namespace longread::engine
