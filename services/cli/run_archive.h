// The archive of evicted blocks for one `longread run`: the run's cache::ArchiveDatabase (the
// handler longread-worker uses too) on the cache directory, archives of killed runs collected, a
// fresh document id, and the run's records deleted when it ends, whichever way it ends
// (cache/FORMAT.md, "Archive of evicted blocks"). Kept out of main.cc so that the clean-up paths
// can be tested without the model.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cache/archive_database.h"
#include "cache/block_archive_store.h"
#include "cache/cache_db.h"

namespace longread::services {

// $XDG_CACHE_HOME/longread when XDG_CACHE_HOME is an absolute path, else $HOME/.cache/longread;
// "" when neither is set.
std::string DefaultCacheDir();

// The RocksDB database inside a cache directory. A subdirectory, not the directory itself: a
// damaged database is renamed aside (CacheDbOptions::move_aside_if_corrupt), and renaming
// whatever directory the user named (say, their home) would be a nasty surprise.
std::string CacheDbPath(const std::string& cache_dir);

struct RunArchiveOptions {
  std::string cache_dir;
  uint64_t max_bytes = uint64_t{1} << 30;  // per run; 0: no cap
  // Archives of `longread run` itself (ids from NewRunDocumentId) found at Open are orphans of a
  // killed run and are deleted at once: RocksDB's lock keeps two processes off one database, so
  // their run has ended, and a fresh id is never resumed. Any other archive (a future resumable
  // job's, say) is deleted once its last write is older than gc_ttl.
  absl::Duration gc_ttl = absl::Hours(24);
  int32_t n_layers = 0;
  int32_t n_kv_heads = 0;
  int64_t head_dim = 0;
  // false: only the database and the run's id (doc_id()); whoever writes the archive opens it
  // under that id on db() (embedded mode: the in-process worker). Close() deletes it all the same.
  bool open_archive = true;
};

class RunArchive {
 public:
  // Creates the cache directory, opens the database (a damaged one is moved aside and replaced by
  // an empty one: see moved_aside_to()), collects stale archives and opens this run's archive.
  // An error means "answer without recall"; it names the directory and the cause.
  static absl::StatusOr<std::unique_ptr<RunArchive>> Open(const RunArchiveOptions& options);
  ~RunArchive();  // Close(), errors dropped
  RunArchive(const RunArchive&) = delete;
  RunArchive& operator=(const RunArchive&) = delete;

  cache::RocksDbBlockArchive* archive() const { return archive_.get(); }  // null: !open_archive
  // Null once closed.
  cache::ArchiveDatabase* database() const { return database_.get(); }
  cache::CacheDb* db() const { return database_ != nullptr ? database_->db() : nullptr; }
  const std::string& doc_id() const { return doc_id_; }
  const std::string& db_path() const { return db_path_; }
  // Where a damaged database was moved ("" if it was not): worth a warning, since it holds disk.
  const std::string& moved_aside_to() const { return moved_aside_to_; }
  int collected() const { return collected_; }  // archives deleted by Open
  const absl::Status& gc_status() const { return gc_status_; }

  // Deletes this run's records, compacts them off the disk (cache::CompactArchives) and closes the
  // database. Idempotent.
  absl::Status Close();

 private:
  RunArchive() = default;

  std::string db_path_;
  std::string doc_id_;
  std::string moved_aside_to_;
  std::unique_ptr<cache::ArchiveDatabase> database_;
  std::unique_ptr<cache::RocksDbBlockArchive> archive_;
  int collected_ = 0;
  absl::Status gc_status_;
};

// A document id that no other run uses: "run-<unix µs>-<pid>-<64 random bits>".
inline constexpr char kRunDocumentIdPrefix[] = "run-";
std::string NewRunDocumentId();

}  // namespace longread::services
