#include "services/worker/checkpoint_codec.h"

#include <algorithm>
#include <cstring>
#include <span>
#include <utility>

#include "absl/strings/str_cat.h"
#include "cache/snapshot_format.h"

namespace longread::worker {
namespace {

// Round to nearest even, NaN kept a NaN: exactly cache::RocksDbBlockArchive's rounding, which the
// reconstruction in FromWire relies on.
uint16_t ToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

float FromBf16(uint16_t h) {
  const uint32_t bits = uint32_t{h} << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

std::string PackBf16(const std::vector<float>& v) {
  std::string out(v.size() * 2, '\0');
  for (size_t i = 0; i < v.size(); ++i) {
    const uint16_t h = ToBf16(v[i]);
    out[2 * i] = static_cast<char>(h & 0xff);
    out[2 * i + 1] = static_cast<char>(h >> 8);
  }
  return out;
}

// Packed as PackBf16 packs their widened values: the bits themselves, a NaN made quiet.
std::string PackBf16(std::span<const uint16_t> v) {
  std::string out(v.size() * 2, '\0');
  for (size_t i = 0; i < v.size(); ++i) {
    const uint16_t h = (v[i] & 0x7fffu) > 0x7f80u ? static_cast<uint16_t>(v[i] | 0x40u) : v[i];
    out[2 * i] = static_cast<char>(h & 0xff);
    out[2 * i + 1] = static_cast<char>(h >> 8);
  }
  return out;
}

uint16_t Bf16At(const std::string& bytes, size_t i) {
  return static_cast<uint16_t>(
      static_cast<uint8_t>(bytes[2 * i]) |
      (static_cast<uint16_t>(static_cast<uint8_t>(bytes[2 * i + 1])) << 8));
}

}  // namespace

v1::ArchivedBlock ToWire(const engine::ArchivedBlock& block, int64_t head_dim) {
  v1::ArchivedBlock wire;
  wire.set_layer(block.layer);
  wire.set_kv_head(block.kv_head);
  wire.set_block_id(block.block_id);
  wire.mutable_positions()->Add(block.positions.begin(), block.positions.end());
  wire.mutable_scores()->Add(block.scores.begin(), block.scores.end());
  wire.set_keys_bf16(PackBf16(block.keys));
  wire.set_values_bf16(PackBf16(block.values));
  const engine::BlockBounds bounds = engine::ComputeBounds(block, head_dim);
  wire.mutable_key_min()->Add(bounds.key_min.begin(), bounds.key_min.end());
  wire.mutable_key_max()->Add(bounds.key_max.begin(), bounds.key_max.end());
  return wire;
}

v1::ArchivedBlock ToWire(const engine::RecordedBlock& recorded, int64_t head_dim) {
  if (!recorded.is_bf16()) return ToWire(recorded.block, head_dim);
  const engine::Bf16BlockRows rows = recorded.rows();
  v1::ArchivedBlock wire;
  wire.set_layer(rows.layer);
  wire.set_kv_head(rows.kv_head);
  wire.set_block_id(rows.block_id);
  wire.mutable_positions()->Add(rows.positions.begin(), rows.positions.end());
  wire.mutable_scores()->Add(rows.scores.begin(), rows.scores.end());
  wire.set_keys_bf16(PackBf16(rows.keys));
  wire.set_values_bf16(PackBf16(rows.values));
  const engine::BlockBounds bounds = engine::ComputeBounds(rows, head_dim);
  wire.mutable_key_min()->Add(bounds.key_min.begin(), bounds.key_min.end());
  wire.mutable_key_max()->Add(bounds.key_max.begin(), bounds.key_max.end());
  return wire;
}

absl::StatusOr<engine::ArchivedBlock> FromWire(const v1::ArchivedBlock& wire, int64_t head_dim) {
  const size_t n = static_cast<size_t>(wire.positions_size());
  const size_t elements = n * static_cast<size_t>(head_dim);
  if (n == 0 || static_cast<size_t>(wire.scores_size()) != n ||
      wire.keys_bf16().size() != 2 * elements || wire.values_bf16().size() != 2 * elements ||
      wire.key_min_size() != head_dim || wire.key_max_size() != head_dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint: malformed archive block (layer ", wire.layer(), ", head ", wire.kv_head(),
        ", block ", wire.block_id(), "): ", n, " positions, ", wire.scores_size(), " scores, ",
        wire.keys_bf16().size(), " key bytes, ", wire.values_bf16().size(), " value bytes, ",
        wire.key_min_size(), "/", wire.key_max_size(), " bounds for head_dim ", head_dim));
  }
  engine::ArchivedBlock block;
  block.layer = wire.layer();
  block.kv_head = wire.kv_head();
  block.block_id = wire.block_id();
  block.positions.assign(wire.positions().begin(), wire.positions().end());
  block.scores.assign(wire.scores().begin(), wire.scores().end());
  block.keys.resize(elements);
  block.values.resize(elements);
  for (size_t i = 0; i < elements; ++i) {
    block.keys[i] = FromBf16(Bf16At(wire.keys_bf16(), i));
    block.values[i] = FromBf16(Bf16At(wire.values_bf16(), i));
  }
  // Put the fp32 extremes back where they rounded to: every key of the extreme's bf16 bucket
  // becomes the extreme itself (it rounds to the same bf16, so the stored payload is unchanged),
  // and every other key lies strictly inside (rounding is monotonic). With one bucket for both,
  // the first key takes the minimum and the rest the maximum.
  for (int64_t e = 0; e < head_dim; ++e) {
    const float lo = wire.key_min(static_cast<int>(e));
    const float hi = wire.key_max(static_cast<int>(e));
    const uint16_t lo_bucket = ToBf16(lo), hi_bucket = ToBf16(hi);
    bool first = true;
    for (size_t t = 0; t < n; ++t) {
      float& k = block.keys[t * head_dim + e];
      const uint16_t bucket = Bf16At(wire.keys_bf16(), t * head_dim + e);
      if (bucket == lo_bucket && (first || bucket != hi_bucket)) {
        k = lo;
        first = false;
      } else if (bucket == hi_bucket) {
        k = hi;
      }
    }
  }
  return block;
}

std::string EncodeSnapshotRecord(const engine::MemorySnapshot& snapshot) {
  return cache::EncodeFullRecord(snapshot, cache::ContentHash(snapshot), cache::EncodeOptions{});
}

namespace {

template <typename Block>
bool EmitBlocksAndSnapshot(int64_t sequence, int64_t document_tokens,
                           const std::string& archive_error, std::string_view snapshot_record,
                           const std::vector<Block>& blocks, int64_t head_dim,
                           const std::function<bool(const v1::CheckpointPart&)>& emit,
                           CheckpointStats* stats, int64_t max_part_bytes) {
  *stats = CheckpointStats{};
  stats->snapshot_bytes = static_cast<int64_t>(snapshot_record.size());
  stats->archive_blocks = static_cast<int64_t>(blocks.size());
  v1::CheckpointPart part;
  auto reset = [&] {
    part.Clear();
    part.set_sequence(sequence);
    part.set_document_tokens(document_tokens);
    part.set_archive_error(archive_error);
  };
  auto send = [&] {
    stats->bytes += static_cast<int64_t>(part.ByteSizeLong());
    ++stats->parts;
    return emit(part);
  };
  const int64_t header = 64 + static_cast<int64_t>(archive_error.size());
  reset();
  int64_t used = header;
  for (const Block& block : blocks) {
    v1::ArchivedBlock wire = ToWire(block, head_dim);
    const int64_t size = static_cast<int64_t>(wire.ByteSizeLong()) + 8;
    if (used + size > max_part_bytes && part.archive_blocks_size() > 0) {
      if (!send()) return false;
      reset();
      used = header;
    }
    *part.add_archive_blocks() = std::move(wire);
    used += size;
  }
  size_t at = 0;
  while (at < snapshot_record.size()) {
    int64_t room = max_part_bytes - used - 16;
    if (room < (int64_t{64} << 10)) {  // not worth a slice: start a part
      if (!send()) return false;
      reset();
      used = header;
      room = max_part_bytes - used - 16;
    }
    const size_t take = std::min(snapshot_record.size() - at, static_cast<size_t>(room));
    part.mutable_snapshot()->append(snapshot_record.data() + at, take);
    used += static_cast<int64_t>(take);
    at += take;
  }
  part.set_last(true);
  return send();
}

}  // namespace

bool EmitCheckpoint(int64_t sequence, int64_t document_tokens, const std::string& archive_error,
                    std::string_view snapshot_record,
                    const std::vector<engine::ArchivedBlock>& blocks, int64_t head_dim,
                    const std::function<bool(const v1::CheckpointPart&)>& emit,
                    CheckpointStats* stats, int64_t max_part_bytes) {
  return EmitBlocksAndSnapshot(sequence, document_tokens, archive_error, snapshot_record, blocks,
                               head_dim, emit, stats, max_part_bytes);
}

bool EmitCheckpoint(int64_t sequence, int64_t document_tokens, const std::string& archive_error,
                    std::string_view snapshot_record,
                    const std::vector<engine::RecordedBlock>& blocks, int64_t head_dim,
                    const std::function<bool(const v1::CheckpointPart&)>& emit,
                    CheckpointStats* stats, int64_t max_part_bytes) {
  return EmitBlocksAndSnapshot(sequence, document_tokens, archive_error, snapshot_record, blocks,
                               head_dim, emit, stats, max_part_bytes);
}

EncodedCheckpoint EncodeCheckpoint(int64_t sequence, const engine::SessionCheckpoint& checkpoint,
                                   const std::vector<engine::ArchivedBlock>& blocks,
                                   int64_t head_dim, int64_t max_part_bytes) {
  EncodedCheckpoint out;
  EmitCheckpoint(
      sequence, checkpoint.document_tokens_consumed, checkpoint.archive_error,
      EncodeSnapshotRecord(checkpoint.memory), blocks, head_dim,
      [&](const v1::CheckpointPart& part) {
        out.parts.push_back(part);
        return true;
      },
      &out.stats, max_part_bytes);
  return out;
}

absl::Status CheckpointAssembler::Add(const v1::CheckpointPart& part) {
  if (complete_) {
    return absl::InvalidArgumentError("checkpoint: a part after the one marked last");
  }
  bytes_ += static_cast<int64_t>(part.ByteSizeLong());
  for (const v1::ArchivedBlock& wire : part.archive_blocks()) {
    auto block = FromWire(wire, head_dim_);
    if (!block.ok()) return block.status();
    blocks_.push_back(std::move(*block));
  }
  snapshot_.append(part.snapshot());
  if (!part.archive_error().empty()) archive_error_ = part.archive_error();
  sequence_ = part.sequence();
  document_tokens_ = part.document_tokens();
  complete_ = part.last();
  return absl::OkStatus();
}

absl::StatusOr<engine::SessionCheckpoint> CheckpointAssembler::Checkpoint() const {
  if (!complete_) return absl::InvalidArgumentError("checkpoint: the last part never came");
  if (snapshot_.empty()) return absl::InvalidArgumentError("checkpoint: no snapshot");
  auto record = cache::DecodeRecord(snapshot_);
  if (!record.ok()) {
    return absl::DataLossError(absl::StrCat("checkpoint snapshot: ", record.status().message()));
  }
  if (record->kind != cache::RecordKind::kFull) {
    return absl::InvalidArgumentError("checkpoint: the snapshot is a delta record, not a full one");
  }
  if (cache::ContentHash(record->state) != record->content_hash) {
    return absl::DataLossError("checkpoint snapshot: content hash mismatch");
  }
  engine::SessionCheckpoint checkpoint;
  checkpoint.memory = std::move(record->state);
  checkpoint.document_tokens_consumed = document_tokens_;
  checkpoint.archive_error = archive_error_;
  return checkpoint;
}

}  // namespace longread::worker
