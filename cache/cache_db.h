// The RocksDB database behind the cache: one directory, three column families (memory snapshots,
// job state, archived blocks). SnapshotStore, JobStateStore and RocksDbBlockArchive are views over
// it.
#pragma once

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace rocksdb {
class DB;
class ColumnFamilyHandle;
class Status;
}  // namespace rocksdb

namespace longread::cache {

inline constexpr char kSnapshotColumnFamily[] = "memory_snapshots";
inline constexpr char kJobStateColumnFamily[] = "job_state";
// Evicted memory blocks for recall at answer time (cache/block_archive_store.h). Created on open
// when an older database lacks it.
inline constexpr char kBlockArchiveColumnFamily[] = "block_archive";

enum class BlockCompression { kNone, kLz4, kZstd };

struct CacheDbOptions {
  bool create_if_missing = true;
  // When the database cannot be opened because its files are damaged (a truncated SST file, a
  // corrupt MANIFEST), rename the directory to "<path>.corrupt-<unix seconds>" and start an
  // empty database instead of failing. Every document then restarts from its beginning.
  bool move_aside_if_corrupt = true;
  // RocksDB block compression of the snapshot column family. Snapshot payloads are fp32 noise
  // that barely compresses (bench/cache), so it is off by default; records can instead compress
  // their own payload (EncodeOptions).
  BlockCompression snapshot_block_compression = BlockCompression::kNone;
  // Memtable size of the snapshot column family. It also bounds the WAL that a restart replays
  // (bigger = fewer flushes, slower recovery). A full snapshot of the default model is tens of
  // MiB, so most full writes flush anyway.
  size_t snapshot_write_buffer_bytes = 64u << 20;
  // Keep snapshot records (MiB each) in RocksDB blob files: a flush writes them once and
  // compaction moves only keys, instead of rewriting every record at each level.
  bool snapshot_blob_files = true;
};

class CacheDb {
 public:
  static absl::StatusOr<std::unique_ptr<CacheDb>> Open(const std::string& path,
                                                       const CacheDbOptions& options = {});
  ~CacheDb();
  CacheDb(const CacheDb&) = delete;
  CacheDb& operator=(const CacheDb&) = delete;

  rocksdb::DB* db() const { return db_; }
  rocksdb::ColumnFamilyHandle* snapshots() const { return snapshots_; }
  rocksdb::ColumnFamilyHandle* job_state() const { return job_state_; }
  rocksdb::ColumnFamilyHandle* block_archive() const { return block_archive_; }
  // Where a damaged database was moved to by Open ("" when it was not).
  const std::string& moved_aside_to() const { return moved_aside_to_; }

 private:
  CacheDb() = default;

  rocksdb::DB* db_ = nullptr;
  rocksdb::ColumnFamilyHandle* default_cf_ = nullptr;
  rocksdb::ColumnFamilyHandle* snapshots_ = nullptr;
  rocksdb::ColumnFamilyHandle* job_state_ = nullptr;
  rocksdb::ColumnFamilyHandle* block_archive_ = nullptr;
  std::string moved_aside_to_;
};

// RocksDB status -> absl: Corruption -> DataLoss, NotFound -> NotFound, IOError -> Unavailable,
// anything else -> Internal; the message starts with `context`.
absl::Status FromRocks(const rocksdb::Status& status, std::string_view context);

}  // namespace longread::cache
