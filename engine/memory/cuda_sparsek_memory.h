// The SparseK memory of sparsek_memory.h on the GPU: the same sinks, block selection by score
// (with the task term), window, eviction, archive writes of evicted blocks, recall's
// InsertRecalled, Rewind and snapshots, for CudaLlamaModel's segment forward.
//
// What runs where, and why:
// - Device: every key and value (bf16, un-rotated keys, [kv_head][slot][head_dim] per layer), and
//   each slot's position and score; the scorer and the task term of each new key's score
//   (kernels/cuda LinearScores and TaskTerm, in the host code's operation order, so the scores
//   agree to the last bit of exp/log); the block selection, exit times and visibility intervals
//   (kernels/cuda SelectSegmentKeys, the twin of the CPU's SelectSegmentKeys: given the same
//   scores it selects the same slots); the append, the RoPE of keys at their slot positions and
//   of queries, attention over memory ∪ segment, and the fold (kept rows compacted into spare
//   buffers, then swapped). A layer-segment enqueues its work and returns: the host waits for
//   nothing per layer. It learns each head's slot count by an asynchronous copy and an event,
//   needed only at that layer's next segment (to size the launches), by when it has landed.
// - Host, lazily: the slots' positions and scores (positions(), snapshots, recall) are
//   downloaded when asked for, not per layer.
// - Archive (when set): evicted rows and their positions and scores are staged on the device
//   (two staging areas, alternating by layer), then a kernel on a side stream copies exactly the
//   evicted rows into pinned host memory while the next layer runs. After the segment a writer
//   thread waits for the segment's copies and puts the blocks into the BlockArchive, per layer and
//   head in key order, as the CPU memory puts them, while the next segment reads; the host
//   buffers alternate by segment. archive_status() (and every method that reads or changes the
//   slots on the host) waits for the puts queued so far: the archive then holds exactly what the
//   CPU memory's would.
// Not supported: MaskMode::kSoft (the CUDA attention kernel has no soft mode); Create refuses it.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
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

  ~CudaSparseKMemory() override;
  absl::Status AttendAndUpdate(const DeviceSegmentLayerInput& in,
                               kernels::cuda::Bf16* out) override;
  void EndSegment(int64_t n_tokens) override;
  int64_t next_position() const override { return next_position_; }
  // Its context's stream: a memory with a context of its own overlaps others in a batched pass.
  void* stream() const override { return ctx_->stream(); }

  const MemoryConfig& config() const { return config_; }
  int64_t slot_count(int32_t layer, int32_t kv_head) const;
  int64_t max_slot_count() const;
  // Positions of the slots (layer, kv_head) holds now, in order (downloaded on first use after
  // the layer changed).
  const std::vector<int64_t>& positions(int32_t layer, int32_t kv_head) const {
    return meta(layer, kv_head).positions;
  }
  // Device bytes held (slots, spare, scratch).
  int64_t resident_bytes() const;

  // As SparseKMemory's (values go through bf16 on the device), but the puts of a segment happen
  // after it, on a writer thread: the archive must outlive the memory (the destructor finishes
  // the queued puts), and is read only after archive_status() (or any method below that
  // changes the slots) has waited for them.
  void set_archive(BlockArchive* archive);
  // Waits for the archive puts queued so far.
  const absl::Status& archive_status() const;
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
  // One segment's evicted rows in pinned host memory, [layer][G][capacity] (rows of head_dim).
  struct ArchiveSet {
    kernels::cuda::PinnedBuffer keys, values, positions, scores, counts;
    std::vector<int32_t> layers;  // staged this segment, in order
    kernels::cuda::Event copied;  // on the side stream, after the segment's last copy
    bool busy = false;            // handed to the writer, not put yet (guarded by mu_)
  };
  CudaSparseKMemory(kernels::cuda::Context* ctx, const ModelConfig& model,
                    const MemoryConfig& config, std::shared_ptr<const ScorerWeights> scorer);
  absl::Status Init();
  const HeadMeta& meta(int32_t layer, int32_t g) const;
  // The host's copy of a layer's slot counts, and of its slots' positions and scores.
  void SyncCounts(int32_t layer) const;
  void SyncMeta(int32_t layer) const;
  absl::Status UploadCounts(int32_t layer);
  // Grows every per-head buffer to hold `slots` rows (held slots are kept).
  absl::Status EnsureCapacity(int64_t slots);
  absl::Status EnsureArchiveSets();
  absl::Status TokenScores(const DeviceSegmentLayerInput& in);
  absl::Status StageEvicted(int32_t layer, int32_t ring);
  void HandOverSegment();
  void DrainArchive() const;
  bool ArchiveOk() const;
  void WriterLoop();
  void PutLayer(const ArchiveSet& set, int32_t layer);

  kernels::cuda::Context* ctx_;
  ModelConfig model_;
  MemoryConfig config_;
  std::shared_ptr<const ScorerWeights> scorer_;
  int32_t n_kv_heads_ = 0;
  int64_t next_position_ = 0;
  bool frozen_ = false;
  BlockArchive* archive_ = nullptr;
  mutable absl::Status archive_status_;
  std::vector<std::vector<float>> task_queries_;
  int64_t n_task_ = 0;

  // Host copies, refreshed lazily from the device.
  mutable std::vector<int64_t> counts_;          // [layer][kv_head]
  mutable std::vector<uint8_t> counts_pending_;  // per layer: an asynchronous copy is in flight
  mutable std::vector<HeadMeta> meta_;           // [layer][kv_head]
  mutable std::vector<uint8_t> meta_valid_;      // per layer
  kernels::cuda::DeviceBuffer counts_dev_;       // int32 [layer][kv_head]
  kernels::cuda::PinnedBuffer counts_pinned_;
  std::vector<kernels::cuda::Event> count_events_;  // per layer

  int64_t capacity_ = 0;                                    // rows per head in every buffer below
  std::vector<kernels::cuda::DeviceBuffer> keys_, values_;  // per layer: [G][capacity][d]
  std::vector<kernels::cuda::DeviceBuffer> positions_, scores_;  // per layer: [G][capacity]
  kernels::cuda::DeviceBuffer spare_keys_, spare_values_;        // fold targets, then swapped
  kernels::cuda::DeviceBuffer spare_positions_, spare_scores_;
  kernels::cuda::DeviceBuffer rotated_;  // [G][capacity][d], one layer's
  // Selection outputs and scratch, [G][capacity] each (n_keys <= capacity).
  kernels::cuda::DeviceBuffer from_, until_, keep_, rope_positions_, query_positions_, dst_row_;
  kernels::cuda::DeviceBuffer key_cand_, cand_join_, cand_first_, cand_exit_, cand_score_,
      cand_count_;
  kernels::cuda::DeviceBuffer token_scores_;                   // fp32 [n][G]
  kernels::cuda::DeviceBuffer src_rows_, dst_rows_;            // int32 row lists (recall)
  std::vector<kernels::cuda::DeviceBuffer> task_queries_dev_;  // per layer, fp32
  kernels::cuda::DeviceBuffer task_logits_, task_lse_;
  kernels::cuda::DeviceBuffer scorer_w_, scorer_b_, scorer_slope_;  // fp32, all layers

  // The archive's path off the critical path: two device staging areas (by layer parity), a
  // side stream copying them into two host sets (by segment parity), a writer thread.
  struct Staging {
    kernels::cuda::DeviceBuffer keys, values, positions, scores, counts;
    kernels::cuda::Event staged, freed;  // main -> side, side -> main
    bool used = false;
  };
  Staging staging_[2];
  int64_t staged_layers_ = 0;
  std::vector<int32_t> segment_layers_;  // staged in the segment being read
  kernels::cuda::SideStream side_;
  ArchiveSet sets_[2];
  int current_set_ = 0;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::deque<int> jobs_;  // sets handed to the writer, in order
  int in_flight_ = 0;     // jobs queued or being put
  bool stop_ = false;
  absl::Status writer_status_;
  std::thread writer_;
  // The writer thread's blocks of one layer, reused: their vectors keep their capacity, so
  // building a layer's blocks allocates nothing once the first segments have run.
  std::vector<ArchivedBlock> layer_blocks_;

  // Host scratch reused across calls.
  struct Scratch {
    std::vector<uint16_t> bits;
    std::vector<int32_t> src_rows, dst_rows;
  } s_;
};

}  // namespace longread::engine
