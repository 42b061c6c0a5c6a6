#include "cache/archive_database.h"

#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace longread::cache {

absl::StatusOr<std::unique_ptr<ArchiveDatabase>> ArchiveDatabase::Open(
    const ArchiveDatabaseOptions& options) {
  if (options.cache_dir.empty()) {
    return absl::FailedPreconditionError(
        "no cache directory: set --cache-dir, XDG_CACHE_HOME or HOME");
  }
  std::error_code ec;
  std::filesystem::create_directories(options.cache_dir, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("cannot create cache directory ", options.cache_dir, ": ", ec.message()));
  }
  std::unique_ptr<ArchiveDatabase> database(new ArchiveDatabase());
  // A subdirectory, not the directory itself: a damaged database is renamed aside, and renaming
  // whatever directory the user named (say, their home) would be a nasty surprise.
  database->path_ = absl::StrCat(options.cache_dir, "/", options.name);
  auto db = CacheDb::Open(database->path_);
  if (!db.ok()) return db.status();
  database->db_ = std::move(*db);
  database->gc_status_ = database->CollectOrphans(options);
  return database;
}

absl::Status ArchiveDatabase::CollectOrphans(const ArchiveDatabaseOptions& options) {
  auto docs = ListArchivedDocuments(db_.get());
  if (!docs.ok()) return docs.status();
  for (const auto& [doc_id, last_write] : *docs) {
    if (!absl::StartsWith(doc_id, options.orphan_prefix)) continue;
    if (absl::Status s = DeleteArchivedDocument(db_.get(), doc_id); !s.ok()) return s;
    ++collected_;
  }
  auto stale = GarbageCollectArchives(db_.get(), absl::Now(), options.gc_ttl);
  if (!stale.ok()) return stale.status();
  collected_ += *stale;
  // The orphans' space comes back now rather than at the owner's end (it may be GiB).
  return collected_ > 0 ? Compact() : absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<RocksDbBlockArchive>> ArchiveDatabase::OpenArchive(
    const std::string& doc_id, int32_t n_layers, int32_t n_kv_heads, int64_t head_dim,
    uint64_t max_bytes, int encode_threads) const {
  BlockArchiveOptions archive_options;
  archive_options.max_bytes = max_bytes;
  archive_options.encode_threads = encode_threads;
  return RocksDbBlockArchive::Open(db_.get(), doc_id, n_layers, n_kv_heads, head_dim,
                                   archive_options);
}

absl::Status ArchiveDatabase::DeleteArchive(std::unique_ptr<RocksDbBlockArchive>* archive) const {
  if (*archive == nullptr) return absl::OkStatus();
  // DeleteAll drops the pending batch too: destroying the archive afterwards writes nothing.
  absl::Status status = (*archive)->DeleteAll();
  archive->reset();
  return status;
}

absl::Status ArchiveDatabase::DeleteArchive(const std::string& doc_id) const {
  return DeleteArchivedDocument(db_.get(), doc_id);
}

absl::Status ArchiveDatabase::Compact() const { return CompactArchives(db_.get()); }

}  // namespace longread::cache
