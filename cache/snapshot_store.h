// Persistent memory snapshots per document: put after a segment, get the latest, list, delete,
// garbage-collect. Each Put is one atomic WriteBatch (new record + updated head), written as a
// delta against the document's previous snapshot when that is smaller, with a bounded chain.
// Thread-safe; reads never wait for writes (they read a RocksDB snapshot, not under the lock).
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cache/cache_db.h"
#include "cache/snapshot_format.h"
#include "engine/memory/snapshot.h"

namespace longread::cache {

struct SnapshotStoreOptions {
  // Deltas allowed after a full record before the next full one; reading the latest snapshot
  // reads at most 1 + max_delta_chain records. 0 writes full records only.
  int max_delta_chain = 8;
  EncodeOptions encode;
  // Documents whose previous slot positions are kept in memory to compute deltas. A document
  // not in this cache (first write after a restart, or evicted) gets a full record.
  size_t max_cached_documents = 256;
};

struct PutOptions {
  bool sync = false;             // WriteOptions.sync: fsync the WAL before Put returns
  std::string job_id;            // tags the document for DeleteJob ("" = none)
  absl::Time now = absl::Now();  // recorded as the last write time (TTL, eviction order)
};

struct PutResult {
  uint64_t seq = 0;
  RecordKind kind = RecordKind::kFull;
  uint64_t record_bytes = 0;       // stored size of the new record
  uint64_t raw_payload_bytes = 0;  // before compression
  uint64_t document_bytes = 0;     // all records the document now keeps + its head
  int chain_length = 0;            // records now needed to read the latest snapshot
};

// What the reader expects the snapshot to have been made with.
struct ExpectedIdentity {
  std::string model_fingerprint;
  uint64_t config_hash = 0;
};

struct DocumentInfo {
  std::string doc_id;
  std::string job_id;
  int64_t segment_index = 0;
  absl::Time last_write;
  uint64_t stored_bytes = 0;
  int chain_length = 0;
};

struct GcOptions {
  absl::Duration ttl = absl::InfiniteDuration();  // delete documents not written for this long
  uint64_t max_total_bytes = UINT64_MAX;          // then evict oldest-written first to fit
};

struct GcStats {
  int expired = 0;  // documents deleted for age
  int evicted = 0;  // documents deleted for the size cap
  uint64_t bytes_freed = 0;
  uint64_t bytes_remaining = 0;
};

class SnapshotStore {
 public:
  explicit SnapshotStore(CacheDb* db, SnapshotStoreOptions options = {});

  // InvalidArgument for a malformed snapshot or doc_id (empty, or containing '\0').
  absl::StatusOr<PutResult> Put(std::string_view doc_id, const engine::MemorySnapshot& snapshot,
                                const PutOptions& options = {});

  // NotFound when the document has no snapshot; DataLoss when stored bytes are damaged;
  // FailedPrecondition when the snapshot belongs to another model/config or format version.
  absl::StatusOr<engine::MemorySnapshot> GetLatest(std::string_view doc_id,
                                                   const ExpectedIdentity& expected) const;

  absl::StatusOr<DocumentInfo> Info(std::string_view doc_id) const;
  // Documents whose head is damaged are skipped (and deleted by the next GarbageCollect).
  absl::StatusOr<std::vector<DocumentInfo>> List() const;

  absl::Status DeleteDocument(std::string_view doc_id);
  // Deletes every document tagged with job_id; returns how many.
  absl::StatusOr<int> DeleteJob(std::string_view job_id);
  // Deletes damaged heads, documents older than ttl, then the oldest-written documents until
  // the total is within max_total_bytes.
  absl::StatusOr<GcStats> GarbageCollect(absl::Time now, const GcOptions& options);

 private:
  struct CachedPositions {
    uint64_t seq = 0;  // record these positions belong to
    std::string model_fingerprint;
    uint64_t config_hash = 0;
    int32_t n_layers = 0, n_kv_heads = 0, head_dim = 0;
    std::vector<std::vector<int64_t>> positions;
    std::list<std::string>::iterator lru;
  };

  absl::Status DeleteLocked(std::string_view doc_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Remember(std::string_view doc_id, uint64_t seq, const engine::MemorySnapshot& snapshot)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Forget(std::string_view doc_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::vector<std::pair<std::string, absl::StatusOr<HeadRecord>>>> ScanHeads() const;

  CacheDb* db_;
  const SnapshotStoreOptions options_;
  // Serializes mutations (Put, deletes) so a delta is always computed against the head it is
  // written over. Readers do not take it.
  absl::Mutex mu_;
  std::unordered_map<std::string, CachedPositions> cache_ ABSL_GUARDED_BY(mu_);
  std::list<std::string> lru_ ABSL_GUARDED_BY(mu_);  // front = most recently written
};

// The resume decision for a document: the latest snapshot when one is stored and valid;
// otherwise nullopt (start from the beginning) with `refused` saying why a stored snapshot was
// not used (OK when there simply was none). The caller logs `refused`; it never crashes. A
// damaged snapshot (DataLoss) is deleted so the next Put starts a fresh full record; one from
// another model/config is left for its owner and is overwritten by this run's next Put.
struct ResumePoint {
  std::optional<engine::MemorySnapshot> snapshot;
  absl::Status refused;
};
ResumePoint GetLatestOrRestart(SnapshotStore& store, std::string_view doc_id,
                               const ExpectedIdentity& expected);

// Key layout of the snapshot column family (see FORMAT.md).
std::string HeadKey(std::string_view doc_id);
std::string RecordKey(std::string_view doc_id, uint64_t seq);

}  // namespace longread::cache
