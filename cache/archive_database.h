// A RocksDB database of recall archives (block_archive_store.h) owned by one process, as both
// `longread run` (services/cli/run_archive.h) and longread-worker use it: opened on a cache
// directory (a damaged one is moved aside), the archives a dead owner left collected at open,
// archives opened per document and deleted with their disk space given back.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cache/block_archive_store.h"
#include "cache/cache_db.h"

namespace longread::cache {

struct ArchiveDatabaseOptions {
  std::string cache_dir;    // created if missing
  std::string name = "db";  // the database's subdirectory of cache_dir
  // Archives whose id starts with this are a dead owner's and are deleted at open: RocksDB's lock
  // keeps two processes off one database, so whoever wrote them has ended ("" matches every
  // archive). Any other archive is deleted once its last write is older than gc_ttl.
  std::string orphan_prefix;
  absl::Duration gc_ttl = absl::Hours(24);
};

class ArchiveDatabase {
 public:
  // An error means "no recall"; it names the directory and the cause. FAILED_PRECONDITION for an
  // empty cache_dir, UNAVAILABLE when it cannot be created, RocksDB's error when it cannot open
  // (another process holds its lock).
  static absl::StatusOr<std::unique_ptr<ArchiveDatabase>> Open(
      const ArchiveDatabaseOptions& options);
  ArchiveDatabase(const ArchiveDatabase&) = delete;
  ArchiveDatabase& operator=(const ArchiveDatabase&) = delete;

  CacheDb* db() const { return db_.get(); }
  const std::string& path() const { return path_; }
  // Where a damaged database was moved ("" if it was not): worth a warning, since it holds disk.
  const std::string& moved_aside_to() const { return db_->moved_aside_to(); }
  int collected() const { return collected_; }  // archives deleted by Open
  // A failed collection costs disk, not the owner's work: reported, not fatal.
  const absl::Status& gc_status() const { return gc_status_; }

  absl::StatusOr<std::unique_ptr<RocksDbBlockArchive>> OpenArchive(
      const std::string& doc_id, int32_t n_layers, int32_t n_kv_heads, int64_t head_dim,
      uint64_t max_bytes, int encode_threads = 1) const;
  // Deletes an archive's records, written or pending (the archive is closed: `*archive` is
  // reset), or those of `doc_id` when no archive is open on it. The space comes back at the
  // next Compact().
  absl::Status DeleteArchive(std::unique_ptr<RocksDbBlockArchive>* archive) const;
  absl::Status DeleteArchive(const std::string& doc_id) const;
  // Range deletions keep their disk space until a compaction; this is that compaction.
  absl::Status Compact() const;

 private:
  ArchiveDatabase() = default;
  absl::Status CollectOrphans(const ArchiveDatabaseOptions& options);

  std::string path_;
  std::unique_ptr<CacheDb> db_;
  int collected_ = 0;
  absl::Status gc_status_;
};

}  // namespace longread::cache
