// A BlockArchive that forwards to another and keeps a copy of every block put since the last
// TakeRecorded(): what a worker ships with each checkpoint so that another worker can rebuild the
// document's archive (DocumentSession, engine/job/document_session.h).
//
// Why replay gives the same recall: an archive's state is a function of the sequence of Puts
// (InMemoryBlockArchive keeps them in put order; cache::RocksDbBlockArchive's cap decisions
// depend only on the blocks and their order, not on batching or timing). A resumed reader puts,
// after the checkpoint, exactly the blocks the uninterrupted one put after it (reading from a
// snapshot is bit-identical), so replaying the recorded puts in order into a fresh archive of the
// same kind and options, then resuming, yields the same sequence, hence the same archive.
// Blocks put after the last shipped checkpoint and before a crash are simply put again.
//
// On the resuming side, replay into the INNER archive, then wrap it in a new recorder for the
// next checkpoints: replaying through a recorder would ship the old blocks again, and a block
// put twice can come back after the RocksDB archive's cap deleted it.
//
// Size: everything the memory evicts is recorded, ~(12 + 8 * head_dim) bytes per token per
// (layer, KV head) in fp32, i.e. about one segment's tokens x n_layers x n_kv_heads x 524 bytes
// per segment read for head_dim 64 (~97 MB per 2,048-token segment of the default model). Take
// them after every checkpoint; the sum over a document is every evicted block, uncapped.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "engine/memory/block_archive.h"

namespace longread::engine {

// A recorded block as it was put: fp32 (`block` whole), or bf16 rows (PutRows: `block` without its
// keys and values, which are in `keys16`/`values16`).
struct RecordedBlock {
  ArchivedBlock block;
  std::vector<uint16_t> keys16, values16;
  bool is_bf16() const { return !keys16.empty() || !values16.empty(); }
  Bf16BlockRows rows() const;  // for a bf16 one: a view of it
  ArchivedBlock Widened() &&;  // the fp32 block
};

class RecordingBlockArchive : public BlockArchive {
 public:
  // `inner` is not owned and must outlive this.
  explicit RecordingBlockArchive(BlockArchive* inner) : inner_(inner) {}

  // Forwards to the inner archive; records the block only if the inner Put succeeded (a failed
  // Put stops the memory's archiving, and the checkpoint then carries the error instead).
  absl::Status Put(ArchivedBlock block) override;
  absl::Status PutCopyOf(const ArchivedBlock& block) override;
  // The inner archive's batch put; records the blocks it put.
  absl::Status PutBatch(std::span<const ArchivedBlock> blocks, size_t* n_put = nullptr) override;
  // The same for bf16 rows: recorded as bf16 (half the bytes, a copy instead of a widening on the
  // putting thread) and widened by TakeRecorded.
  absl::Status PutRows(std::span<const Bf16BlockRows> blocks, size_t* n_put = nullptr) override;
  absl::StatusOr<std::vector<ArchivedBlock>> Recall(int32_t layer, int32_t kv_head,
                                                    std::span<const float> queries,
                                                    int64_t n_queries, int64_t r) override {
    return inner_->Recall(layer, kv_head, queries, n_queries, r);
  }
  absl::StatusOr<std::vector<ArchivedBlock>> Fetch(int32_t layer, int32_t kv_head,
                                                   std::span<const int64_t> block_ids) override {
    return inner_->Fetch(layer, kv_head, block_ids);
  }
  int64_t stored_bytes() const override { return inner_->stored_bytes(); }

  // The blocks put since the previous call, in put order (fp32, whichever way they were put);
  // recording starts afresh. Take them
  // right after DocumentSession::Checkpoint (same thread, under the same lock as the reading):
  // together they are the checkpoint's archive delta.
  std::vector<ArchivedBlock> TakeRecorded();
  // The same as they were put, bf16 rows not widened (the checkpoint codec ships bf16).
  std::vector<RecordedBlock> TakeRecordedBlocks();
  // Bytes of keys, values, scores and positions recorded and not yet taken, as TakeRecorded will
  // return them (fp32; bf16 rows hold half their keys' and values' share meanwhile).
  int64_t recorded_bytes() const;
  int64_t recorded_blocks() const;

 private:
  BlockArchive* inner_;
  mutable absl::Mutex mu_;
  std::vector<RecordedBlock> recorded_ ABSL_GUARDED_BY(mu_);
  int64_t recorded_bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

// Puts `blocks` into `archive` in order (rebuilding a document's archive from its checkpoints'
// deltas, oldest delta first). Stops at the first error.
absl::Status ReplayBlocks(std::span<const ArchivedBlock> blocks, BlockArchive* archive);

// Bytes one block holds in RAM (positions, scores, keys, values).
int64_t ArchivedBlockBytes(const ArchivedBlock& block);

// A self-describing little-endian encoding of a list of blocks for shipping a checkpoint's delta
// (fp32, exact: a replay from the decoded blocks equals one from the originals). Layout:
// "LRBD", u32 version 1, u32 head_dim, u64 n_blocks, then per block i32 layer, i32 kv_head,
// i64 block_id, u32 n, i64 positions[n], f32 scores[n], f32 keys[n*head_dim],
// f32 values[n*head_dim]; then u64 FNV-1a 64 of all bytes before it. Size: 28 bytes + per block
// 20 + n * (12 + 8 * head_dim) bytes.
std::string EncodeArchivedBlocks(std::span<const ArchivedBlock> blocks, int64_t head_dim);
// InvalidArgument / DataLoss for a malformed or damaged encoding.
absl::StatusOr<std::vector<ArchivedBlock>> DecodeArchivedBlocks(std::string_view bytes,
                                                                int64_t head_dim);

}  // namespace longread::engine
