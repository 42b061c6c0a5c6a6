// The archive of evicted memory blocks in RocksDB (engine::BlockArchive, DESIGN.md §4): while a
// document is read, every block the SparseK memory evicts is written (bf16 or fp32) with a small
// fp32 representative (element-wise key min/max); at answer time the question's queries score
// the representatives and only the best R payloads are read back. Layout, sizes, cap, GC and
// failure behaviour: cache/FORMAT.md, "Archive of evicted blocks".
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cache/cache_db.h"
#include "engine/memory/block_archive.h"

namespace longread::kernels {
class ThreadPool;
}  // namespace longread::kernels

namespace rocksdb {
class WriteBatch;
}  // namespace rocksdb

namespace longread::cache {
namespace block_archive_internal {
struct BlockView;
}  // namespace block_archive_internal

// How keys and values are stored. Representatives (and hence which blocks are recalled) are fp32
// in both; bf16 halves the payload and rounds the recalled keys/values (relative error <= 2^-8).
enum class ArchivePrecision : uint8_t { kFp32 = 0, kBf16 = 1 };

struct BlockArchiveOptions {
  ArchivePrecision precision = ArchivePrecision::kBf16;
  // Per document, payloads + representatives + keys. Beyond it the blocks with the lowest stored
  // importance (max of their tokens' scores; ties: the earlier block) are deleted. 0: no cap.
  uint64_t max_bytes = uint64_t{1} << 30;
  // Puts wait in one WriteBatch that is written when it holds this many blocks or bytes (and on
  // Flush, Recall and destruction): Put costs a memcpy, one RocksDB write per batch.
  size_t flush_every_blocks = 256;
  size_t flush_every_bytes = size_t{4} << 20;
  // Keep every block's representative in RAM (2 * head_dim floats + ~80 bytes per block, bounded
  // by max_bytes) so Recall scores without reading RocksDB. Off: Recall scans the head's
  // representative records.
  bool keep_representatives_in_ram = true;
  // Batches go through RocksDB's write-ahead log. Off by default: the WAL is a second copy and a
  // CRC32C of every payload byte, ~80% of the write thread's time (bench/gpu/NOTES.md v6), and
  // nothing relies on archive records surviving a process crash (a worker replays its
  // checkpoints' deltas into a fresh archive; `longread run` deletes a dead run's archive).
  // Without it a disk that refuses writes (full, quota) is still met: RocksDB's memtable flushes
  // (every 16 MiB of archive) fail, which fails the writes after them, and Flush, Recall and Fetch
  // flush the memtable themselves, so the failure reaches the caller no later than there.
  bool write_ahead_log = false;
  // Batches are written to RocksDB by a thread of the archive's own, in order, while the putting
  // thread encodes the next ones (at most two batches wait). A failed write then surfaces at the
  // next Put, Flush, Recall or Fetch, and every later one (the archive has lost blocks); off, it
  // fails the Put whose batch it was, and later batches are still written.
  bool background_writes = true;
  // Threads that encode a PutBatch's blocks (bf16 payload, bounds, keys, checksums); the index
  // and the write batch still take them one by one in order. 1: the caller's thread only.
  int encode_threads = 1;
};

struct BlockArchiveStats {
  uint64_t blocks_put = 0;
  uint64_t blocks_stored = 0;  // now, after cap evictions
  uint64_t tokens_stored = 0;
  uint64_t payload_bytes = 0;           // stored payload records
  uint64_t representative_bytes = 0;    // stored representative records
  uint64_t evicted_for_cap = 0;         // blocks deleted to stay within max_bytes
  uint64_t blocks_skipped_for_cap = 0;  // of those, put when the cap would delete them at once:
                                        // never written
  uint64_t batches_written = 0;
  uint64_t recalls = 0;
  double write_thread_cpu_seconds = 0;  // CPU time of the background write thread
};

class RocksDbBlockArchive : public engine::BlockArchive {
 public:
  // Opens the archive of `doc_id` (non-empty, no NUL), loading the representatives already
  // stored (a restart). A damaged representative does not fail Open: Recall of its head returns
  // DataLoss naming the key. InvalidArgument for a bad doc_id or shape.
  static absl::StatusOr<std::unique_ptr<RocksDbBlockArchive>> Open(
      CacheDb* db, std::string doc_id, int32_t n_layers, int32_t n_kv_heads, int64_t head_dim,
      BlockArchiveOptions options = {});
  ~RocksDbBlockArchive() override;  // writes what is pending (errors are dropped: call Flush)

  // Buffers the block; writes the batch when it is full. InvalidArgument for a malformed block.
  // Putting a block again (same layer, head, block id and first position: a resumed document
  // re-evicts what it evicted before the crash) replaces it.
  absl::Status Put(engine::ArchivedBlock block) override;
  // The same without a copy: the block is only encoded.
  absl::Status PutCopyOf(const engine::ArchivedBlock& block) override;
  // Encodes the blocks on `encode_threads` threads, then takes them in order as PutCopyOf would.
  absl::Status PutBatch(std::span<const engine::ArchivedBlock> blocks, size_t* n_put) override;
  // The same from bf16 rows: the payload takes their bytes as they are (bf16 precision), the
  // bounds come from the bf16 values; the records equal those of PutBatch(WidenRows(...)).
  absl::Status PutRows(std::span<const engine::Bf16BlockRows> blocks, size_t* n_put) override;
  // Writes pending Puts, scores the head's representatives with engine::RecallScore, reads the
  // best r payloads (engine::TopRIndices; ties: the earlier block) and returns them in position
  // order, keys/values as fp32. DataLoss naming the key for a damaged or missing record.
  absl::StatusOr<std::vector<engine::ArchivedBlock>> Recall(int32_t layer, int32_t kv_head,
                                                            std::span<const float> queries,
                                                            int64_t n_queries, int64_t r) override;
  // Writes pending Puts and reads the payloads of these block ids (those stored), as Recall does.
  absl::StatusOr<std::vector<engine::ArchivedBlock>> Fetch(
      int32_t layer, int32_t kv_head, std::span<const int64_t> block_ids) override;
  int64_t stored_bytes() const override;

  absl::Status Flush();
  // Deletes this document's archive (records and RAM index).
  absl::Status DeleteAll();
  BlockArchiveStats stats() const;

 private:
  struct Entry {
    int64_t last_position = 0;
    uint32_t n_tokens = 0;
    float score_max = 0;
    uint64_t bytes = 0;          // both records and their keys
    engine::BlockBounds bounds;  // empty unless keep_representatives_in_ram
  };
  using BlockKey = std::pair<int64_t, int64_t>;  // (block_id, first position)
  // Cap eviction order: (score_max, first position, head index, block_id).
  using Victim = std::tuple<float, int64_t, int32_t, int64_t>;

  struct Encoded;

  RocksDbBlockArchive(CacheDb* db, std::string doc_id, int32_t n_layers, int32_t n_kv_heads,
                      int64_t head_dim, BlockArchiveOptions options);
  void Encode(const engine::ArchivedBlock& block, Encoded* out) const;
  void Encode(const engine::Bf16BlockRows& rows, Encoded* out) const;
  void EncodeView(const block_archive_internal::BlockView& block, Encoded* out) const;
  template <typename Block>
  absl::Status EncodeAndCommit(std::span<const Block> blocks, size_t* n_put);
  absl::Status CommitLocked(Encoded& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Load();
  // Hands the pending batch to the write thread (without one: writes it); returns the first
  // failed write's error.
  absl::Status SubmitLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Submits and waits until everything submitted is written.
  absl::Status FlushLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status WriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status SyncLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WaitWrittenLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WriteLoop();
  void Forget(int32_t head, const BlockKey& key, bool delete_records)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Index(int32_t head, const BlockKey& key, Entry entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<engine::ArchivedBlock> ReadPayloadLocked(int32_t layer, int32_t kv_head,
                                                          const BlockKey& key, const Entry& entry)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status ScanRepresentatives(int32_t head, std::vector<BlockKey>* keys,
                                   std::vector<engine::BlockBounds>* bounds) const;

  CacheDb* db_;
  const std::string doc_id_;
  const int32_t n_layers_, n_kv_heads_;
  const int64_t head_dim_;
  const BlockArchiveOptions options_;
  std::unique_ptr<kernels::ThreadPool> encode_pool_;  // null: encode on the caller's thread

  mutable absl::Mutex mu_;
  std::vector<std::map<BlockKey, Entry>> heads_ ABSL_GUARDED_BY(mu_);
  std::vector<absl::Status> damaged_ ABSL_GUARDED_BY(mu_);  // per head, from Load
  std::set<Victim> by_score_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<rocksdb::WriteBatch> pending_ ABSL_GUARDED_BY(mu_);
  size_t pending_blocks_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  BlockArchiveStats stats_ ABSL_GUARDED_BY(mu_);
  std::deque<std::unique_ptr<rocksdb::WriteBatch>> to_write_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_writing_ ABSL_GUARDED_BY(mu_) = false;
  bool unsynced_ ABSL_GUARDED_BY(mu_) = false;     // written without the WAL since the last sync
  absl::Status write_error_ ABSL_GUARDED_BY(mu_);  // the first failed background write
  std::thread write_thread_;                       // started last, by the constructor
};

// Deletes every archive record of `doc_id` (call when its job ends; RocksDbBlockArchive need not
// be open). One range deletion per record kind.
absl::Status DeleteArchivedDocument(CacheDb* db, std::string_view doc_id);

// Documents that have archive records (from their last-write markers), with when each was last
// written.
absl::StatusOr<std::vector<std::pair<std::string, absl::Time>>> ListArchivedDocuments(CacheDb* db);

// Deletes the archives of documents not written for `ttl` (and of unreadable markers); returns
// how many.
absl::StatusOr<int> GarbageCollectArchives(CacheDb* db, absl::Time now, absl::Duration ttl);

// Deleted records keep their disk space until a compaction drops them (range deletions are
// tombstones, and a run that deletes its archive at the end writes nothing afterwards that would
// trigger one). Compacts the whole archive column family down to its last level; call when a job's
// archive has been deleted: what is left then is only other documents' archives, so the cost is
// reading those, and the deleted records' files go.
absl::Status CompactArchives(CacheDb* db);

// Record keys (FORMAT.md): payloads "a/p/<doc>\0<layer>/<head>/<block_id>/<first position>",
// representatives the same under "a/r/", fixed-width lowercase hex so that keys sort by number.
std::string ArchivePayloadKey(std::string_view doc_id, int32_t layer, int32_t kv_head,
                              int64_t block_id, int64_t first_position);
std::string ArchiveRepresentativeKey(std::string_view doc_id, int32_t layer, int32_t kv_head,
                                     int64_t block_id, int64_t first_position);

}  // namespace longread::cache
