#include "services/coordinator/job_store.h"

#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "rocksdb/cache.h"
#include "rocksdb/db.h"
#include "rocksdb/options.h"
#include "rocksdb/table.h"
#include "rocksdb/utilities/checkpoint.h"
#include "rocksdb/write_batch.h"

namespace longread::coordinator {
namespace {

std::string Hex(int64_t v, int width) {
  return absl::StrFormat("%0*x", width, static_cast<uint64_t>(v));
}
std::string DocKey(const char* kind, const std::string& job, int32_t doc) {
  return absl::StrCat(kind, "/", job, "/", Hex(doc, 8));
}
std::string EventKey(const std::string& job, int64_t offset) {
  return absl::StrCat("e/", job, "/", Hex(offset, 16));
}
// The smallest key after every key that starts with `prefix`.
std::string PrefixEnd(std::string prefix) {
  prefix.back() = static_cast<char>(prefix.back() + 1);
  return prefix;
}

absl::Status FromRocks(const rocksdb::Status& s, const char* what) {
  if (s.ok()) return absl::OkStatus();
  if (s.IsNotFound()) return absl::NotFoundError(absl::StrCat(what, ": ", s.ToString()));
  if (s.IsCorruption()) return absl::DataLossError(absl::StrCat(what, ": ", s.ToString()));
  return absl::UnavailableError(absl::StrCat(what, ": ", s.ToString()));
}

// Scans keys in [begin, end), stopping when `fn` returns false.
template <typename Fn>
absl::Status Scan(rocksdb::DB* db, const std::string& begin, const std::string& end, Fn fn) {
  rocksdb::ReadOptions ro;
  rocksdb::Slice upper(end);
  ro.iterate_upper_bound = &upper;
  std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(ro));
  for (it->Seek(begin); it->Valid(); it->Next()) {
    if (!fn(std::string_view(it->key().data(), it->key().size()),
            std::string_view(it->value().data(), it->value().size()))) {
      break;
    }
  }
  return FromRocks(it->status(), "scan");
}

}  // namespace

absl::StatusOr<std::unique_ptr<JobStore>> JobStore::Open(const std::string& path) {
  rocksdb::Options options;
  options.create_if_missing = true;
  options.max_background_jobs = 2;
  options.write_buffer_size = 32 << 20;
  // Token chunks and archive blocks are written once and deleted by range when a job ends.
  options.compression = rocksdb::kLZ4Compression;
  // Index and filter blocks in a fixed cache rather than pinned per table: the coordinator's
  // memory must not grow with the tokens it stores (a 2 GB document is ~2 GB of SST files).
  rocksdb::BlockBasedTableOptions table;
  table.block_cache = rocksdb::NewLRUCache(32 << 20);
  table.cache_index_and_filter_blocks = true;
  options.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(options, path, &db);
  if (!s.ok()) return FromRocks(s, absl::StrCat("open ", path).c_str());
  return std::unique_ptr<JobStore>(new JobStore(db));
}

JobStore::~JobStore() { delete db_; }

absl::Status JobStore::Apply(const std::string& job_id, const Write& write, bool sync) {
  rocksdb::WriteBatch batch;
  if (write.header != nullptr) {
    v1::Job header = *write.header;
    header.clear_documents();
    batch.Put("j/" + job_id, header.SerializeAsString());
  }
  for (const v1::DocumentStatus* d : write.documents) {
    batch.Put(DocKey("d", job_id, d->index()), d->SerializeAsString());
  }
  if (write.event != nullptr) {
    batch.Put(EventKey(job_id, write.event->offset()), write.event->SerializeAsString());
  }
  if (write.idempotency) batch.Put("i/" + write.idempotency->first, write.idempotency->second);
  rocksdb::WriteOptions wo;
  wo.sync = sync;
  return FromRocks(db_->Write(wo, &batch), "write job");
}

absl::StatusOr<std::vector<StoredJob>> JobStore::LoadJobs() const {
  std::vector<StoredJob> jobs;
  absl::Status status = Scan(db_, "j/", "j0", [&](std::string_view, std::string_view value) {
    StoredJob job;
    if (job.header.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
      jobs.push_back(std::move(job));
    }
    return true;
  });
  if (!status.ok()) return status;
  for (StoredJob& job : jobs) {
    const std::string& id = job.header.job_id();
    status = Scan(db_, absl::StrCat("d/", id, "/"), absl::StrCat("d/", id, "0"),
                  [&](std::string_view, std::string_view value) {
                    v1::DocumentStatus d;
                    if (d.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
                      job.documents.push_back(std::move(d));
                    }
                    return true;
                  });
    if (!status.ok()) return status;
    // The last event key gives the count: offsets are dense.
    rocksdb::ReadOptions ro;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro));
    it->SeekForPrev(absl::StrCat("e/", id, "0"));
    const std::string prefix = absl::StrCat("e/", id, "/");
    if (it->Valid() && it->key().starts_with(prefix)) {
      uint64_t last = 0;
      const std::string hex = it->key().ToString().substr(prefix.size());
      if (absl::SimpleHexAtoi(hex, &last)) job.events = static_cast<int64_t>(last) + 1;
    }
  }
  return jobs;
}

absl::StatusOr<v1::JobEvent> JobStore::GetEvent(const std::string& job_id, int64_t offset) const {
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), EventKey(job_id, offset), &value);
  if (!s.ok()) return FromRocks(s, "event");
  v1::JobEvent event;
  if (!event.ParseFromString(value)) return absl::DataLossError("damaged event record");
  return event;
}

absl::StatusOr<std::optional<std::string>> JobStore::FindIdempotencyKey(
    const std::string& key) const {
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), "i/" + key, &value);
  if (s.IsNotFound()) return std::optional<std::string>();
  if (!s.ok()) return FromRocks(s, "idempotency key");
  return std::optional<std::string>(value);
}

absl::Status JobStore::PutTokenChunk(const std::string& job_id, int32_t doc, int64_t chunk,
                                     std::span<const int32_t> tokens) {
  const std::string key = absl::StrCat(DocKey("t", job_id, doc), "/", Hex(chunk, 12));
  rocksdb::Slice value(reinterpret_cast<const char*>(tokens.data()), tokens.size_bytes());
  return FromRocks(db_->Put(rocksdb::WriteOptions(), key, value), "write tokens");
}

absl::Status JobStore::ReadTokens(
    const std::string& job_id, int32_t doc, int64_t from, int64_t max_slice,
    const std::function<bool(int64_t, std::span<const int32_t>)>& sink) const {
  const std::string prefix = DocKey("t", job_id, doc) + "/";
  bool stop = false;
  std::vector<int32_t> tokens;
  for (int64_t chunk = from / kTokensPerChunk; !stop; ++chunk) {
    std::string value;
    rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), prefix + Hex(chunk, 12), &value);
    if (s.IsNotFound()) break;
    if (!s.ok()) return FromRocks(s, "read tokens");
    tokens.resize(value.size() / sizeof(int32_t));
    std::memcpy(tokens.data(), value.data(), tokens.size() * sizeof(int32_t));
    const int64_t base = chunk * kTokensPerChunk;
    for (int64_t i = std::max<int64_t>(0, from - base); i < static_cast<int64_t>(tokens.size());
         i += max_slice) {
      const int64_t n = std::min<int64_t>(max_slice, static_cast<int64_t>(tokens.size()) - i);
      if (!sink(base + i, std::span<const int32_t>(tokens.data() + i, n))) {
        stop = true;
        break;
      }
    }
  }
  return absl::OkStatus();
}

absl::Status JobStore::PutSnapshotPart(const std::string& job_id, int32_t doc, int64_t seq,
                                       int64_t part, std::string_view bytes) {
  const std::string key =
      absl::StrCat(DocKey("s", job_id, doc), "/", Hex(seq, 12), "/", Hex(part, 8));
  return FromRocks(
      db_->Put(rocksdb::WriteOptions(), key, rocksdb::Slice(bytes.data(), bytes.size())),
      "write snapshot");
}

absl::Status JobStore::PutArchiveBlock(const std::string& job_id, int32_t doc, int64_t seq,
                                       int64_t n, std::string_view serialized_block) {
  const std::string key = absl::StrCat(DocKey("a", job_id, doc), "/", Hex(seq, 12), "/", Hex(n, 8));
  return FromRocks(db_->Put(rocksdb::WriteOptions(), key,
                            rocksdb::Slice(serialized_block.data(), serialized_block.size())),
                   "write archive block");
}

absl::Status JobStore::CommitCheckpoint(const std::string& job_id, int32_t doc,
                                        const CommittedCheckpoint& c) {
  rocksdb::WriteBatch batch;
  batch.Put(DocKey("m", job_id, doc), absl::StrCat(c.seq, " ", c.document_tokens, " ",
                                                   c.snapshot_parts, "\n", c.archive_error));
  const std::string snapshots = DocKey("s", job_id, doc) + "/";
  batch.DeleteRange(db_->DefaultColumnFamily(), snapshots, snapshots + Hex(c.seq, 12));
  rocksdb::WriteOptions wo;
  wo.sync = true;  // the archive blocks and slices written before are in the same WAL
  return FromRocks(db_->Write(wo, &batch), "commit checkpoint");
}

absl::StatusOr<CommittedCheckpoint> JobStore::GetCheckpoint(const std::string& job_id,
                                                            int32_t doc) const {
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), DocKey("m", job_id, doc), &value);
  CommittedCheckpoint c;
  if (s.IsNotFound()) return c;
  if (!s.ok()) return FromRocks(s, "checkpoint");
  const size_t newline = value.find('\n');
  if (newline != std::string::npos) c.archive_error = value.substr(newline + 1);
  std::vector<std::string> f = absl::StrSplit(value.substr(0, newline), ' ');
  if (f.size() != 3 || !absl::SimpleAtoi(f[0], &c.seq) ||
      !absl::SimpleAtoi(f[1], &c.document_tokens) || !absl::SimpleAtoi(f[2], &c.snapshot_parts)) {
    return absl::DataLossError("damaged checkpoint record");
  }
  return c;
}

absl::Status JobStore::DropUncommitted(const std::string& job_id, int32_t doc,
                                       int64_t committed_seq) {
  rocksdb::WriteBatch batch;
  for (const char* kind : {"s", "a"}) {
    const std::string prefix = DocKey(kind, job_id, doc) + "/";
    batch.DeleteRange(db_->DefaultColumnFamily(), prefix + Hex(committed_seq + 1, 12),
                      PrefixEnd(prefix));
  }
  return FromRocks(db_->Write(rocksdb::WriteOptions(), &batch), "drop checkpoint");
}

absl::Status JobStore::ReadSnapshot(const std::string& job_id, int32_t doc,
                                    const CommittedCheckpoint& c,
                                    const std::function<bool(std::string_view)>& sink) const {
  const std::string prefix = absl::StrCat(DocKey("s", job_id, doc), "/", Hex(c.seq, 12), "/");
  int64_t parts = 0;
  absl::Status status =
      Scan(db_, prefix, PrefixEnd(prefix), [&](std::string_view, std::string_view v) {
        ++parts;
        return sink(v);
      });
  if (status.ok() && parts != c.snapshot_parts) {
    return absl::DataLossError(
        absl::StrCat("checkpoint ", c.seq, " has ", parts, " of ", c.snapshot_parts, " parts"));
  }
  return status;
}

absl::Status JobStore::ReadArchive(const std::string& job_id, int32_t doc,
                                   const CommittedCheckpoint& c,
                                   const std::function<bool(std::string_view)>& sink) const {
  const std::string prefix = DocKey("a", job_id, doc) + "/";
  return Scan(db_, prefix, prefix + Hex(c.seq + 1, 12),
              [&](std::string_view, std::string_view v) { return sink(v); });
}

absl::Status JobStore::DeletePrefix(const std::string& prefix) {
  rocksdb::WriteBatch batch;
  batch.DeleteRange(db_->DefaultColumnFamily(), prefix, PrefixEnd(prefix));
  return FromRocks(db_->Write(rocksdb::WriteOptions(), &batch), "delete");
}

absl::Status JobStore::DeleteCheckpoints(const std::string& job_id, int32_t doc) {
  for (const char* kind : {"s", "a"}) {
    if (absl::Status s = DeletePrefix(DocKey(kind, job_id, doc) + "/"); !s.ok()) return s;
  }
  return FromRocks(db_->Delete(rocksdb::WriteOptions(), DocKey("m", job_id, doc)), "delete");
}

absl::Status JobStore::DeleteJobWorkData(const std::string& job_id) {
  for (const char* kind : {"t", "s", "a", "m"}) {
    if (absl::Status s = DeletePrefix(absl::StrCat(kind, "/", job_id, "/")); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status JobStore::DeleteJob(const std::string& job_id) {
  if (absl::Status s = DeleteJobWorkData(job_id); !s.ok()) return s;
  for (const char* kind : {"d", "e"}) {
    if (absl::Status s = DeletePrefix(absl::StrCat(kind, "/", job_id, "/")); !s.ok()) return s;
  }
  return FromRocks(db_->Delete(rocksdb::WriteOptions(), "j/" + job_id), "delete");
}

uint64_t JobStore::SizeBytes() const {
  uint64_t sst = 0, mem = 0;
  db_->GetIntProperty("rocksdb.live-sst-files-size", &sst);
  db_->GetIntProperty("rocksdb.cur-size-all-mem-tables", &mem);
  return sst + mem;
}

absl::Status JobStore::Checkpoint(const std::string& dir) const {
  rocksdb::Checkpoint* raw = nullptr;
  rocksdb::Status s = rocksdb::Checkpoint::Create(db_, &raw);
  if (!s.ok()) return FromRocks(s, "checkpoint");
  std::unique_ptr<rocksdb::Checkpoint> checkpoint(raw);
  // log_size_for_flush 0: flush the memtables first, so the copy needs no write-ahead log.
  return FromRocks(checkpoint->CreateCheckpoint(dir, /*log_size_for_flush=*/0),
                   absl::StrCat("checkpoint into ", dir).c_str());
}

}  // namespace longread::coordinator
