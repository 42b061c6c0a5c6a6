#include "cache/cache_db.h"

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/table.h>

#include <filesystem>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "cache/byte_io.h"

namespace longread::cache {
namespace {

rocksdb::CompressionType ToRocks(BlockCompression c) {
  switch (c) {
    case BlockCompression::kLz4:
      return rocksdb::kLZ4Compression;
    case BlockCompression::kZstd:
      return rocksdb::kZSTD;
    case BlockCompression::kNone:
      break;
  }
  return rocksdb::kNoCompression;
}

}  // namespace

absl::Status FromRocks(const rocksdb::Status& status, std::string_view context) {
  if (status.ok()) return absl::OkStatus();
  std::string message = absl::StrCat(Sv(context), ": rocksdb: ", status.ToString());
  if (status.IsCorruption()) return absl::DataLossError(message);
  if (status.IsNotFound()) return absl::NotFoundError(message);
  if (status.IsIOError()) return absl::UnavailableError(message);
  return absl::InternalError(message);
}

absl::StatusOr<std::unique_ptr<CacheDb>> CacheDb::Open(const std::string& path,
                                                       const CacheDbOptions& options) {
  rocksdb::DBOptions db_options;
  db_options.create_if_missing = options.create_if_missing;
  db_options.create_missing_column_families = true;
  // A torn WAL tail (a crash mid-write) is dropped back to the last complete WriteBatch; since
  // every snapshot is one WriteBatch, what survives is always a whole snapshot.
  db_options.wal_recovery_mode = rocksdb::WALRecoveryMode::kPointInTimeRecovery;
  db_options.paranoid_checks = true;

  rocksdb::ColumnFamilyOptions snapshot_cf;
  snapshot_cf.compression = ToRocks(options.snapshot_block_compression);
  snapshot_cf.write_buffer_size = options.snapshot_write_buffer_bytes;
  // A full snapshot can fill a memtable by itself; room for a few keeps writes from stalling
  // behind a flush.
  snapshot_cf.max_write_buffer_number = 4;
  if (options.snapshot_blob_files) {
    snapshot_cf.enable_blob_files = true;
    snapshot_cf.min_blob_size = 4096;  // heads stay inline; records go to blob files
    snapshot_cf.blob_compression_type = snapshot_cf.compression;
    snapshot_cf.enable_blob_garbage_collection = true;  // reclaim deleted records' space
  }
  // Job state is small; a small memtable also keeps the WAL preallocation (sized from the
  // largest memtable) from being set by these families.
  rocksdb::ColumnFamilyOptions small_cf;
  small_cf.write_buffer_size = 4u << 20;
  rocksdb::ColumnFamilyOptions job_cf = small_cf;
  job_cf.compression = rocksdb::kNoCompression;

  // Archived blocks are small records (KiB) written in batches while reading and read a few at a
  // time at answer time; bf16/fp32 noise does not compress.
  rocksdb::ColumnFamilyOptions archive_cf;
  archive_cf.write_buffer_size = 16u << 20;
  archive_cf.compression = rocksdb::kNoCompression;

  // create_missing_column_families adds a family that an older database lacks.
  std::vector<rocksdb::ColumnFamilyDescriptor> families = {
      {rocksdb::kDefaultColumnFamilyName, small_cf},
      {kSnapshotColumnFamily, snapshot_cf},
      {kJobStateColumnFamily, job_cf},
      {kBlockArchiveColumnFamily, archive_cf},
  };

  auto cache = std::unique_ptr<CacheDb>(new CacheDb());
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::Status s = rocksdb::DB::Open(db_options, path, families, &handles, &cache->db_);
  if (!s.ok() && s.IsCorruption() && options.move_aside_if_corrupt) {
    std::string aside = absl::StrCat(path, ".corrupt-", absl::ToUnixSeconds(absl::Now()));
    std::error_code ec;
    std::filesystem::rename(path, aside, ec);
    if (ec) {
      return absl::DataLossError(absl::StrCat("cache db at ", path, " is damaged (", s.ToString(),
                                              ") and could not be moved aside: ", ec.message()));
    }
    cache->moved_aside_to_ = aside;
    handles.clear();
    s = rocksdb::DB::Open(db_options, path, families, &handles, &cache->db_);
  }
  if (!s.ok()) return FromRocks(s, absl::StrCat("opening cache db at ", path));
  cache->default_cf_ = handles[0];
  cache->snapshots_ = handles[1];
  cache->job_state_ = handles[2];
  cache->block_archive_ = handles[3];
  return cache;
}

CacheDb::~CacheDb() {
  if (db_ == nullptr) return;
  for (rocksdb::ColumnFamilyHandle* h : {default_cf_, snapshots_, job_state_, block_archive_}) {
    if (h != nullptr) db_->DestroyColumnFamilyHandle(h);
  }
  db_->Close();
  delete db_;
}

}  // namespace longread::cache
