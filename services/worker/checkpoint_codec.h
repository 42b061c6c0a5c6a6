// A document's checkpoint on the wire (proto/longread/v1/worker_service.proto, CheckpointPart):
// the memory snapshot as one cache/snapshot_format full record cut into slices, and the archive
// blocks recorded since the previous checkpoint as bf16 payloads with their fp32 key bounds.
// Decoding rebuilds blocks whose Put into a fresh cache::RocksDbBlockArchive (bf16) stores the
// same payload and the same representative as the first worker's archive did, so the resumed
// worker's recall is the uninterrupted one's.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/job/document_session.h"
#include "engine/memory/block_archive.h"
#include "engine/memory/recording_archive.h"
#include "longread/v1/worker_service.pb.h"

namespace longread::worker {

// Upper bound of one part's serialized size (gRPC's default receive limit is 4 MiB; parts stay
// below it with room for the framing).
inline constexpr int64_t kMaxCheckpointPartBytes = int64_t{4} << 20;

struct CheckpointStats {
  int64_t bytes = 0;  // serialized size of all parts
  int64_t snapshot_bytes = 0;
  int64_t archive_blocks = 0;
  int64_t parts = 0;
};

// The memory snapshot as one cache/snapshot_format full record (uncompressed).
std::string EncodeSnapshotRecord(const engine::MemorySnapshot& snapshot);

// Cuts checkpoint `sequence` into parts and hands them to `emit` one at a time, so that at most
// one part is held besides the record (a default-sized snapshot is ~145 MB). `blocks` are the
// ones recorded since the previous checkpoint (fp32 keys, as the memory evicted them); they come
// first, then the snapshot; the last part has `last` set. Returns false as soon as `emit` does.
// `max_part_bytes` is for tests (small parts exercise the splitting).
bool EmitCheckpoint(int64_t sequence, int64_t document_tokens, const std::string& archive_error,
                    std::string_view snapshot_record,
                    const std::vector<engine::ArchivedBlock>& blocks, int64_t head_dim,
                    const std::function<bool(const v1::CheckpointPart&)>& emit,
                    CheckpointStats* stats,
                    int64_t max_part_bytes = kMaxCheckpointPartBytes - 4096);

// The same from what a RecordingBlockArchive recorded (TakeRecordedBlocks): bf16 rows go out
// without a round trip through fp32.
bool EmitCheckpoint(int64_t sequence, int64_t document_tokens, const std::string& archive_error,
                    std::string_view snapshot_record,
                    const std::vector<engine::RecordedBlock>& blocks, int64_t head_dim,
                    const std::function<bool(const v1::CheckpointPart&)>& emit,
                    CheckpointStats* stats,
                    int64_t max_part_bytes = kMaxCheckpointPartBytes - 4096);

// EmitCheckpoint into a vector (tests).
struct EncodedCheckpoint {
  std::vector<v1::CheckpointPart> parts;
  CheckpointStats stats;
};
EncodedCheckpoint EncodeCheckpoint(int64_t sequence, const engine::SessionCheckpoint& checkpoint,
                                   const std::vector<engine::ArchivedBlock>& blocks,
                                   int64_t head_dim,
                                   int64_t max_part_bytes = kMaxCheckpointPartBytes - 4096);

// Accumulates the parts of a resume checkpoint as they arrive.
class CheckpointAssembler {
 public:
  explicit CheckpointAssembler(int64_t head_dim) : head_dim_(head_dim) {}
  // InvalidArgument for a malformed block (wrong sizes); parts after `last` are refused.
  absl::Status Add(const v1::CheckpointPart& part);
  bool complete() const { return complete_; }
  int64_t sequence() const { return sequence_; }
  int64_t bytes() const { return bytes_; }
  // Blocks in arrival order, ready to Put (see the header comment).
  std::vector<engine::ArchivedBlock>& blocks() { return blocks_; }
  // Decodes the snapshot: DataLoss for a damaged record, InvalidArgument for a delta record.
  absl::StatusOr<engine::SessionCheckpoint> Checkpoint() const;

 private:
  int64_t head_dim_;
  bool complete_ = false;
  int64_t sequence_ = 0;
  int64_t document_tokens_ = 0;
  int64_t bytes_ = 0;
  std::string snapshot_;
  std::string archive_error_;
  std::vector<engine::ArchivedBlock> blocks_;
};

// The block as shipped (exposed for tests).
v1::ArchivedBlock ToWire(const engine::ArchivedBlock& block, int64_t head_dim);
// The same wire, byte for byte, as ToWire of the widened block: a bf16 one's rows are packed as
// they are and its bounds come from them.
v1::ArchivedBlock ToWire(const engine::RecordedBlock& block, int64_t head_dim);
// fp32 keys that round to the shipped bf16 keys and whose element-wise min/max are exactly the
// shipped bounds; values are the bf16 values widened.
absl::StatusOr<engine::ArchivedBlock> FromWire(const v1::ArchivedBlock& wire, int64_t head_dim);

}  // namespace longread::worker
