// Small checksummed blobs per job for the coordinator (its job table, progress, results index),
// in their own column family of the cache database. Values are opaque bytes to this store.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cache/cache_db.h"

namespace longread::cache {

class JobStateStore {
 public:
  explicit JobStateStore(CacheDb* db) : db_(db) {}

  // job_id must be non-empty and contain neither '/' nor NUL; key must be non-empty.
  // sync=true fsyncs the WAL before returning (coordinator state is small and precious).
  absl::Status Put(std::string_view job_id, std::string_view key, std::string_view value,
                   bool sync = true);
  // NotFound when absent, DataLoss when the stored bytes fail their checksum.
  absl::StatusOr<std::string> Get(std::string_view job_id, std::string_view key) const;
  // (key, value) pairs of one job in key order; DataLoss if any value is damaged.
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> List(
      std::string_view job_id) const;
  // Distinct job ids that have state.
  absl::StatusOr<std::vector<std::string>> ListJobs() const;
  absl::Status Delete(std::string_view job_id, std::string_view key);
  absl::Status DeleteJob(std::string_view job_id);

 private:
  CacheDb* db_;
};

}  // namespace longread::cache
