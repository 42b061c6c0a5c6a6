// The coordinator's durable log in RocksDB: jobs, their documents as token chunks, per-job
// events with dense offsets, idempotency keys, and each running document's latest checkpoint
// (memory snapshot slices + the recall archive's blocks in the order the worker put them).
// Key layout (all ids are fixed-width, so keys sort by number):
//   j/<job>                      Job header (documents cleared)
//   d/<job>/<doc>                DocumentStatus
//   e/<job>/<offset>             JobEvent
//   t/<job>/<doc>/<chunk>        kTokensPerChunk int32 tokens (little-endian), the last shorter
//   m/<job>/<doc>                committed checkpoint: "seq tokens parts\narchive_error"
//   s/<job>/<doc>/<seq>/<part>   snapshot slice of checkpoint seq
//   a/<job>/<doc>/<seq>/<n>      ArchivedBlock (serialized) of checkpoint seq, in put order
//   i/<principal>/<key>          job id of an idempotency key
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "longread/v1/job_service.pb.h"

namespace rocksdb {
class DB;
class Env;
class WriteBatch;
}  // namespace rocksdb

namespace longread::coordinator {

inline constexpr int64_t kTokensPerChunk = 65536;

struct CommittedCheckpoint {
  int64_t seq = 0;  // 0: none
  int64_t document_tokens = 0;
  int64_t snapshot_parts = 0;
  std::string archive_error;  // the worker's archive failed before it: resume without recall
};

// A job as stored: its header and its documents.
struct StoredJob {
  v1::Job header;
  std::vector<v1::DocumentStatus> documents;
  int64_t events = 0;  // the next event's offset
};

class JobStore {
 public:
  static absl::StatusOr<std::unique_ptr<JobStore>> Open(const std::string& path);
  // The same log on an in-memory file system (rocksdb::NewMemEnv): embedded mode writes nothing
  // to disk, and one process has no restart to survive.
  static absl::StatusOr<std::unique_ptr<JobStore>> OpenInMemory();
  ~JobStore();

  // One atomic write: any of a job header, document statuses and an event. sync fsyncs the WAL.
  struct Write {
    const v1::Job* header = nullptr;
    std::vector<const v1::DocumentStatus*> documents;
    const v1::JobEvent* event = nullptr;
    std::optional<std::pair<std::string, std::string>> idempotency;  // (principal/key, job)
  };
  absl::Status Apply(const std::string& job_id, const Write& write, bool sync);

  absl::StatusOr<std::vector<StoredJob>> LoadJobs() const;
  // NotFound past the last event.
  absl::StatusOr<v1::JobEvent> GetEvent(const std::string& job_id, int64_t offset) const;
  absl::StatusOr<std::optional<std::string>> FindIdempotencyKey(const std::string& key) const;

  absl::Status PutTokenChunk(const std::string& job_id, int32_t doc, int64_t chunk,
                             std::span<const int32_t> tokens);
  // Calls `sink` with the document's tokens from `from` on, in slices of at most max_slice.
  absl::Status ReadTokens(
      const std::string& job_id, int32_t doc, int64_t from, int64_t max_slice,
      const std::function<bool(int64_t offset, std::span<const int32_t> tokens)>& sink) const;

  // Checkpoint parts arrive one by one; the checkpoint becomes the resume point on Commit.
  absl::Status PutSnapshotPart(const std::string& job_id, int32_t doc, int64_t seq, int64_t part,
                               std::string_view bytes);
  absl::Status PutArchiveBlock(const std::string& job_id, int32_t doc, int64_t seq, int64_t n,
                               std::string_view serialized_block);
  // Makes checkpoint `seq` the resume point (synced) and drops older snapshots.
  absl::Status CommitCheckpoint(const std::string& job_id, int32_t doc,
                                const CommittedCheckpoint& checkpoint);
  absl::StatusOr<CommittedCheckpoint> GetCheckpoint(const std::string& job_id, int32_t doc) const;
  // Drops whatever a lost worker sent of checkpoints after `committed_seq`.
  absl::Status DropUncommitted(const std::string& job_id, int32_t doc, int64_t committed_seq);
  absl::Status ReadSnapshot(const std::string& job_id, int32_t doc, const CommittedCheckpoint& c,
                            const std::function<bool(std::string_view)>& sink) const;
  // Archive blocks of checkpoints 1..c.seq in put order.
  absl::Status ReadArchive(const std::string& job_id, int32_t doc, const CommittedCheckpoint& c,
                           const std::function<bool(std::string_view)>& sink) const;

  // A document's checkpoints and archive (its job may still run other documents).
  absl::Status DeleteCheckpoints(const std::string& job_id, int32_t doc);
  // Everything a finished job no longer needs: tokens, checkpoints, archives (the header,
  // documents and events stay for GetJob and WatchJob).
  absl::Status DeleteJobWorkData(const std::string& job_id);
  // Every key of a job (a submission that failed half-way).
  absl::Status DeleteJob(const std::string& job_id);

  uint64_t SizeBytes() const;

  // A consistent copy of the whole database in `dir` (must not exist), taken while it serves:
  // RocksDB hard-links the live files (copies them across filesystems) after a flush. Opening
  // the copy is a restart at that instant (backups, deploy/README.md).
  absl::Status Checkpoint(const std::string& dir) const;

 private:
  explicit JobStore(rocksdb::DB* db) : db_(db) {}
  static absl::StatusOr<std::unique_ptr<JobStore>> OpenWith(const std::string& path,
                                                            std::shared_ptr<rocksdb::Env> env);
  absl::Status DeletePrefix(const std::string& prefix);

  rocksdb::DB* db_;
  std::shared_ptr<rocksdb::Env> env_;  // the in-memory file system; outlives db_
};

}  // namespace longread::coordinator
