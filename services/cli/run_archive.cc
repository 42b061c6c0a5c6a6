#include "services/cli/run_archive.h"

#include <unistd.h>

#include <cstdlib>
#include <random>
#include <utility>

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

std::string CacheDbPath(const std::string& cache_dir) {
  return cache_dir + "/" + cache::ArchiveDatabaseOptions().name;
}

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
  cache::ArchiveDatabaseOptions database_options;
  database_options.cache_dir = options.cache_dir;
  database_options.orphan_prefix = kRunDocumentIdPrefix;
  database_options.gc_ttl = options.gc_ttl;
  auto database = cache::ArchiveDatabase::Open(database_options);
  if (!database.ok()) return database.status();
  auto run = std::unique_ptr<RunArchive>(new RunArchive());
  run->database_ = std::move(*database);
  run->db_path_ = run->database_->path();
  run->moved_aside_to_ = run->database_->moved_aside_to();
  run->collected_ = run->database_->collected();
  run->gc_status_ = run->database_->gc_status();
  run->doc_id_ = NewRunDocumentId();
  if (!options.open_archive) return run;
  auto archive = run->database_->OpenArchive(run->doc_id_, options.n_layers, options.n_kv_heads,
                                             options.head_dim, options.max_bytes);
  if (!archive.ok()) return archive.status();
  run->archive_ = std::move(*archive);
  return run;
}

absl::Status RunArchive::Close() {
  if (database_ == nullptr) return absl::OkStatus();
  absl::Status status =
      archive_ != nullptr ? database_->DeleteArchive(&archive_) : database_->DeleteArchive(doc_id_);
  // Without it the deleted archive (up to max_bytes) would stay on disk until some later write
  // happened to compact it.
  if (status.ok()) status = database_->Compact();
  database_.reset();
  return status;
}

RunArchive::~RunArchive() { Close().IgnoreError(); }

}  // namespace longread::services
