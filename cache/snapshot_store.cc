#include "cache/snapshot_store.h"

#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>

#include <algorithm>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cache/byte_io.h"
#include "cache/status_macros.h"

namespace longread::cache {
namespace {

using engine::MemorySnapshot;

constexpr std::string_view kHeadPrefix = "head/";

std::string RecordPrefix(std::string_view doc_id) {
  return absl::StrCat("snap/", Sv(doc_id), Sv(std::string_view("\0", 1)));
}
std::string RecordPrefixEnd(std::string_view doc_id) {
  return absl::StrCat("snap/", Sv(doc_id), Sv(std::string_view("\1", 1)));
}

absl::Status ValidateDocId(std::string_view doc_id) {
  if (doc_id.empty()) return absl::InvalidArgumentError("doc_id is empty");
  if (doc_id.find('\0') != std::string_view::npos) {
    return absl::InvalidArgumentError("doc_id contains a NUL byte");
  }
  return absl::OkStatus();
}

absl::Status CheckIdentity(std::string_view doc_id, const MemorySnapshot& s,
                           const ExpectedIdentity& expected) {
  if (s.model_fingerprint == expected.model_fingerprint && s.config_hash == expected.config_hash) {
    return absl::OkStatus();
  }
  return absl::FailedPreconditionError(absl::StrFormat(
      "snapshot of document '%s' was made with model fingerprint '%s' and config hash %#x; "
      "this run has model fingerprint '%s' and config hash %#x",
      doc_id, s.model_fingerprint, s.config_hash, expected.model_fingerprint,
      expected.config_hash));
}

DocumentInfo ToInfo(std::string doc_id, const HeadRecord& head) {
  DocumentInfo info;
  info.doc_id = std::move(doc_id);
  info.job_id = head.job_id;
  info.segment_index = head.segment_index;
  info.last_write = absl::FromUnixMicros(head.last_write_unix_micros);
  info.stored_bytes = head.stored_bytes;
  info.chain_length = static_cast<int>(head.chain.size());
  return info;
}

// Releases a RocksDB read snapshot when the read is done.
class ReadSnapshot {
 public:
  explicit ReadSnapshot(rocksdb::DB* db) : db_(db), snapshot_(db->GetSnapshot()) {}
  ~ReadSnapshot() { db_->ReleaseSnapshot(snapshot_); }
  rocksdb::ReadOptions options() const {
    rocksdb::ReadOptions ro;
    ro.snapshot = snapshot_;
    ro.verify_checksums = true;
    return ro;
  }

 private:
  rocksdb::DB* db_;
  const rocksdb::Snapshot* snapshot_;
};

}  // namespace

std::string HeadKey(std::string_view doc_id) { return absl::StrCat(Sv(kHeadPrefix), Sv(doc_id)); }

std::string RecordKey(std::string_view doc_id, uint64_t seq) {
  return absl::StrCat(RecordPrefix(doc_id), absl::StrFormat("%016x", seq));
}

SnapshotStore::SnapshotStore(CacheDb* db, SnapshotStoreOptions options)
    : db_(db), options_(std::move(options)) {}

absl::StatusOr<PutResult> SnapshotStore::Put(std::string_view doc_id,
                                             const MemorySnapshot& snapshot,
                                             const PutOptions& options) {
  CACHE_RETURN_IF_ERROR(ValidateDocId(doc_id));
  CACHE_RETURN_IF_ERROR(ValidateShape(snapshot));
  const uint64_t content_hash = ContentHash(snapshot);
  const uint64_t full_bytes = FullPayloadBytes(snapshot);

  absl::MutexLock lock(&mu_);
  std::optional<HeadRecord> head;
  bool head_damaged = false;
  {
    std::string value;
    rocksdb::Status s =
        db_->db()->Get(rocksdb::ReadOptions(), db_->snapshots(), HeadKey(doc_id), &value);
    if (s.ok()) {
      absl::StatusOr<HeadRecord> decoded = DecodeHead(value);
      if (decoded.ok()) {
        head = *std::move(decoded);
      } else {
        head_damaged = true;
      }
    } else if (s.IsCorruption()) {
      head_damaged = true;
    } else if (!s.IsNotFound()) {
      return FromRocks(s, absl::StrCat("reading the head of document '", Sv(doc_id), "'"));
    }
  }
  const uint64_t seq = head ? head->next_seq : 1;

  // A delta needs the positions of exactly the record the head ends with.
  auto cached = cache_.find(std::string(doc_id));
  bool delta = head && cached != cache_.end() && cached->second.seq == head->chain.back() &&
               static_cast<int>(head->chain.size()) <= options_.max_delta_chain &&
               cached->second.model_fingerprint == snapshot.model_fingerprint &&
               cached->second.config_hash == snapshot.config_hash &&
               cached->second.n_layers == snapshot.n_layers &&
               cached->second.n_kv_heads == snapshot.n_kv_heads &&
               cached->second.head_dim == snapshot.head_dim;
  PutResult result;
  std::string record;
  if (delta) {
    record = EncodeDeltaRecord(snapshot, cached->second.positions, head->chain.back(), content_hash,
                               options_.encode, &result.raw_payload_bytes);
    delta = result.raw_payload_bytes < full_bytes;
  }
  if (!delta) {
    record = EncodeFullRecord(snapshot, content_hash, options_.encode);
    result.raw_payload_bytes = full_bytes;
  }

  rocksdb::WriteBatch batch;
  HeadRecord next;
  next.next_seq = seq + 1;
  next.last_write_unix_micros = absl::ToUnixMicros(options.now);
  next.segment_index = snapshot.segment_index;
  next.job_id = !options.job_id.empty() ? options.job_id : head ? head->job_id : "";
  if (delta) {
    next.chain = head->chain;
    next.chain_bytes = head->chain_bytes;
  } else if (head) {
    for (uint64_t old : head->chain) batch.Delete(db_->snapshots(), RecordKey(doc_id, old));
  } else if (head_damaged) {
    batch.DeleteRange(db_->snapshots(), RecordPrefix(doc_id), RecordPrefixEnd(doc_id));
  }
  next.chain.push_back(seq);
  next.chain_bytes.push_back(record.size());
  const uint64_t chain_bytes =
      std::accumulate(next.chain_bytes.begin(), next.chain_bytes.end(), uint64_t{0});
  // The head is fixed-size given its chain, so its own size can be counted before encoding.
  next.stored_bytes = chain_bytes + EncodeHead(next).size();
  batch.Put(db_->snapshots(), RecordKey(doc_id, seq), record);
  batch.Put(db_->snapshots(), HeadKey(doc_id), EncodeHead(next));

  rocksdb::WriteOptions write_options;
  write_options.sync = options.sync;
  CACHE_RETURN_IF_ERROR(FromRocks(db_->db()->Write(write_options, &batch),
                                  absl::StrCat("writing snapshot of document '", Sv(doc_id), "'")));
  Remember(doc_id, seq, snapshot);

  result.seq = seq;
  result.kind = delta ? RecordKind::kDelta : RecordKind::kFull;
  result.record_bytes = record.size();
  result.document_bytes = next.stored_bytes;
  result.chain_length = static_cast<int>(next.chain.size());
  return result;
}

absl::StatusOr<MemorySnapshot> SnapshotStore::GetLatest(std::string_view doc_id,
                                                        const ExpectedIdentity& expected) const {
  CACHE_RETURN_IF_ERROR(ValidateDocId(doc_id));
  ReadSnapshot read(db_->db());
  const rocksdb::ReadOptions ro = read.options();
  std::string head_value;
  rocksdb::Status s = db_->db()->Get(ro, db_->snapshots(), HeadKey(doc_id), &head_value);
  if (s.IsNotFound()) {
    return absl::NotFoundError(absl::StrCat("no snapshot stored for document '", Sv(doc_id), "'"));
  }
  CACHE_RETURN_IF_ERROR(FromRocks(s, absl::StrCat("reading head of document '", Sv(doc_id), "'")));
  CACHE_ASSIGN_OR_RETURN(HeadRecord head, DecodeHead(head_value));

  MemorySnapshot state;
  uint64_t content_hash = 0;
  for (size_t i = 0; i < head.chain.size(); ++i) {
    const std::string where = absl::StrCat("document '", Sv(doc_id), "' record ", head.chain[i],
                                           " (chain position ", i, " of ", head.chain.size(), ")");
    rocksdb::PinnableSlice value;
    s = db_->db()->Get(ro, db_->snapshots(), RecordKey(doc_id, head.chain[i]), &value);
    if (s.IsNotFound()) return absl::DataLossError(absl::StrCat(where, ": missing"));
    CACHE_RETURN_IF_ERROR(FromRocks(s, where));
    if (value.size() != head.chain_bytes[i]) {
      return absl::DataLossError(absl::StrCat(where, ": ", value.size(),
                                              " bytes but the head says ", head.chain_bytes[i]));
    }
    absl::StatusOr<DecodedRecord> rec = DecodeRecord(value.ToStringView());
    if (!rec.ok()) {
      return absl::Status(rec.status().code(), absl::StrCat(where, ": ", rec.status().message()));
    }
    CACHE_RETURN_IF_ERROR(CheckIdentity(doc_id, rec->state, expected));
    const RecordKind want = i == 0 ? RecordKind::kFull : RecordKind::kDelta;
    if (rec->kind != want) {
      return absl::DataLossError(absl::StrCat(where, ": wrong record kind"));
    }
    content_hash = rec->content_hash;
    if (i == 0) {
      state = std::move(rec->state);
    } else {
      if (rec->base_seq != head.chain[i - 1]) {
        return absl::DataLossError(absl::StrCat(where, ": delta base ", rec->base_seq,
                                                " is not the previous chain record"));
      }
      absl::Status applied = ApplyDelta(*std::move(rec), &state);
      if (!applied.ok()) return absl::DataLossError(absl::StrCat(where, ": ", applied.message()));
    }
  }
  if (ContentHash(state) != content_hash) {
    return absl::DataLossError(absl::StrCat(
        "document '", Sv(doc_id), "': reconstructed snapshot does not match its content hash"));
  }
  if (absl::Status shape = ValidateShape(state); !shape.ok()) {
    return absl::DataLossError(absl::StrCat("document '", Sv(doc_id), "': ", shape.message()));
  }
  if (state.segment_index != head.segment_index) {
    return absl::DataLossError(absl::StrCat("document '", Sv(doc_id), "': snapshot segment_index ",
                                            state.segment_index, " but head says ",
                                            head.segment_index));
  }
  return state;
}

absl::StatusOr<std::vector<std::pair<std::string, absl::StatusOr<HeadRecord>>>>
SnapshotStore::ScanHeads() const {
  std::vector<std::pair<std::string, absl::StatusOr<HeadRecord>>> heads;
  const std::string upper = "head0";  // '0' follows '/'
  rocksdb::Slice upper_slice(upper);
  rocksdb::ReadOptions ro;
  ro.iterate_upper_bound = &upper_slice;
  std::unique_ptr<rocksdb::Iterator> it(db_->db()->NewIterator(ro, db_->snapshots()));
  for (it->Seek(kHeadPrefix); it->Valid(); it->Next()) {
    std::string doc_id(it->key().ToStringView().substr(kHeadPrefix.size()));
    heads.emplace_back(std::move(doc_id), DecodeHead(it->value().ToStringView()));
  }
  CACHE_RETURN_IF_ERROR(FromRocks(it->status(), "scanning snapshot heads"));
  return heads;
}

absl::StatusOr<DocumentInfo> SnapshotStore::Info(std::string_view doc_id) const {
  CACHE_RETURN_IF_ERROR(ValidateDocId(doc_id));
  std::string value;
  rocksdb::Status s =
      db_->db()->Get(rocksdb::ReadOptions(), db_->snapshots(), HeadKey(doc_id), &value);
  if (s.IsNotFound()) {
    return absl::NotFoundError(absl::StrCat("no snapshot stored for document '", Sv(doc_id), "'"));
  }
  CACHE_RETURN_IF_ERROR(FromRocks(s, absl::StrCat("reading head of document '", Sv(doc_id), "'")));
  CACHE_ASSIGN_OR_RETURN(HeadRecord head, DecodeHead(value));
  return ToInfo(std::string(doc_id), head);
}

absl::StatusOr<std::vector<DocumentInfo>> SnapshotStore::List() const {
  CACHE_ASSIGN_OR_RETURN(auto heads, ScanHeads());
  std::vector<DocumentInfo> infos;
  for (auto& [doc_id, head] : heads) {
    if (head.ok()) infos.push_back(ToInfo(std::move(doc_id), *head));
  }
  return infos;
}

absl::Status SnapshotStore::DeleteDocument(std::string_view doc_id) {
  CACHE_RETURN_IF_ERROR(ValidateDocId(doc_id));
  absl::MutexLock lock(&mu_);
  return DeleteLocked(doc_id);
}

absl::Status SnapshotStore::DeleteLocked(std::string_view doc_id) {
  rocksdb::WriteBatch batch;
  batch.Delete(db_->snapshots(), HeadKey(doc_id));
  batch.DeleteRange(db_->snapshots(), RecordPrefix(doc_id), RecordPrefixEnd(doc_id));
  Forget(doc_id);
  return FromRocks(db_->db()->Write(rocksdb::WriteOptions(), &batch),
                   absl::StrCat("deleting document '", Sv(doc_id), "'"));
}

absl::StatusOr<int> SnapshotStore::DeleteJob(std::string_view job_id) {
  if (job_id.empty()) return absl::InvalidArgumentError("job_id is empty");
  absl::MutexLock lock(&mu_);
  CACHE_ASSIGN_OR_RETURN(auto heads, ScanHeads());
  int deleted = 0;
  for (const auto& [doc_id, head] : heads) {
    if (!head.ok() || head->job_id != job_id) continue;
    CACHE_RETURN_IF_ERROR(DeleteLocked(doc_id));
    ++deleted;
  }
  return deleted;
}

absl::StatusOr<GcStats> SnapshotStore::GarbageCollect(absl::Time now, const GcOptions& options) {
  absl::MutexLock lock(&mu_);
  CACHE_ASSIGN_OR_RETURN(auto heads, ScanHeads());
  GcStats stats;
  std::vector<DocumentInfo> live;
  for (auto& [doc_id, head] : heads) {
    if (!head.ok()) {  // unreadable: nothing can resume from it
      CACHE_RETURN_IF_ERROR(DeleteLocked(doc_id));
      ++stats.expired;
      continue;
    }
    DocumentInfo info = ToInfo(std::move(doc_id), *head);
    if (options.ttl != absl::InfiniteDuration() && now - info.last_write > options.ttl) {
      CACHE_RETURN_IF_ERROR(DeleteLocked(info.doc_id));
      ++stats.expired;
      stats.bytes_freed += info.stored_bytes;
      continue;
    }
    stats.bytes_remaining += info.stored_bytes;
    live.push_back(std::move(info));
  }
  std::sort(live.begin(), live.end(), [](const DocumentInfo& a, const DocumentInfo& b) {
    return a.last_write != b.last_write ? a.last_write < b.last_write : a.doc_id < b.doc_id;
  });
  for (const DocumentInfo& info : live) {
    if (stats.bytes_remaining <= options.max_total_bytes) break;
    CACHE_RETURN_IF_ERROR(DeleteLocked(info.doc_id));
    ++stats.evicted;
    stats.bytes_freed += info.stored_bytes;
    stats.bytes_remaining -= info.stored_bytes;
  }
  return stats;
}

void SnapshotStore::Remember(std::string_view doc_id, uint64_t seq,
                             const MemorySnapshot& snapshot) {
  if (options_.max_cached_documents == 0) return;
  std::string key(doc_id);
  auto it = cache_.find(key);
  if (it == cache_.end()) {
    while (cache_.size() >= options_.max_cached_documents) {
      cache_.erase(lru_.back());
      lru_.pop_back();
    }
    lru_.push_front(key);
    it = cache_.emplace(key, CachedPositions{}).first;
    it->second.lru = lru_.begin();
  } else {
    lru_.splice(lru_.begin(), lru_, it->second.lru);
  }
  CachedPositions& c = it->second;
  c.seq = seq;
  c.model_fingerprint = snapshot.model_fingerprint;
  c.config_hash = snapshot.config_hash;
  c.n_layers = snapshot.n_layers;
  c.n_kv_heads = snapshot.n_kv_heads;
  c.head_dim = snapshot.head_dim;
  c.positions.resize(snapshot.heads.size());
  for (size_t h = 0; h < snapshot.heads.size(); ++h) c.positions[h] = snapshot.heads[h].positions;
}

void SnapshotStore::Forget(std::string_view doc_id) {
  auto it = cache_.find(std::string(doc_id));
  if (it == cache_.end()) return;
  lru_.erase(it->second.lru);
  cache_.erase(it);
}

ResumePoint GetLatestOrRestart(SnapshotStore& store, std::string_view doc_id,
                               const ExpectedIdentity& expected) {
  ResumePoint point;
  absl::StatusOr<MemorySnapshot> latest = store.GetLatest(doc_id, expected);
  if (latest.ok()) {
    point.snapshot = *std::move(latest);
  } else if (!absl::IsNotFound(latest.status())) {
    point.refused = absl::Status(
        latest.status().code(),
        absl::StrCat("restarting document from the beginning: ", latest.status().message()));
    if (absl::IsDataLoss(latest.status())) {
      if (absl::Status deleted = store.DeleteDocument(doc_id); !deleted.ok()) {
        point.refused = absl::Status(
            point.refused.code(),
            absl::StrCat(point.refused.message(), "; deleting it failed too: ", deleted.message()));
      }
    }
  }
  return point;
}

}  // namespace longread::cache
