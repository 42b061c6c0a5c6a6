// The on-disk encoding of memory snapshots (see cache/FORMAT.md): full and delta records, the
// per-document head record, shape validation and delta application. Pure functions over bytes;
// RocksDB is not involved here.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/memory/snapshot.h"

namespace longread::cache {

inline constexpr uint32_t kRecordFormatVersion = 1;
inline constexpr uint32_t kHeadFormatVersion = 1;
inline constexpr size_t kRecordHeaderBytes = 40;

enum class RecordKind : uint8_t { kFull = 1, kDelta = 2 };

// Compression of a record's payload. The payload is mostly fp32, whose mantissa bytes are noise;
// `shuffle` regroups the bytes of every 32-bit word into four planes first so that the
// sign/exponent plane compresses (see bench/cache and FORMAT.md for what it buys).
enum class Codec : uint8_t { kNone = 0, kLz4 = 1, kZstd = 2 };

struct EncodeOptions {
  Codec codec = Codec::kNone;
  bool shuffle = false;
  int zstd_level = 1;
};

// A decoded record. For kFull, `state` is a complete snapshot. For kDelta, `state` carries the
// header and runner state of the new snapshot, and each head holds only the slots added since
// the base (positions, keys, values); `removed[h]` lists the positions dropped and
// `scores_after[h]` the scores of all slots of head h after the delta, in position order (scores
// are small and may all move when the engine rebases them, so they are always stored whole).
struct DecodedRecord {
  RecordKind kind = RecordKind::kFull;
  uint64_t base_seq = 0;      // kDelta: the record this one applies on
  uint64_t content_hash = 0;  // ContentHash() of the complete snapshot this record yields
  engine::MemorySnapshot state;
  std::vector<std::vector<int64_t>> removed;
  std::vector<std::vector<float>> scores_after;
};

// XXH3-64 over every field of the snapshot (header, runner state, all slots): the end-to-end
// check that a full + deltas reconstruction is exactly what was written.
uint64_t ContentHash(const engine::MemorySnapshot& snapshot);

// Structural sanity: positive dims, n_layers * n_kv_heads heads, per head
// keys.size() == values.size() == positions.size() * head_dim, scores.size() == positions.size(),
// positions strictly ascending in [0, token_offset). InvalidArgument naming the head and field.
absl::Status ValidateShape(const engine::MemorySnapshot& snapshot);

// Raw (uncompressed) payload size of a full record of `snapshot`, without encoding it.
uint64_t FullPayloadBytes(const engine::MemorySnapshot& snapshot);

std::string EncodeFullRecord(const engine::MemorySnapshot& snapshot, uint64_t content_hash,
                             const EncodeOptions& options);

// `base_positions[h]` are the slot positions of head h in the base snapshot (record `base_seq`).
// Sets *raw_payload_bytes so the caller can compare with FullPayloadBytes().
std::string EncodeDeltaRecord(const engine::MemorySnapshot& next,
                              const std::vector<std::vector<int64_t>>& base_positions,
                              uint64_t base_seq, uint64_t content_hash,
                              const EncodeOptions& options, uint64_t* raw_payload_bytes);

// Verifies magic, version, checksum and sizes, decompresses and parses. DataLoss on damage (the
// message names the field and byte offset), FailedPrecondition on an unknown format version.
absl::StatusOr<DecodedRecord> DecodeRecord(std::string_view value);

// Applies a decoded delta to `snapshot` (the reconstruction of its base) in place.
absl::Status ApplyDelta(DecodedRecord delta, engine::MemorySnapshot* snapshot);

// The per-document head: which records make up the latest snapshot, plus the bookkeeping GC
// needs. Written in the same WriteBatch as the record it points to.
struct HeadRecord {
  uint64_t next_seq = 1;  // sequence number the next record gets
  int64_t last_write_unix_micros = 0;
  uint64_t stored_bytes = 0;          // bytes of all chain records + this head
  int64_t segment_index = 0;          // of the latest snapshot
  std::string job_id;                 // "" when the document belongs to no job
  std::vector<uint64_t> chain;        // record seqs: a full record, then deltas, oldest first
  std::vector<uint64_t> chain_bytes;  // stored size of each chain record
};

std::string EncodeHead(const HeadRecord& head);
absl::StatusOr<HeadRecord> DecodeHead(std::string_view value);

// Byte-plane shuffle of 32-bit words (exposed for the benchmark and tests). `bytes.size()` must
// be a multiple of 4.
std::string ShuffleWords(std::string_view bytes);
std::string UnshuffleWords(std::string_view bytes);

// Compresses with `codec` (kNone returns the input); exposed for the benchmark.
absl::StatusOr<std::string> Compress(Codec codec, int zstd_level, std::string_view raw);
absl::StatusOr<std::string> Decompress(Codec codec, std::string_view stored, uint64_t raw_size);

}  // namespace longread::cache
