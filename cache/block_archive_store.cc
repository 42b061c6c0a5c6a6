#include "cache/block_archive_store.h"

#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>
#include <xxhash.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <ctime>
#include <iterator>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "cache/byte_io.h"
#include "cache/status_macros.h"
#include "kernels/thread_pool.h"

namespace longread::cache {
namespace {

using engine::ArchivedBlock;
using engine::BlockBounds;

constexpr uint32_t kPayloadMagic = 0x4241524c;         // "LRAB" little-endian
constexpr uint32_t kRepresentativeMagic = 0x5241524c;  // "LRAR"
constexpr uint32_t kMarkerMagic = 0x4d41524c;          // "LRAM"
constexpr uint32_t kArchiveVersion = 1;
constexpr size_t kPayloadHeaderBytes = 36;
constexpr size_t kRepresentativeHeaderBytes = 56;
constexpr size_t kChecksumBytes = 8;

std::string DocPrefix(std::string_view kind, std::string_view doc_id, char end) {
  return absl::StrCat("a/", Sv(kind), "/", Sv(doc_id), Sv(std::string_view(&end, 1)));
}
std::string MarkerKey(std::string_view doc_id) { return absl::StrCat("a/m/", Sv(doc_id)); }
// Fixed-width lowercase hex, as "%0<width>x" prints it (two keys per Put: formatting by hand is
// several times cheaper than StrFormat).
void AppendHex(std::string* out, uint64_t value, int width) {
  static constexpr char kDigits[] = "0123456789abcdef";
  const size_t at = out->size();
  out->resize(at + width);
  for (int i = width - 1; i >= 0; --i, value >>= 4) (*out)[at + i] = kDigits[value & 0xf];
}
std::string HeadPrefix(std::string_view kind, std::string_view doc_id, int32_t layer,
                       int32_t kv_head) {
  std::string out = DocPrefix(kind, doc_id, '\0');
  AppendHex(&out, static_cast<uint32_t>(layer), 4);
  out += '/';
  AppendHex(&out, static_cast<uint32_t>(kv_head), 4);
  out += '/';
  return out;
}
std::string BlockKey(std::string_view kind, std::string_view doc_id, int32_t layer, int32_t kv_head,
                     int64_t block_id, int64_t first_position) {
  std::string out = HeadPrefix(kind, doc_id, layer, kv_head);
  out.reserve(out.size() + 33);
  AppendHex(&out, static_cast<uint64_t>(block_id), 16);
  out += '/';
  AppendHex(&out, static_cast<uint64_t>(first_position), 16);
  return out;
}

// Keys hold a NUL separator; error messages show it escaped.
std::string Printable(std::string_view key) {
  std::string out;
  for (char c : key) {
    if (c == '\0') {
      out += "\\0";
    } else {
      out += c;
    }
  }
  return out;
}

absl::Status ValidateDocId(std::string_view doc_id) {
  if (doc_id.empty()) return absl::InvalidArgumentError("archive: doc_id is empty");
  if (doc_id.find('\0') != std::string_view::npos) {
    return absl::InvalidArgumentError("archive: doc_id contains a NUL byte");
  }
  return absl::OkStatus();
}

uint16_t ToBf16(float f) {  // round to nearest even; NaN stays NaN
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

float FromBf16(uint16_t h) {
  const uint32_t bits = uint32_t{h} << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

void AppendChecksum(std::string* record) {
  const uint64_t sum = XXH3_64bits(record->data(), record->size());
  record->append(reinterpret_cast<const char*>(&sum), sizeof(sum));
}

absl::Status VerifyChecksum(std::string_view record, const std::string& key, size_t min_bytes) {
  if (record.size() < min_bytes + kChecksumBytes) {
    return absl::DataLossError(absl::StrCat("archive record ", key, ": ", record.size(),
                                            " bytes, fewer than the header's ",
                                            min_bytes + kChecksumBytes));
  }
  uint64_t stored;
  std::memcpy(&stored, record.data() + record.size() - kChecksumBytes, kChecksumBytes);
  if (XXH3_64bits(record.data(), record.size() - kChecksumBytes) != stored) {
    return absl::DataLossError(absl::StrCat("archive record ", key, ": checksum mismatch"));
  }
  return absl::OkStatus();
}

size_t ElementBytes(ArchivePrecision p) { return p == ArchivePrecision::kFp32 ? 4 : 2; }

}  // namespace

namespace block_archive_internal {
// The keys or values of a block as Encode takes them: fp32 (an ArchivedBlock) or bf16 bits (rows
// the GPU memory staged).
struct Elements {
  std::span<const float> fp32;
  std::span<const uint16_t> bf16;
  bool is_bf16 = false;
  size_t size() const { return is_bf16 ? bf16.size() : fp32.size(); }
};

// The fields of a block that Encode reads, from either form.
struct BlockView {
  int32_t layer = 0, kv_head = 0;
  int64_t block_id = 0;
  std::span<const int64_t> positions;
  std::span<const float> scores;
  Elements keys, values;
};

}  // namespace block_archive_internal
using block_archive_internal::BlockView;
using block_archive_internal::Elements;

namespace {

BlockView ViewOf(const ArchivedBlock& b) {
  BlockView v{b.layer, b.kv_head, b.block_id, b.positions, b.scores, {}, {}};
  v.keys.fp32 = b.keys;
  v.values.fp32 = b.values;
  return v;
}
BlockView ViewOf(const engine::Bf16BlockRows& b) {
  BlockView v{b.layer, b.kv_head, b.block_id, b.positions, b.scores, {}, {}};
  v.keys.bf16 = b.keys;
  v.values.bf16 = b.values;
  v.keys.is_bf16 = v.values.is_bf16 = true;
  return v;
}

void PutElements(ByteWriter& w, const Elements& v, ArchivePrecision precision) {
  if (precision == ArchivePrecision::kFp32 && !v.is_bf16) {
    w.PutArray(v.fp32.data(), v.fp32.size());
    return;
  }
  // Converted through a small buffer: one append per chunk, not per element.
  constexpr size_t kChunk = 512;
  if (precision == ArchivePrecision::kFp32) {
    float chunk[kChunk];
    for (size_t i = 0; i < v.bf16.size(); i += kChunk) {
      const size_t m = std::min(kChunk, v.bf16.size() - i);
      for (size_t j = 0; j < m; ++j) chunk[j] = FromBf16(v.bf16[i + j]);
      w.PutArray(chunk, m);
    }
    return;
  }
  uint16_t chunk[kChunk];
  for (size_t i = 0; i < v.size(); i += kChunk) {
    const size_t m = std::min(kChunk, v.size() - i);
    if (v.is_bf16) {
      // ToBf16(FromBf16(h)): h itself, but a NaN comes back quiet, as narrowing the widened
      // block would make it.
      // Branch-free (it vectorizes): (0x7f80 - magnitude) >> 31 is 1 exactly for a NaN.
      for (size_t j = 0; j < m; ++j) {
        const uint32_t h = v.bf16[i + j];
        chunk[j] = static_cast<uint16_t>(h | (((0x7f80u - (h & 0x7fffu)) >> 31) << 6));
      }
    } else {
      for (size_t j = 0; j < m; ++j) chunk[j] = ToBf16(v.fp32[i + j]);
    }
    w.PutArray(chunk, m);
  }
}

std::string EncodePayload(const BlockView& b, int64_t head_dim, ArchivePrecision precision) {
  const size_t n = b.positions.size();
  std::string out;
  out.reserve(kPayloadHeaderBytes + n * 12 + 2 * n * head_dim * ElementBytes(precision) + 8);
  ByteWriter w(&out);
  w.Put(kPayloadMagic);
  w.Put(kArchiveVersion);
  w.Put(static_cast<uint8_t>(precision));
  w.Put(uint8_t{0});
  w.Put(uint16_t{0});
  w.Put(b.layer);
  w.Put(b.kv_head);
  w.Put(static_cast<int32_t>(head_dim));
  w.Put(static_cast<uint32_t>(n));
  w.Put(b.block_id);
  w.PutArray(b.positions.data(), n);
  w.PutArray(b.scores.data(), n);
  PutElements(w, b.keys, precision);
  PutElements(w, b.values, precision);
  w.PadTo4();
  AppendChecksum(&out);
  return out;
}

}  // namespace

// What a representative record holds (FORMAT.md). Outside the anonymous namespace because
// RocksDbBlockArchive::Encoded (a member type, external linkage) holds one: in a unity build GCC
// rejects that (-Wsubobject-linkage).
namespace block_archive_internal {
struct Representative {
  int32_t layer = 0, kv_head = 0;
  int64_t block_id = 0, first_position = 0, last_position = 0;
  uint32_t n_tokens = 0;
  float score_max = 0;
  uint32_t payload_bytes = 0;
  BlockBounds bounds;
};
}  // namespace block_archive_internal
using block_archive_internal::Representative;

namespace {

std::string EncodeRepresentative(const Representative& r, int64_t head_dim) {
  std::string out;
  out.reserve(kRepresentativeHeaderBytes + 8 * head_dim + kChecksumBytes);
  ByteWriter w(&out);
  w.Put(kRepresentativeMagic);
  w.Put(kArchiveVersion);
  w.Put(r.layer);
  w.Put(r.kv_head);
  w.Put(static_cast<int32_t>(head_dim));
  w.Put(r.n_tokens);
  w.Put(r.block_id);
  w.Put(r.first_position);
  w.Put(r.last_position);
  w.Put(r.score_max);
  w.Put(r.payload_bytes);
  w.PutArray(r.bounds.key_min.data(), head_dim);
  w.PutArray(r.bounds.key_max.data(), head_dim);
  AppendChecksum(&out);
  return out;
}

template <typename T>
absl::Status Expect(ByteReader& r, std::string_view field, T want) {
  T got{};
  CACHE_RETURN_IF_ERROR(r.Get(field, &got));
  if (got != want) {
    return r.Error(field, absl::StrCat("is ", got, ", expected ", want));
  }
  return absl::OkStatus();
}

// Decodes and checks a representative stored under `key` for (layer, kv_head, block_id, first).
absl::StatusOr<Representative> DecodeRepresentative(std::string_view value, const std::string& key,
                                                    int32_t layer, int32_t kv_head,
                                                    int64_t block_id, int64_t first,
                                                    int64_t head_dim) {
  const size_t want = kRepresentativeHeaderBytes + 8 * head_dim + kChecksumBytes;
  if (value.size() != want) {
    return absl::DataLossError(absl::StrCat("archive representative ", key, ": ", value.size(),
                                            " bytes, expected ", want));
  }
  CACHE_RETURN_IF_ERROR(VerifyChecksum(value, key, kRepresentativeHeaderBytes));
  const std::string what = absl::StrCat("archive representative ", key);
  ByteReader r(value.substr(0, value.size() - kChecksumBytes), what);
  Representative rep;
  CACHE_RETURN_IF_ERROR(Expect(r, "magic", kRepresentativeMagic));
  CACHE_RETURN_IF_ERROR(Expect(r, "version", kArchiveVersion));
  CACHE_RETURN_IF_ERROR(Expect(r, "layer", layer));
  CACHE_RETURN_IF_ERROR(Expect(r, "kv_head", kv_head));
  CACHE_RETURN_IF_ERROR(Expect(r, "head_dim", static_cast<int32_t>(head_dim)));
  CACHE_RETURN_IF_ERROR(r.Get("n_tokens", &rep.n_tokens));
  CACHE_RETURN_IF_ERROR(Expect(r, "block_id", block_id));
  CACHE_RETURN_IF_ERROR(Expect(r, "first_position", first));
  CACHE_RETURN_IF_ERROR(r.Get("last_position", &rep.last_position));
  CACHE_RETURN_IF_ERROR(r.Get("score_max", &rep.score_max));
  CACHE_RETURN_IF_ERROR(r.Get("payload_bytes", &rep.payload_bytes));
  if (rep.n_tokens == 0 || rep.last_position < first ||
      static_cast<uint64_t>(rep.last_position - first) < rep.n_tokens - 1) {
    return r.Error("n_tokens", "inconsistent with the positions range");
  }
  CACHE_RETURN_IF_ERROR(r.GetArray("key_min", head_dim, &rep.bounds.key_min));
  CACHE_RETURN_IF_ERROR(r.GetArray("key_max", head_dim, &rep.bounds.key_max));
  rep.layer = layer;
  rep.kv_head = kv_head;
  rep.block_id = block_id;
  rep.first_position = first;
  return rep;
}

// Decodes a payload and checks it against its representative.
absl::StatusOr<ArchivedBlock> DecodePayload(std::string_view value, const std::string& key,
                                            const Representative& rep, int64_t head_dim) {
  CACHE_RETURN_IF_ERROR(VerifyChecksum(value, key, kPayloadHeaderBytes));
  const std::string what = absl::StrCat("archive payload ", key);
  ByteReader r(value.substr(0, value.size() - kChecksumBytes), what);
  ArchivedBlock b;
  uint8_t precision = 0, pad8 = 0;
  uint16_t pad16 = 0;
  CACHE_RETURN_IF_ERROR(Expect(r, "magic", kPayloadMagic));
  CACHE_RETURN_IF_ERROR(Expect(r, "version", kArchiveVersion));
  CACHE_RETURN_IF_ERROR(r.Get("precision", &precision));
  if (precision > static_cast<uint8_t>(ArchivePrecision::kBf16)) {
    return r.Error("precision", absl::StrCat("unknown value ", precision));
  }
  CACHE_RETURN_IF_ERROR(r.Get("reserved", &pad8));
  CACHE_RETURN_IF_ERROR(r.Get("reserved", &pad16));
  CACHE_RETURN_IF_ERROR(Expect(r, "layer", rep.layer));
  CACHE_RETURN_IF_ERROR(Expect(r, "kv_head", rep.kv_head));
  CACHE_RETURN_IF_ERROR(Expect(r, "head_dim", static_cast<int32_t>(head_dim)));
  CACHE_RETURN_IF_ERROR(Expect(r, "n_tokens", rep.n_tokens));
  CACHE_RETURN_IF_ERROR(Expect(r, "block_id", rep.block_id));
  const uint64_t n = rep.n_tokens, elements = n * head_dim;
  const size_t elem = ElementBytes(static_cast<ArchivePrecision>(precision));
  const uint64_t body = n * 12 + 2 * elements * elem;
  if (r.remaining() != (body + 3) / 4 * 4) {
    return r.Error("body", absl::StrCat(r.remaining(), " bytes for ", n, " tokens of head_dim ",
                                        head_dim, ", expected ", (body + 3) / 4 * 4));
  }
  CACHE_RETURN_IF_ERROR(r.GetArray("positions", n, &b.positions));
  CACHE_RETURN_IF_ERROR(r.GetArray("scores", n, &b.scores));
  for (std::vector<float>* v : {&b.keys, &b.values}) {
    if (elem == 4) {
      CACHE_RETURN_IF_ERROR(r.GetArray("keys/values", elements, v));
    } else {
      std::vector<uint16_t> half;
      CACHE_RETURN_IF_ERROR(r.GetArray("keys/values", elements, &half));
      v->resize(elements);
      for (uint64_t i = 0; i < elements; ++i) (*v)[i] = FromBf16(half[i]);
    }
  }
  if (b.positions.front() != rep.first_position || b.positions.back() != rep.last_position ||
      !std::is_sorted(b.positions.begin(), b.positions.end()) ||
      std::adjacent_find(b.positions.begin(), b.positions.end()) != b.positions.end()) {
    return absl::DataLossError(absl::StrCat(what, ": positions are not ascending in [",
                                            rep.first_position, ", ", rep.last_position,
                                            "] as the representative says"));
  }
  b.layer = rep.layer;
  b.kv_head = rep.kv_head;
  b.block_id = rep.block_id;
  return b;
}

// Parses "<layer:4>/<head:4>/<block:16>/<first:16>" (lowercase hex), the key suffix after the
// document prefix.
bool ParseSuffix(std::string_view s, int32_t* layer, int32_t* kv_head, int64_t* block_id,
                 int64_t* first) {
  if (s.size() != 4 + 1 + 4 + 1 + 16 + 1 + 16) return false;
  auto hex = [&](size_t at, size_t len, uint64_t* out) {
    *out = 0;
    for (size_t i = at; i < at + len; ++i) {
      const char c = s[i];
      int digit;
      if (c >= '0' && c <= '9') {
        digit = c - '0';
      } else if (c >= 'a' && c <= 'f') {
        digit = c - 'a' + 10;
      } else {
        return false;
      }
      *out = *out * 16 + digit;
    }
    return true;
  };
  uint64_t l, h, b, f;
  if (!hex(0, 4, &l) || s[4] != '/' || !hex(5, 4, &h) || s[9] != '/' || !hex(10, 16, &b) ||
      s[26] != '/' || !hex(27, 16, &f)) {
    return false;
  }
  *layer = static_cast<int32_t>(l);
  *kv_head = static_cast<int32_t>(h);
  *block_id = static_cast<int64_t>(b);
  *first = static_cast<int64_t>(f);
  return true;
}

std::string EncodeMarker(absl::Time now) {
  std::string out;
  ByteWriter w(&out);
  w.Put(kMarkerMagic);
  w.Put(kArchiveVersion);
  w.Put(static_cast<int64_t>(absl::ToUnixMicros(now)));
  AppendChecksum(&out);
  return out;
}

absl::StatusOr<absl::Time> DecodeMarker(std::string_view value, const std::string& key) {
  if (value.size() != 16 + kChecksumBytes) {
    return absl::DataLossError(absl::StrCat("archive marker ", key, ": wrong size"));
  }
  CACHE_RETURN_IF_ERROR(VerifyChecksum(value, key, 16));
  ByteReader r(value.substr(0, 16), absl::StrCat("archive marker ", key));
  int64_t micros = 0;
  CACHE_RETURN_IF_ERROR(Expect(r, "magic", kMarkerMagic));
  CACHE_RETURN_IF_ERROR(Expect(r, "version", kArchiveVersion));
  CACHE_RETURN_IF_ERROR(r.Get("last_write", &micros));
  return absl::FromUnixMicros(micros);
}

float ScoreMax(std::span<const float> scores) {
  float best = -std::numeric_limits<float>::infinity();
  for (float s : scores) {
    if (!std::isnan(s)) best = std::max(best, s);
  }
  return best;
}

}  // namespace

std::string ArchivePayloadKey(std::string_view doc_id, int32_t layer, int32_t kv_head,
                              int64_t block_id, int64_t first_position) {
  return BlockKey("p", doc_id, layer, kv_head, block_id, first_position);
}

std::string ArchiveRepresentativeKey(std::string_view doc_id, int32_t layer, int32_t kv_head,
                                     int64_t block_id, int64_t first_position) {
  return BlockKey("r", doc_id, layer, kv_head, block_id, first_position);
}

RocksDbBlockArchive::RocksDbBlockArchive(CacheDb* db, std::string doc_id, int32_t n_layers,
                                         int32_t n_kv_heads, int64_t head_dim,
                                         BlockArchiveOptions options)
    : db_(db),
      doc_id_(std::move(doc_id)),
      n_layers_(n_layers),
      n_kv_heads_(n_kv_heads),
      head_dim_(head_dim),
      options_(options),
      heads_(static_cast<size_t>(n_layers) * n_kv_heads),
      damaged_(heads_.size()),
      pending_(std::make_unique<rocksdb::WriteBatch>()) {
  if (options_.encode_threads > 1) {
    encode_pool_ = std::make_unique<kernels::ThreadPool>(options_.encode_threads);
  }
  if (options_.background_writes) write_thread_ = std::thread([this] { WriteLoop(); });
}

absl::StatusOr<std::unique_ptr<RocksDbBlockArchive>> RocksDbBlockArchive::Open(
    CacheDb* db, std::string doc_id, int32_t n_layers, int32_t n_kv_heads, int64_t head_dim,
    BlockArchiveOptions options) {
  CACHE_RETURN_IF_ERROR(ValidateDocId(doc_id));
  if (db == nullptr || n_layers <= 0 || n_kv_heads <= 0 || head_dim <= 0 || n_layers > 0xffff ||
      n_kv_heads > 0xffff) {
    return absl::InvalidArgumentError(absl::StrCat("archive: bad shape ", n_layers, " layers x ",
                                                   n_kv_heads, " KV heads x head_dim ", head_dim));
  }
  auto archive = std::unique_ptr<RocksDbBlockArchive>(
      new RocksDbBlockArchive(db, std::move(doc_id), n_layers, n_kv_heads, head_dim, options));
  CACHE_RETURN_IF_ERROR(archive->Load());
  return archive;
}

RocksDbBlockArchive::~RocksDbBlockArchive() {
  {
    absl::MutexLock lock(&mu_);
    if (write_thread_.joinable()) {
      (void)SubmitLocked();
      WaitWrittenLocked();
    } else {
      (void)WriteLocked();
    }
    stop_writing_ = true;
  }
  if (write_thread_.joinable()) write_thread_.join();
}

// Writes the handed-over batches in order, one at a time, outside the lock.
void RocksDbBlockArchive::WriteLoop() {
  rocksdb::WriteOptions write_options;
  write_options.disableWAL = !options_.write_ahead_log;
  absl::MutexLock lock(&mu_);
  for (;;) {
    mu_.Await(absl::Condition(
        +[](RocksDbBlockArchive* a) ABSL_EXCLUSIVE_LOCKS_REQUIRED(a->mu_) {
          return a->stop_writing_ || !a->to_write_.empty();
        },
        this));
    if (to_write_.empty()) return;
    std::unique_ptr<rocksdb::WriteBatch> batch = std::move(to_write_.front());
    to_write_.pop_front();
    writing_ = true;
    mu_.Unlock();
    absl::Status s = FromRocks(db_->db()->Write(write_options, batch.get()),
                               absl::StrCat("writing the archive of document '", doc_id_, "'"));
    batch.reset();
    timespec cpu{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu);
    mu_.Lock();
    stats_.write_thread_cpu_seconds = static_cast<double>(cpu.tv_sec) + 1e-9 * cpu.tv_nsec;
    writing_ = false;
    if (s.ok()) unsynced_ = !options_.write_ahead_log;
    if (!s.ok() && write_error_.ok()) write_error_ = std::move(s);
  }
}

void RocksDbBlockArchive::WaitWrittenLocked() {
  mu_.Await(absl::Condition(
      +[](RocksDbBlockArchive* a)
           ABSL_EXCLUSIVE_LOCKS_REQUIRED(a->mu_) { return a->to_write_.empty() && !a->writing_; },
      this));
}

absl::Status RocksDbBlockArchive::Load() {
  absl::MutexLock lock(&mu_);
  const std::string lower = DocPrefix("r", doc_id_, '\0');
  const std::string upper = DocPrefix("r", doc_id_, '\1');
  rocksdb::Slice upper_slice(upper);
  rocksdb::ReadOptions ro;
  ro.verify_checksums = true;
  ro.iterate_upper_bound = &upper_slice;
  std::unique_ptr<rocksdb::Iterator> it(db_->db()->NewIterator(ro, db_->block_archive()));
  for (it->Seek(lower); it->Valid(); it->Next()) {
    const std::string key(it->key().ToStringView());
    int32_t layer, kv_head;
    int64_t block_id, first;
    const bool parsed = ParseSuffix(std::string_view(key).substr(lower.size()), &layer, &kv_head,
                                    &block_id, &first);
    if (!parsed || layer >= n_layers_ || kv_head >= n_kv_heads_) {
      // A key this archive cannot place: every head's recall is suspect.
      absl::Status bad = absl::DataLossError(
          absl::StrCat("archive representative key ", Printable(key), " is malformed or outside ",
                       n_layers_, " layers x ", n_kv_heads_, " KV heads"));
      for (absl::Status& d : damaged_) {
        if (d.ok()) d = bad;
      }
      continue;
    }
    const int32_t h = layer * n_kv_heads_ + kv_head;
    absl::StatusOr<Representative> rep = DecodeRepresentative(
        it->value().ToStringView(), Printable(key), layer, kv_head, block_id, first, head_dim_);
    if (!rep.ok()) {
      if (damaged_[h].ok()) damaged_[h] = rep.status();
      continue;
    }
    Entry entry;
    entry.last_position = rep->last_position;
    entry.n_tokens = rep->n_tokens;
    entry.score_max = rep->score_max;
    entry.bytes = key.size() * 2 + it->value().size() + rep->payload_bytes;
    if (options_.keep_representatives_in_ram) entry.bounds = std::move(rep->bounds);
    Index(h, {block_id, first}, std::move(entry));
  }
  return FromRocks(it->status(), absl::StrCat("loading the archive of document '", doc_id_, "'"));
}

void RocksDbBlockArchive::Index(int32_t head, const BlockKey& key, Entry entry) {
  bytes_ += entry.bytes;
  stats_.blocks_stored += 1;
  stats_.tokens_stored += entry.n_tokens;
  by_score_.emplace(entry.score_max, key.second, head, key.first);
  heads_[head][key] = std::move(entry);
}

void RocksDbBlockArchive::Forget(int32_t head, const BlockKey& key, bool delete_records) {
  auto& map = heads_[head];
  auto it = map.find(key);
  if (it == map.end()) return;
  const Entry& e = it->second;
  bytes_ -= e.bytes;
  stats_.blocks_stored -= 1;
  stats_.tokens_stored -= e.n_tokens;
  by_score_.erase(Victim{e.score_max, key.second, head, key.first});
  if (delete_records) {
    const int32_t layer = head / n_kv_heads_, kv_head = head % n_kv_heads_;
    pending_->Delete(db_->block_archive(),
                     ArchivePayloadKey(doc_id_, layer, kv_head, key.first, key.second));
    pending_->Delete(db_->block_archive(),
                     ArchiveRepresentativeKey(doc_id_, layer, kv_head, key.first, key.second));
  }
  map.erase(it);
}

absl::Status RocksDbBlockArchive::Put(ArchivedBlock block) { return PutCopyOf(block); }

// Everything a Put computes from the block alone: done outside the lock (and, for a batch, on the
// encoding pool's threads).
struct RocksDbBlockArchive::Encoded {
  absl::Status status;
  int32_t head = 0;
  BlockKey key;
  Representative rep;
  std::string payload, representative, pkey, rkey;
};

void RocksDbBlockArchive::Encode(const ArchivedBlock& block, Encoded* out) const {
  EncodeView(ViewOf(block), out);
  if (!out->status.ok()) return;
  out->rep.bounds = engine::ComputeBounds(block, head_dim_);
  out->representative = EncodeRepresentative(out->rep, head_dim_);
}

void RocksDbBlockArchive::Encode(const engine::Bf16BlockRows& rows, Encoded* out) const {
  EncodeView(ViewOf(rows), out);
  if (!out->status.ok()) return;
  out->rep.bounds = engine::ComputeBounds(rows, head_dim_);
  out->representative = EncodeRepresentative(out->rep, head_dim_);
}

// All but the bounds, which each form computes from its own keys (to the same values).
void RocksDbBlockArchive::EncodeView(const BlockView& block, Encoded* out) const {
  const size_t n = block.positions.size();
  if (block.layer < 0 || block.layer >= n_layers_ || block.kv_head < 0 ||
      block.kv_head >= n_kv_heads_ || n == 0 || block.block_id < 0 || block.positions[0] < 0 ||
      block.scores.size() != n || block.keys.size() != n * head_dim_ ||
      block.values.size() != block.keys.size() ||
      !std::is_sorted(block.positions.begin(), block.positions.end()) ||
      std::adjacent_find(block.positions.begin(), block.positions.end()) != block.positions.end()) {
    out->status = absl::InvalidArgumentError(
        absl::StrCat("archive: malformed block ", block.block_id, " of layer ", block.layer,
                     " KV head ", block.kv_head, " (", n, " positions)"));
    return;
  }
  out->status = absl::OkStatus();
  out->head = block.layer * n_kv_heads_ + block.kv_head;
  out->key = {block.block_id, block.positions.front()};
  Representative& rep = out->rep;
  rep.layer = block.layer;
  rep.kv_head = block.kv_head;
  rep.block_id = block.block_id;
  rep.first_position = block.positions.front();
  rep.last_position = block.positions.back();
  rep.n_tokens = static_cast<uint32_t>(n);
  rep.score_max = ScoreMax(block.scores);
  out->payload = EncodePayload(block, head_dim_, options_.precision);
  rep.payload_bytes = static_cast<uint32_t>(out->payload.size());
  out->pkey =
      ArchivePayloadKey(doc_id_, block.layer, block.kv_head, out->key.first, out->key.second);
  out->rkey = ArchiveRepresentativeKey(doc_id_, block.layer, block.kv_head, out->key.first,
                                       out->key.second);
}

absl::Status RocksDbBlockArchive::CommitLocked(Encoded& e) {
  if (!write_error_.ok()) return write_error_;  // the archive lost a batch: stop, as a Put would
  const bool replaces = heads_[e.head].contains(e.key);
  Forget(e.head, e.key, /*delete_records=*/false);  // a re-put overwrites the same keys
  Entry entry;
  entry.last_position = e.rep.last_position;
  entry.n_tokens = e.rep.n_tokens;
  entry.score_max = e.rep.score_max;
  entry.bytes = e.pkey.size() + e.rkey.size() + e.payload.size() + e.representative.size();
  stats_.blocks_put += 1;
  // The cap would delete this block at once (the archive is full and it is the least important
  // one, so it is the first victim and the only one): the same index and counts, but its records
  // never enter the batch. At 128K tokens under the default cap that is most blocks.
  const Victim self{entry.score_max, e.key.second, e.head, e.key.first};
  if (!replaces && options_.max_bytes > 0 && bytes_ + entry.bytes > options_.max_bytes &&
      (by_score_.empty() || self < *by_score_.begin())) {
    stats_.evicted_for_cap += 1;
    stats_.blocks_skipped_for_cap += 1;
  } else {
    pending_->Put(db_->block_archive(), e.pkey, e.payload);
    pending_->Put(db_->block_archive(), e.rkey, e.representative);
    if (options_.keep_representatives_in_ram) entry.bounds = std::move(e.rep.bounds);
    Index(e.head, e.key, std::move(entry));
    while (options_.max_bytes > 0 && bytes_ > options_.max_bytes && !by_score_.empty()) {
      const auto [score, first, head, block_id] = *by_score_.begin();
      Forget(head, {block_id, first}, /*delete_records=*/true);
      stats_.evicted_for_cap += 1;
    }
  }
  if (++pending_blocks_ >= options_.flush_every_blocks ||
      pending_->GetDataSize() >= options_.flush_every_bytes) {
    return SubmitLocked();
  }
  return absl::OkStatus();
}

absl::Status RocksDbBlockArchive::PutCopyOf(const ArchivedBlock& block) {
  Encoded e;
  Encode(block, &e);
  if (!e.status.ok()) return e.status;
  absl::MutexLock lock(&mu_);
  return CommitLocked(e);
}

template <typename Block>
absl::Status RocksDbBlockArchive::EncodeAndCommit(std::span<const Block> blocks, size_t* n_put) {
  if (n_put != nullptr) *n_put = 0;
  std::vector<Encoded> encoded(blocks.size());
  auto encode = [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) Encode(blocks[i], &encoded[i]);
  };
  if (encode_pool_ != nullptr && blocks.size() > 1) {
    encode_pool_->ParallelFor(static_cast<int64_t>(blocks.size()), encode);
  } else {
    encode(0, static_cast<int64_t>(blocks.size()));
  }
  // Committed in order, as one Put after another would: the index, the cap's victims and the
  // batch boundaries are the same.
  absl::MutexLock lock(&mu_);
  for (Encoded& e : encoded) {
    if (!e.status.ok()) return e.status;
    // A block whose commit wrote a batch that failed counts as not put, as its Put would.
    if (absl::Status s = CommitLocked(e); !s.ok()) return s;
    if (n_put != nullptr) *n_put += 1;
  }
  return absl::OkStatus();
}

absl::Status RocksDbBlockArchive::PutBatch(std::span<const ArchivedBlock> blocks, size_t* n_put) {
  return EncodeAndCommit(blocks, n_put);
}

absl::Status RocksDbBlockArchive::PutRows(std::span<const engine::Bf16BlockRows> blocks,
                                          size_t* n_put) {
  return EncodeAndCommit(blocks, n_put);
}

absl::Status RocksDbBlockArchive::Flush() {
  absl::MutexLock lock(&mu_);
  return FlushLocked();
}

absl::Status RocksDbBlockArchive::SubmitLocked() {
  if (!write_thread_.joinable()) return WriteLocked();
  if (pending_->Count() != 0) {
    pending_->Put(db_->block_archive(), MarkerKey(doc_id_), EncodeMarker(absl::Now()));
    pending_blocks_ = 0;
    stats_.batches_written += 1;
    // A few batches in flight bound the RAM this holds; the encoding goes on meanwhile.
    mu_.Await(absl::Condition(
        +[](RocksDbBlockArchive* a)
             ABSL_EXCLUSIVE_LOCKS_REQUIRED(a->mu_) { return a->to_write_.size() < 2; },
        this));
    to_write_.push_back(std::exchange(pending_, std::make_unique<rocksdb::WriteBatch>()));
  }
  return write_error_;
}

absl::Status RocksDbBlockArchive::FlushLocked() {
  if (write_thread_.joinable()) {
    CACHE_RETURN_IF_ERROR(SubmitLocked());
    WaitWrittenLocked();
    CACHE_RETURN_IF_ERROR(write_error_);
  } else {
    CACHE_RETURN_IF_ERROR(WriteLocked());
  }
  return SyncLocked();
}

// Without the WAL, batches live in the memtable until RocksDB flushes it (every
// write_buffer_size bytes, in the background; a failed flush fails the writes after it). A
// Flush, Recall or Fetch flushes it at once, so a disk that refuses writes fails them, as the WAL's
// write would have.
absl::Status RocksDbBlockArchive::SyncLocked() {
  if (!unsynced_) return absl::OkStatus();
  unsynced_ = false;
  rocksdb::FlushOptions flush;
  flush.wait = true;
  flush.allow_write_stall = true;
  absl::Status s =
      FromRocks(db_->db()->Flush(flush, db_->block_archive()),
                absl::StrCat("writing the archive of document '", doc_id_, "' to disk"));
  if (!s.ok() && write_thread_.joinable() && write_error_.ok()) write_error_ = s;
  return s;
}

absl::Status RocksDbBlockArchive::WriteLocked() {
  if (pending_->Count() == 0) return absl::OkStatus();
  pending_->Put(db_->block_archive(), MarkerKey(doc_id_), EncodeMarker(absl::Now()));
  rocksdb::WriteBatch batch;
  std::swap(batch, *pending_);  // a failed write is not retried: its blocks read as missing
  pending_blocks_ = 0;
  stats_.batches_written += 1;
  rocksdb::WriteOptions write_options;
  write_options.disableWAL = !options_.write_ahead_log;
  CACHE_RETURN_IF_ERROR(FromRocks(db_->db()->Write(write_options, &batch),
                                  absl::StrCat("writing the archive of document '", doc_id_, "'")));
  unsynced_ = !options_.write_ahead_log;
  return absl::OkStatus();
}

absl::Status RocksDbBlockArchive::ScanRepresentatives(int32_t head, std::vector<BlockKey>* keys,
                                                      std::vector<BlockBounds>* bounds) const {
  const int32_t layer = head / n_kv_heads_, kv_head = head % n_kv_heads_;
  const std::string lower = HeadPrefix("r", doc_id_, layer, kv_head);
  std::string upper = lower;
  upper.back() = '0';  // '0' follows '/'
  rocksdb::Slice upper_slice(upper);
  rocksdb::ReadOptions ro;
  ro.verify_checksums = true;
  ro.iterate_upper_bound = &upper_slice;
  std::unique_ptr<rocksdb::Iterator> it(db_->db()->NewIterator(ro, db_->block_archive()));
  const size_t prefix = DocPrefix("r", doc_id_, '\0').size();
  for (it->Seek(lower); it->Valid(); it->Next()) {
    const std::string key(it->key().ToStringView());
    int32_t l, g;
    int64_t block_id, first;
    if (!ParseSuffix(std::string_view(key).substr(prefix), &l, &g, &block_id, &first)) {
      return absl::DataLossError(
          absl::StrCat("archive representative key ", Printable(key), " is malformed"));
    }
    CACHE_ASSIGN_OR_RETURN(Representative rep,
                           DecodeRepresentative(it->value().ToStringView(), Printable(key), l, g,
                                                block_id, first, head_dim_));
    keys->push_back({block_id, first});
    bounds->push_back(std::move(rep.bounds));
  }
  return FromRocks(it->status(), absl::StrCat("scanning archive representatives of document '",
                                              doc_id_, "' layer ", layer, " KV head ", kv_head));
}

absl::StatusOr<std::vector<ArchivedBlock>> RocksDbBlockArchive::Recall(
    int32_t layer, int32_t kv_head, std::span<const float> queries, int64_t n_queries, int64_t r) {
  if (layer < 0 || layer >= n_layers_ || kv_head < 0 || kv_head >= n_kv_heads_ || n_queries < 0 ||
      queries.size() < static_cast<size_t>(n_queries * head_dim_)) {
    return absl::InvalidArgumentError(absl::StrCat("archive: recall of layer ", layer, " KV head ",
                                                   kv_head, " with ", n_queries, " queries of ",
                                                   queries.size(), " floats"));
  }
  absl::MutexLock lock(&mu_);
  CACHE_RETURN_IF_ERROR(FlushLocked());
  stats_.recalls += 1;
  const int32_t h = layer * n_kv_heads_ + kv_head;
  if (!damaged_[h].ok()) return damaged_[h];

  std::vector<BlockKey> keys;
  std::vector<float> scores;
  if (options_.keep_representatives_in_ram) {
    keys.reserve(heads_[h].size());
    scores.reserve(heads_[h].size());
    for (const auto& [key, entry] : heads_[h]) {
      keys.push_back(key);
      scores.push_back(engine::RecallScore(entry.bounds, queries, n_queries, head_dim_));
    }
  } else {
    std::vector<BlockBounds> bounds;
    CACHE_RETURN_IF_ERROR(ScanRepresentatives(h, &keys, &bounds));
    scores.reserve(keys.size());
    for (const BlockBounds& b : bounds) {
      scores.push_back(engine::RecallScore(b, queries, n_queries, head_dim_));
    }
  }

  std::vector<ArchivedBlock> out;
  for (int64_t i : engine::TopRIndices(scores, r)) {
    auto entry = heads_[h].find(keys[i]);
    if (entry == heads_[h].end()) {
      return absl::DataLossError(absl::StrCat(
          "archive payload ",
          Printable(ArchivePayloadKey(doc_id_, layer, kv_head, keys[i].first, keys[i].second)),
          ": representative stored but not indexed"));
    }
    CACHE_ASSIGN_OR_RETURN(ArchivedBlock block,
                           ReadPayloadLocked(layer, kv_head, entry->first, entry->second));
    out.push_back(std::move(block));
  }
  std::sort(out.begin(), out.end(),
            [](const auto& a, const auto& b) { return a.positions[0] < b.positions[0]; });
  return out;
}

absl::StatusOr<ArchivedBlock> RocksDbBlockArchive::ReadPayloadLocked(int32_t layer, int32_t kv_head,
                                                                     const BlockKey& block_key,
                                                                     const Entry& entry) {
  const auto& [block_id, first] = block_key;
  const std::string payload_key = ArchivePayloadKey(doc_id_, layer, kv_head, block_id, first);
  const std::string key = Printable(payload_key);
  Representative rep;
  rep.layer = layer;
  rep.kv_head = kv_head;
  rep.block_id = block_id;
  rep.first_position = first;
  rep.last_position = entry.last_position;
  rep.n_tokens = entry.n_tokens;
  rocksdb::ReadOptions ro;
  ro.verify_checksums = true;
  rocksdb::PinnableSlice value;
  rocksdb::Status s = db_->db()->Get(ro, db_->block_archive(), payload_key, &value);
  if (s.IsNotFound())
    return absl::DataLossError(absl::StrCat("archive payload ", key, ": missing"));
  CACHE_RETURN_IF_ERROR(FromRocks(s, absl::StrCat("reading archive payload ", key)));
  return DecodePayload(value.ToStringView(), key, rep, head_dim_);
}

absl::StatusOr<std::vector<ArchivedBlock>> RocksDbBlockArchive::Fetch(
    int32_t layer, int32_t kv_head, std::span<const int64_t> block_ids) {
  if (layer < 0 || layer >= n_layers_ || kv_head < 0 || kv_head >= n_kv_heads_) {
    return absl::InvalidArgumentError(
        absl::StrCat("archive: fetch from layer ", layer, " KV head ", kv_head));
  }
  absl::MutexLock lock(&mu_);
  CACHE_RETURN_IF_ERROR(FlushLocked());
  const int32_t h = layer * n_kv_heads_ + kv_head;
  if (!damaged_[h].ok()) return damaged_[h];
  std::vector<ArchivedBlock> out;
  for (int64_t id : block_ids) {
    for (auto it = heads_[h].lower_bound({id, std::numeric_limits<int64_t>::min()});
         it != heads_[h].end() && it->first.first == id; ++it) {
      CACHE_ASSIGN_OR_RETURN(ArchivedBlock block,
                             ReadPayloadLocked(layer, kv_head, it->first, it->second));
      out.push_back(std::move(block));
    }
  }
  std::sort(out.begin(), out.end(),
            [](const auto& a, const auto& b) { return a.positions[0] < b.positions[0]; });
  return out;
}

int64_t RocksDbBlockArchive::stored_bytes() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(bytes_);
}

BlockArchiveStats RocksDbBlockArchive::stats() const {
  absl::MutexLock lock(&mu_);
  BlockArchiveStats s = stats_;
  s.payload_bytes = 0;
  s.representative_bytes = 0;
  const uint64_t rep_bytes = kRepresentativeHeaderBytes + 8 * head_dim_ + kChecksumBytes;
  const uint64_t key_bytes = 2 * ArchivePayloadKey(doc_id_, 0, 0, 0, 0).size();
  for (const auto& head : heads_) {
    for (const auto& [key, entry] : head) {
      s.representative_bytes += rep_bytes;
      s.payload_bytes += entry.bytes - rep_bytes - key_bytes;
    }
  }
  return s;
}

absl::Status RocksDbBlockArchive::DeleteAll() {
  absl::MutexLock lock(&mu_);
  pending_->Clear();
  pending_blocks_ = 0;
  WaitWrittenLocked();  // no batch of this archive lands after the deletion
  write_error_ = absl::OkStatus();
  for (auto& head : heads_) head.clear();
  for (absl::Status& d : damaged_) d = absl::OkStatus();
  by_score_.clear();
  bytes_ = 0;
  stats_.blocks_stored = 0;
  stats_.tokens_stored = 0;
  return DeleteArchivedDocument(db_, doc_id_);
}

absl::Status DeleteArchivedDocument(CacheDb* db, std::string_view doc_id) {
  CACHE_RETURN_IF_ERROR(ValidateDocId(doc_id));
  rocksdb::WriteBatch batch;
  for (std::string_view kind : {"p", "r"}) {
    batch.DeleteRange(db->block_archive(), DocPrefix(kind, doc_id, '\0'),
                      DocPrefix(kind, doc_id, '\1'));
  }
  batch.Delete(db->block_archive(), MarkerKey(doc_id));
  return FromRocks(db->db()->Write(rocksdb::WriteOptions(), &batch),
                   absl::StrCat("deleting the archive of document '", Sv(doc_id), "'"));
}

absl::StatusOr<std::vector<std::pair<std::string, absl::Time>>> ListArchivedDocuments(CacheDb* db) {
  std::vector<std::pair<std::string, absl::Time>> docs;
  const std::string lower = "a/m/", upper = "a/m0";
  rocksdb::Slice upper_slice(upper);
  rocksdb::ReadOptions ro;
  ro.iterate_upper_bound = &upper_slice;
  std::unique_ptr<rocksdb::Iterator> it(db->db()->NewIterator(ro, db->block_archive()));
  for (it->Seek(lower); it->Valid(); it->Next()) {
    std::string doc_id(it->key().ToStringView().substr(lower.size()));
    absl::StatusOr<absl::Time> when = DecodeMarker(it->value().ToStringView(), doc_id);
    docs.emplace_back(std::move(doc_id), when.ok() ? *when : absl::InfinitePast());
  }
  CACHE_RETURN_IF_ERROR(FromRocks(it->status(), "scanning archive markers"));
  return docs;
}

absl::Status CompactArchives(CacheDb* db) {
  rocksdb::CompactRangeOptions options;
  // Files already at the last level are rewritten too: a tombstone there drops nothing otherwise.
  options.bottommost_level_compaction = rocksdb::BottommostLevelCompaction::kForceOptimized;
  return FromRocks(db->db()->CompactRange(options, db->block_archive(), nullptr, nullptr),
                   "compacting the block archive");
}

absl::StatusOr<int> GarbageCollectArchives(CacheDb* db, absl::Time now, absl::Duration ttl) {
  CACHE_ASSIGN_OR_RETURN(auto docs, ListArchivedDocuments(db));
  int deleted = 0;
  for (const auto& [doc_id, last_write] : docs) {
    if (now - last_write <= ttl) continue;  // an unreadable marker reads as infinitely old
    CACHE_RETURN_IF_ERROR(DeleteArchivedDocument(db, doc_id));
    ++deleted;
  }
  return deleted;
}

}  // namespace longread::cache
