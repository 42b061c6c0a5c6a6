#include "services/cli/run_archive.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <random>
#include <system_error>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"

namespace longread::services {

std::string DefaultCacheDir() {
  // XDG Base Directory: a relative XDG_CACHE_HOME is invalid and must be ignored.
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  if (xdg != nullptr && xdg[0] == '/') return absl::StrCat(xdg, "/longread");
  const char* home = std::getenv("HOME");
  if (home != nullptr && home[0] != '\0') return absl::StrCat(home, "/.cache/longread");
  return "";
}

std::string CacheDbPath(const std::string& cache_dir) { return cache_dir + "/db"; }

// A fresh id per run rather than a hash of (model, document, config): the archive lives exactly
// as long as its job (deleted at the end, `longread run` does not resume), so a content address
// would never be reused, would cost a pass over a possibly GiB-sized document, and would let two
// runs of the same document (a later service sharing one database) delete each other's records.
std::string NewRunDocumentId() {
  std::random_device device;
  const uint64_t random = (uint64_t{device()} << 32) ^ device();
  return absl::StrFormat("%s%d-%d-%016x", kRunDocumentIdPrefix, absl::ToUnixMicros(absl::Now()),
                         static_cast<int>(getpid()), random);
}

absl::StatusOr<std::unique_ptr<RunArchive>> RunArchive::Open(const RunArchiveOptions& options) {
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
  auto run = std::unique_ptr<RunArchive>(new RunArchive());
  run->db_path_ = CacheDbPath(options.cache_dir);
  auto db = cache::CacheDb::Open(run->db_path_);
  if (!db.ok()) return db.status();
  run->db_ = std::move(*db);
  run->moved_aside_to_ = run->db_->moved_aside_to();
  // A failed collection costs disk, not this run: reported, not fatal.
  run->gc_status_ = run->CollectOrphans(options.gc_ttl);
  run->doc_id_ = NewRunDocumentId();
  if (!options.open_archive) return run;
  cache::BlockArchiveOptions archive_options;
  archive_options.max_bytes = options.max_bytes;
  auto archive =
      cache::RocksDbBlockArchive::Open(run->db_.get(), run->doc_id_, options.n_layers,
                                       options.n_kv_heads, options.head_dim, archive_options);
  if (!archive.ok()) return archive.status();
  run->archive_ = std::move(*archive);
  return run;
}

absl::Status RunArchive::CollectOrphans(absl::Duration ttl) {
  auto docs = cache::ListArchivedDocuments(db_.get());
  if (!docs.ok()) return docs.status();
  for (const auto& [doc_id, last_write] : *docs) {
    if (!absl::StartsWith(doc_id, kRunDocumentIdPrefix)) continue;
    if (absl::Status s = cache::DeleteArchivedDocument(db_.get(), doc_id); !s.ok()) return s;
    ++collected_;
  }
  auto stale = cache::GarbageCollectArchives(db_.get(), absl::Now(), ttl);
  if (!stale.ok()) return stale.status();
  collected_ += *stale;
  // The orphans' space comes back now rather than at this run's end (it may be GiB).
  return collected_ > 0 ? cache::CompactArchives(db_.get()) : absl::OkStatus();
}

absl::Status RunArchive::Close() {
  if (db_ == nullptr) return absl::OkStatus();
  absl::Status status;
  if (archive_ != nullptr) {
    // DeleteAll drops the pending batch too: destroying the archive afterwards writes nothing.
    status = archive_->DeleteAll();
    archive_.reset();
  } else if (!doc_id_.empty()) {
    status = cache::DeleteArchivedDocument(db_.get(), doc_id_);
  }
  // Without it the deleted archive (up to max_bytes) would stay on disk until some later write
  // happened to compact it.
  if (status.ok()) status = cache::CompactArchives(db_.get());
  db_.reset();
  return status;
}

RunArchive::~RunArchive() { Close().IgnoreError(); }

}  // namespace longread::services
