#include "cache/job_state_store.h"

#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>
#include <xxhash.h>

#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"
#include "cache/byte_io.h"
#include "cache/status_macros.h"

namespace longread::cache {
namespace {

// Value layout: "LRJS", u32 version, u64 XXH3-64 of the bytes that follow, the bytes.
constexpr char kMagic[4] = {'L', 'R', 'J', 'S'};
constexpr uint32_t kVersion = 1;
constexpr size_t kHeaderBytes = 16;

absl::Status ValidateJobId(std::string_view job_id) {
  if (job_id.empty()) return absl::InvalidArgumentError("job_id is empty");
  if (job_id.find_first_of(std::string_view("/\0", 2)) != std::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("job_id '", Sv(job_id), "' contains '/' or NUL"));
  }
  return absl::OkStatus();
}

std::string JobPrefix(std::string_view job_id) { return absl::StrCat("job/", Sv(job_id), "/"); }
std::string JobPrefixEnd(std::string_view job_id) { return absl::StrCat("job/", Sv(job_id), "0"); }

std::string Encode(std::string_view value) {
  std::string out(kMagic, 4);
  out.append(reinterpret_cast<const char*>(&kVersion), 4);
  const uint64_t checksum = XXH3_64bits(value.data(), value.size());
  out.append(reinterpret_cast<const char*>(&checksum), 8);
  out.append(value);
  return out;
}

absl::StatusOr<std::string> Decode(std::string_view stored, std::string_view where) {
  if (stored.size() < kHeaderBytes || std::memcmp(stored.data(), kMagic, 4) != 0) {
    return absl::DataLossError(absl::StrCat(Sv(where), ": missing 'LRJS' header"));
  }
  uint32_t version = 0;
  uint64_t checksum = 0;
  std::memcpy(&version, stored.data() + 4, 4);
  std::memcpy(&checksum, stored.data() + 8, 8);
  if (version != kVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat(Sv(where), ": format_version ", version, "; this build reads ", kVersion));
  }
  std::string_view body = stored.substr(kHeaderBytes);
  if (XXH3_64bits(body.data(), body.size()) != checksum) {
    return absl::DataLossError(absl::StrCat(Sv(where), ": checksum mismatch"));
  }
  return std::string(body);
}

}  // namespace

absl::Status JobStateStore::Put(std::string_view job_id, std::string_view key,
                                std::string_view value, bool sync) {
  CACHE_RETURN_IF_ERROR(ValidateJobId(job_id));
  if (key.empty()) return absl::InvalidArgumentError("job state key is empty");
  rocksdb::WriteOptions wo;
  wo.sync = sync;
  return FromRocks(
      db_->db()->Put(wo, db_->job_state(), absl::StrCat(JobPrefix(job_id), Sv(key)), Encode(value)),
      absl::StrCat("writing job state ", Sv(job_id), "/", Sv(key)));
}

absl::StatusOr<std::string> JobStateStore::Get(std::string_view job_id,
                                               std::string_view key) const {
  CACHE_RETURN_IF_ERROR(ValidateJobId(job_id));
  const std::string where = absl::StrCat("job state ", Sv(job_id), "/", Sv(key));
  std::string stored;
  CACHE_RETURN_IF_ERROR(FromRocks(db_->db()->Get(rocksdb::ReadOptions(), db_->job_state(),
                                                 absl::StrCat(JobPrefix(job_id), Sv(key)), &stored),
                                  where));
  return Decode(stored, where);
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>> JobStateStore::List(
    std::string_view job_id) const {
  CACHE_RETURN_IF_ERROR(ValidateJobId(job_id));
  const std::string prefix = JobPrefix(job_id);
  const std::string end = JobPrefixEnd(job_id);
  rocksdb::Slice end_slice(end);
  rocksdb::ReadOptions ro;
  ro.iterate_upper_bound = &end_slice;
  std::unique_ptr<rocksdb::Iterator> it(db_->db()->NewIterator(ro, db_->job_state()));
  std::vector<std::pair<std::string, std::string>> out;
  for (it->Seek(prefix); it->Valid(); it->Next()) {
    std::string key(it->key().ToStringView().substr(prefix.size()));
    CACHE_ASSIGN_OR_RETURN(
        std::string value,
        Decode(it->value().ToStringView(), absl::StrCat("job state ", Sv(job_id), "/", Sv(key))));
    out.emplace_back(std::move(key), std::move(value));
  }
  CACHE_RETURN_IF_ERROR(FromRocks(it->status(), absl::StrCat("listing job state of ", Sv(job_id))));
  return out;
}

absl::StatusOr<std::vector<std::string>> JobStateStore::ListJobs() const {
  std::unique_ptr<rocksdb::Iterator> it(
      db_->db()->NewIterator(rocksdb::ReadOptions(), db_->job_state()));
  std::vector<std::string> jobs;
  it->Seek("job/");
  while (it->Valid() && it->key().starts_with("job/")) {
    std::string_view rest = it->key().ToStringView().substr(4);
    std::string job(rest.substr(0, rest.find('/')));
    jobs.push_back(job);
    it->Seek(JobPrefixEnd(job));  // skip the rest of this job's keys
  }
  CACHE_RETURN_IF_ERROR(FromRocks(it->status(), "listing jobs"));
  return jobs;
}

absl::Status JobStateStore::Delete(std::string_view job_id, std::string_view key) {
  CACHE_RETURN_IF_ERROR(ValidateJobId(job_id));
  rocksdb::WriteOptions wo;
  wo.sync = true;
  return FromRocks(
      db_->db()->Delete(wo, db_->job_state(), absl::StrCat(JobPrefix(job_id), Sv(key))),
      absl::StrCat("deleting job state ", Sv(job_id), "/", Sv(key)));
}

absl::Status JobStateStore::DeleteJob(std::string_view job_id) {
  CACHE_RETURN_IF_ERROR(ValidateJobId(job_id));
  rocksdb::WriteOptions wo;
  wo.sync = true;
  return FromRocks(
      db_->db()->DeleteRange(wo, db_->job_state(), JobPrefix(job_id), JobPrefixEnd(job_id)),
      absl::StrCat("deleting job state of ", Sv(job_id)));
}

}  // namespace longread::cache
