#include "cache/snapshot_format.h"

#include <lz4.h>
#include <xxhash.h>
#include <zstd.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "cache/byte_io.h"
#include "cache/status_macros.h"

namespace longread::cache {
namespace {

using engine::HeadMemorySnapshot;
using engine::MemorySnapshot;

constexpr char kRecordMagic[4] = {'L', 'R', 'S', 'R'};
constexpr char kHeadMagic[4] = {'L', 'R', 'H', 'D'};
// Bounds on the header's dims: far above any model this service runs, low enough that products
// of them cannot overflow 64 bits.
constexpr int32_t kMaxDim = 1 << 16;

struct HashState {
  HashState() : state(XXH3_createState()) { XXH3_64bits_reset(state); }
  ~HashState() { XXH3_freeState(state); }
  template <typename T>
  void Add(const T& value) {
    XXH3_64bits_update(state, &value, sizeof(T));
  }
  template <typename T>
  void AddVector(const std::vector<T>& v) {
    Add<uint64_t>(v.size());
    XXH3_64bits_update(state, v.data(), v.size() * sizeof(T));
  }
  void AddString(const std::string& s) {
    Add<uint64_t>(s.size());
    XXH3_64bits_update(state, s.data(), s.size());
  }
  XXH3_state_t* state;
};

void PutHeader(const MemorySnapshot& s, uint64_t base_seq, uint64_t content_hash, ByteWriter* w) {
  w->Put<uint64_t>(base_seq);
  w->Put<uint64_t>(content_hash);
  w->Put<uint64_t>(s.config_hash);
  w->Put<int32_t>(s.n_layers);
  w->Put<int32_t>(s.n_kv_heads);
  w->Put<int32_t>(s.head_dim);
  w->Put<uint32_t>(0);
  w->Put<int64_t>(s.segment_index);
  w->Put<int64_t>(s.token_offset);
  w->Put<double>(s.score_origin);
  w->PutBytes(s.model_fingerprint);
  w->PutBytes(s.pending_utf8);
  w->Put<uint32_t>(static_cast<uint32_t>(s.pending_tokens.size()));
  w->PutArray(s.pending_tokens.data(), s.pending_tokens.size());
  w->Put<uint32_t>(static_cast<uint32_t>(s.heads.size()));
}

uint64_t HeaderBytes(const MemorySnapshot& s) {
  auto padded = [](uint64_t n) { return 4 + (n + 3) / 4 * 4; };
  return 8 * 3 + 4 * 4 + 8 * 3 + padded(s.model_fingerprint.size()) +
         padded(s.pending_utf8.size()) + 4 + 4 * s.pending_tokens.size() + 4;
}

// `record` holds kRecordHeaderBytes of room followed by the raw payload. Uncompressed, the header
// is written into that room (no copy of the payload, which is tens of MiB); compressed, a new
// record is built.
std::string FinishRecord(RecordKind kind, std::string record, const EncodeOptions& options) {
  const std::string_view payload = std::string_view(record).substr(kRecordHeaderBytes);
  Codec codec = options.codec;
  bool shuffle = options.shuffle && codec != Codec::kNone;
  std::string compressed;
  if (codec != Codec::kNone) {
    absl::StatusOr<std::string> packed =
        Compress(codec, options.zstd_level, shuffle ? ShuffleWords(payload) : std::string(payload));
    if (packed.ok() && packed->size() < payload.size()) {
      compressed = *std::move(packed);
    } else {
      codec = Codec::kNone;  // compression did not pay: store the plain payload
      shuffle = false;
    }
  }
  std::string header;
  ByteWriter w(&header);
  w.PutArray(kRecordMagic, 4);
  w.Put<uint32_t>(kRecordFormatVersion);
  w.Put<uint8_t>(static_cast<uint8_t>(kind));
  w.Put<uint8_t>(static_cast<uint8_t>(codec));
  w.Put<uint8_t>(shuffle ? 1 : 0);
  w.Put<uint8_t>(0);
  w.Put<uint32_t>(0);
  w.Put<uint64_t>(payload.size());
  const std::string_view body = codec == Codec::kNone ? payload : std::string_view(compressed);
  w.Put<uint64_t>(body.size());
  HashState h;
  XXH3_64bits_update(h.state, header.data(), header.size());
  XXH3_64bits_update(h.state, body.data(), body.size());
  w.Put<uint64_t>(XXH3_64bits_digest(h.state));
  if (codec == Codec::kNone) {
    record.replace(0, kRecordHeaderBytes, header);
    return record;
  }
  return header + compressed;
}

absl::Status ReadHeader(ByteReader* r, DecodedRecord* rec) {
  MemorySnapshot& s = rec->state;
  CACHE_RETURN_IF_ERROR(r->Get("base_seq", &rec->base_seq));
  CACHE_RETURN_IF_ERROR(r->Get("content_hash", &rec->content_hash));
  CACHE_RETURN_IF_ERROR(r->Get("config_hash", &s.config_hash));
  CACHE_RETURN_IF_ERROR(r->Get("n_layers", &s.n_layers));
  CACHE_RETURN_IF_ERROR(r->Get("n_kv_heads", &s.n_kv_heads));
  CACHE_RETURN_IF_ERROR(r->Get("head_dim", &s.head_dim));
  uint32_t reserved = 0;
  CACHE_RETURN_IF_ERROR(r->Get("reserved", &reserved));
  CACHE_RETURN_IF_ERROR(r->Get("segment_index", &s.segment_index));
  CACHE_RETURN_IF_ERROR(r->Get("token_offset", &s.token_offset));
  CACHE_RETURN_IF_ERROR(r->Get("score_origin", &s.score_origin));
  CACHE_RETURN_IF_ERROR(r->GetBytes("model_fingerprint", &s.model_fingerprint));
  CACHE_RETURN_IF_ERROR(r->GetBytes("pending_utf8", &s.pending_utf8));
  uint32_t n_pending = 0;
  CACHE_RETURN_IF_ERROR(r->Get("pending_tokens.size", &n_pending));
  CACHE_RETURN_IF_ERROR(r->GetArray("pending_tokens", n_pending, &s.pending_tokens));
  if (s.n_layers <= 0 || s.n_layers > kMaxDim || s.n_kv_heads <= 0 || s.n_kv_heads > kMaxDim ||
      s.head_dim <= 0 || s.head_dim > kMaxDim) {
    return r->Error(
        "n_layers/n_kv_heads/head_dim",
        absl::StrCat("dims out of range: ", s.n_layers, "/", s.n_kv_heads, "/", s.head_dim));
  }
  uint32_t n_heads = 0;
  CACHE_RETURN_IF_ERROR(r->Get("heads.size", &n_heads));
  if (uint64_t{n_heads} != uint64_t(s.n_layers) * uint64_t(s.n_kv_heads)) {
    return r->Error("heads.size", absl::StrCat(n_heads, " heads but n_layers * n_kv_heads = ",
                                               int64_t{s.n_layers} * s.n_kv_heads));
  }
  return absl::OkStatus();
}

absl::Status ReadFullHeads(ByteReader* r, MemorySnapshot* s) {
  const uint64_t d = static_cast<uint64_t>(s->head_dim);
  s->heads.resize(static_cast<size_t>(s->n_layers) * s->n_kv_heads);
  for (HeadMemorySnapshot& head : s->heads) {
    uint32_t n = 0;
    CACHE_RETURN_IF_ERROR(r->Get("head.n_slots", &n));
    CACHE_RETURN_IF_ERROR(r->GetArray("head.positions", n, &head.positions));
    CACHE_RETURN_IF_ERROR(r->GetArray("head.scores", n, &head.scores));
    CACHE_RETURN_IF_ERROR(r->GetArray("head.keys", n * d, &head.keys));
    CACHE_RETURN_IF_ERROR(r->GetArray("head.values", n * d, &head.values));
  }
  return absl::OkStatus();
}

absl::Status ReadDeltaHeads(ByteReader* r, DecodedRecord* rec) {
  MemorySnapshot& s = rec->state;
  const uint64_t d = static_cast<uint64_t>(s.head_dim);
  const size_t n_heads = static_cast<size_t>(s.n_layers) * s.n_kv_heads;
  s.heads.resize(n_heads);
  rec->removed.resize(n_heads);
  rec->scores_after.resize(n_heads);
  for (size_t h = 0; h < n_heads; ++h) {
    uint32_t n = 0;
    CACHE_RETURN_IF_ERROR(r->Get("delta.n_removed", &n));
    CACHE_RETURN_IF_ERROR(r->GetArray("delta.removed", n, &rec->removed[h]));
    CACHE_RETURN_IF_ERROR(r->Get("delta.n_added", &n));
    CACHE_RETURN_IF_ERROR(r->GetArray("delta.added_positions", n, &s.heads[h].positions));
    CACHE_RETURN_IF_ERROR(r->GetArray("delta.added_keys", n * d, &s.heads[h].keys));
    CACHE_RETURN_IF_ERROR(r->GetArray("delta.added_values", n * d, &s.heads[h].values));
    CACHE_RETURN_IF_ERROR(r->Get("delta.n_after", &n));
    CACHE_RETURN_IF_ERROR(r->GetArray("delta.scores_after", n, &rec->scores_after[h]));
  }
  return absl::OkStatus();
}

void AppendRows(const std::vector<float>& src, size_t row, size_t d, std::vector<float>* dst) {
  dst->insert(dst->end(), src.begin() + row * d, src.begin() + (row + 1) * d);
}

}  // namespace

uint64_t ContentHash(const MemorySnapshot& s) {
  HashState h;
  h.Add(s.config_hash);
  h.Add(s.n_layers);
  h.Add(s.n_kv_heads);
  h.Add(s.head_dim);
  h.Add(s.segment_index);
  h.Add(s.token_offset);
  h.Add(s.score_origin);
  h.AddString(s.model_fingerprint);
  h.AddString(s.pending_utf8);
  h.AddVector(s.pending_tokens);
  h.Add<uint64_t>(s.heads.size());
  for (const HeadMemorySnapshot& head : s.heads) {
    h.AddVector(head.positions);
    h.AddVector(head.scores);
    h.AddVector(head.keys);
    h.AddVector(head.values);
  }
  return XXH3_64bits_digest(h.state);
}

absl::Status ValidateShape(const MemorySnapshot& s) {
  if (s.n_layers <= 0 || s.n_layers > kMaxDim || s.n_kv_heads <= 0 || s.n_kv_heads > kMaxDim ||
      s.head_dim <= 0 || s.head_dim > kMaxDim) {
    return absl::InvalidArgumentError(
        absl::StrCat("snapshot dims out of range: n_layers=", s.n_layers,
                     " n_kv_heads=", s.n_kv_heads, " head_dim=", s.head_dim));
  }
  const size_t expected_heads = static_cast<size_t>(s.n_layers) * s.n_kv_heads;
  if (s.heads.size() != expected_heads) {
    return absl::InvalidArgumentError(absl::StrCat(
        "snapshot has ", s.heads.size(), " heads; n_layers * n_kv_heads = ", expected_heads));
  }
  const size_t d = static_cast<size_t>(s.head_dim);
  for (size_t h = 0; h < s.heads.size(); ++h) {
    const HeadMemorySnapshot& head = s.heads[h];
    const size_t n = head.positions.size();
    auto bad = [&](const std::string& what) {
      return absl::InvalidArgumentError(absl::StrCat("snapshot head ", h, " (layer ",
                                                     h / s.n_kv_heads, ", kv head ",
                                                     h % s.n_kv_heads, "): ", what));
    };
    if (n > UINT32_MAX) return bad("more than 2^32 slots");
    if (head.scores.size() != n) {
      return bad(absl::StrCat("scores.size()=", head.scores.size(), " != positions.size()=", n));
    }
    if (head.keys.size() != n * d) {
      return bad(
          absl::StrCat("keys.size()=", head.keys.size(), " != positions.size()*head_dim=", n * d));
    }
    if (head.values.size() != n * d) {
      return bad(absl::StrCat("values.size()=", head.values.size(),
                              " != positions.size()*head_dim=", n * d));
    }
    for (size_t i = 0; i < n; ++i) {
      const int64_t p = head.positions[i];
      if (p < 0 || p >= s.token_offset || (i > 0 && p <= head.positions[i - 1])) {
        return bad(absl::StrCat("positions[", i, "]=", p,
                                " is not strictly ascending in [0, token_offset=", s.token_offset,
                                ")"));
      }
    }
  }
  return absl::OkStatus();
}

uint64_t FullPayloadBytes(const MemorySnapshot& s) {
  uint64_t bytes = HeaderBytes(s);
  for (const HeadMemorySnapshot& head : s.heads) {
    bytes += 4 + head.positions.size() * 8 + head.scores.size() * 4 +
             (head.keys.size() + head.values.size()) * 4;
  }
  return bytes;
}

std::string EncodeFullRecord(const MemorySnapshot& s, uint64_t content_hash,
                             const EncodeOptions& options) {
  std::string record(kRecordHeaderBytes, '\0');
  record.reserve(kRecordHeaderBytes + FullPayloadBytes(s));
  ByteWriter w(&record);
  PutHeader(s, /*base_seq=*/0, content_hash, &w);
  for (const HeadMemorySnapshot& head : s.heads) {
    w.Put<uint32_t>(static_cast<uint32_t>(head.positions.size()));
    w.PutArray(head.positions.data(), head.positions.size());
    w.PutArray(head.scores.data(), head.scores.size());
    w.PutArray(head.keys.data(), head.keys.size());
    w.PutArray(head.values.data(), head.values.size());
  }
  return FinishRecord(RecordKind::kFull, std::move(record), options);
}

std::string EncodeDeltaRecord(const MemorySnapshot& next,
                              const std::vector<std::vector<int64_t>>& base_positions,
                              uint64_t base_seq, uint64_t content_hash,
                              const EncodeOptions& options, uint64_t* raw_payload_bytes) {
  const size_t d = static_cast<size_t>(next.head_dim);
  std::string record(kRecordHeaderBytes, '\0');
  ByteWriter w(&record);
  PutHeader(next, base_seq, content_hash, &w);
  std::vector<int64_t> removed;
  std::vector<size_t> added;  // indices into next's head
  std::vector<int64_t> added_positions;
  for (size_t h = 0; h < next.heads.size(); ++h) {
    const HeadMemorySnapshot& head = next.heads[h];
    const std::vector<int64_t>& base = base_positions[h];
    removed.clear();
    added.clear();
    size_t i = 0, j = 0;  // both lists are ascending: one merge walk finds the differences
    while (i < base.size() || j < head.positions.size()) {
      if (j == head.positions.size() || (i < base.size() && base[i] < head.positions[j])) {
        removed.push_back(base[i++]);
      } else if (i == base.size() || head.positions[j] < base[i]) {
        added.push_back(j++);
      } else {
        ++i;
        ++j;
      }
    }
    w.Put<uint32_t>(static_cast<uint32_t>(removed.size()));
    w.PutArray(removed.data(), removed.size());
    w.Put<uint32_t>(static_cast<uint32_t>(added.size()));
    added_positions.clear();
    for (size_t a : added) added_positions.push_back(head.positions[a]);
    w.PutArray(added_positions.data(), added_positions.size());
    for (size_t a : added) w.PutArray(head.keys.data() + a * d, d);
    for (size_t a : added) w.PutArray(head.values.data() + a * d, d);
    w.Put<uint32_t>(static_cast<uint32_t>(head.scores.size()));
    w.PutArray(head.scores.data(), head.scores.size());
  }
  *raw_payload_bytes = record.size() - kRecordHeaderBytes;
  return FinishRecord(RecordKind::kDelta, std::move(record), options);
}

absl::StatusOr<DecodedRecord> DecodeRecord(std::string_view value) {
  ByteReader r(value, "snapshot record");
  char magic[4];
  for (char& c : magic) CACHE_RETURN_IF_ERROR(r.Get("magic", &c));
  if (std::memcmp(magic, kRecordMagic, 4) != 0) return r.Error("magic", "not 'LRSR'");
  uint32_t version = 0;
  CACHE_RETURN_IF_ERROR(r.Get("format_version", &version));
  if (version != kRecordFormatVersion) {
    return absl::FailedPreconditionError(absl::StrCat("snapshot record format_version ", version,
                                                      "; this build reads version ",
                                                      kRecordFormatVersion));
  }
  uint8_t kind = 0, codec = 0, shuffle = 0, reserved8 = 0;
  uint32_t reserved32 = 0;
  uint64_t raw_size = 0, stored_size = 0, checksum = 0;
  CACHE_RETURN_IF_ERROR(r.Get("kind", &kind));
  CACHE_RETURN_IF_ERROR(r.Get("codec", &codec));
  CACHE_RETURN_IF_ERROR(r.Get("shuffle", &shuffle));
  CACHE_RETURN_IF_ERROR(r.Get("reserved", &reserved8));
  CACHE_RETURN_IF_ERROR(r.Get("reserved", &reserved32));
  CACHE_RETURN_IF_ERROR(r.Get("raw_payload_size", &raw_size));
  CACHE_RETURN_IF_ERROR(r.Get("stored_payload_size", &stored_size));
  CACHE_RETURN_IF_ERROR(r.Get("checksum", &checksum));
  if (stored_size != r.remaining()) {
    return r.Error("stored_payload_size", absl::StrCat(stored_size, " but the record holds ",
                                                       r.remaining(), " payload bytes"));
  }
  HashState h;
  XXH3_64bits_update(h.state, value.data(), kRecordHeaderBytes - 8);
  XXH3_64bits_update(h.state, value.data() + kRecordHeaderBytes, stored_size);
  if (XXH3_64bits_digest(h.state) != checksum) {
    return absl::DataLossError("snapshot record: checksum mismatch (the stored bytes are damaged)");
  }
  // The checksum matched, so these fields are as written; still check them so a writer bug is
  // not mistaken for data.
  if (kind != static_cast<uint8_t>(RecordKind::kFull) &&
      kind != static_cast<uint8_t>(RecordKind::kDelta)) {
    return absl::DataLossError(absl::StrCat("snapshot record: unknown kind ", int{kind}));
  }
  if (codec > static_cast<uint8_t>(Codec::kZstd) || raw_size % 4 != 0) {
    return absl::DataLossError(
        absl::StrCat("snapshot record: bad codec ", int{codec}, " or raw_payload_size ", raw_size));
  }
  std::string_view stored = value.substr(kRecordHeaderBytes);
  std::string raw_storage;
  std::string_view raw = stored;
  if (static_cast<Codec>(codec) != Codec::kNone) {
    CACHE_ASSIGN_OR_RETURN(raw_storage, Decompress(static_cast<Codec>(codec), stored, raw_size));
    if (shuffle) raw_storage = UnshuffleWords(raw_storage);
    raw = raw_storage;
  } else if (raw_size != stored_size) {
    return absl::DataLossError("snapshot record: uncompressed payload with raw != stored size");
  }

  DecodedRecord rec;
  rec.kind = static_cast<RecordKind>(kind);
  ByteReader p(raw, "snapshot payload");
  CACHE_RETURN_IF_ERROR(ReadHeader(&p, &rec));
  if (rec.kind == RecordKind::kFull) {
    CACHE_RETURN_IF_ERROR(ReadFullHeads(&p, &rec.state));
  } else {
    CACHE_RETURN_IF_ERROR(ReadDeltaHeads(&p, &rec));
  }
  if (p.remaining() != 0) return p.Error("end", "trailing bytes after the last head");
  return rec;
}

absl::Status ApplyDelta(DecodedRecord delta, MemorySnapshot* s) {
  MemorySnapshot& next = delta.state;
  if (next.n_layers != s->n_layers || next.n_kv_heads != s->n_kv_heads ||
      next.head_dim != s->head_dim) {
    return absl::DataLossError("delta record: dims differ from its base");
  }
  const size_t d = static_cast<size_t>(s->head_dim);
  for (size_t h = 0; h < s->heads.size(); ++h) {
    HeadMemorySnapshot& old = s->heads[h];
    HeadMemorySnapshot& add = next.heads[h];
    const std::vector<int64_t>& removed = delta.removed[h];
    HeadMemorySnapshot out;
    const size_t n_out = old.positions.size() + add.positions.size() - removed.size();
    if (removed.size() > old.positions.size() || delta.scores_after[h].size() != n_out) {
      return absl::DataLossError(absl::StrCat("delta record: head ", h, " slot counts disagree"));
    }
    out.positions.reserve(n_out);
    out.keys.reserve(n_out * d);
    out.values.reserve(n_out * d);
    size_t i = 0, j = 0, r = 0;
    while (i < old.positions.size() || j < add.positions.size()) {
      const bool take_old = j == add.positions.size() ||
                            (i < old.positions.size() && old.positions[i] < add.positions[j]);
      if (take_old) {
        if (r < removed.size() && removed[r] == old.positions[i]) {
          ++r;
          ++i;
          continue;
        }
        out.positions.push_back(old.positions[i]);
        AppendRows(old.keys, i, d, &out.keys);
        AppendRows(old.values, i, d, &out.values);
        ++i;
      } else {
        if (i < old.positions.size() && old.positions[i] == add.positions[j] &&
            !(r < removed.size() && removed[r] == old.positions[i])) {
          return absl::DataLossError(absl::StrCat("delta record: head ", h, " adds position ",
                                                  add.positions[j], " that is already present"));
        }
        out.positions.push_back(add.positions[j]);
        AppendRows(add.keys, j, d, &out.keys);
        AppendRows(add.values, j, d, &out.values);
        ++j;
      }
    }
    if (r != removed.size() || out.positions.size() != n_out) {
      return absl::DataLossError(
          absl::StrCat("delta record: head ", h, " removes positions its base does not hold"));
    }
    out.scores = std::move(delta.scores_after[h]);
    old = std::move(out);
  }
  next.heads = std::move(s->heads);
  *s = std::move(next);
  return absl::OkStatus();
}

std::string EncodeHead(const HeadRecord& head) {
  std::string out;
  ByteWriter w(&out);
  w.PutArray(kHeadMagic, 4);
  w.Put<uint32_t>(kHeadFormatVersion);
  w.Put<uint64_t>(head.next_seq);
  w.Put<int64_t>(head.last_write_unix_micros);
  w.Put<uint64_t>(head.stored_bytes);
  w.Put<int64_t>(head.segment_index);
  w.PutBytes(head.job_id);
  w.Put<uint32_t>(static_cast<uint32_t>(head.chain.size()));
  w.PutArray(head.chain.data(), head.chain.size());
  w.PutArray(head.chain_bytes.data(), head.chain_bytes.size());
  w.Put<uint64_t>(XXH3_64bits(out.data(), out.size()));
  return out;
}

absl::StatusOr<HeadRecord> DecodeHead(std::string_view value) {
  if (value.size() < 16) return absl::DataLossError("snapshot head: shorter than 16 bytes");
  uint64_t checksum = 0;
  std::memcpy(&checksum, value.data() + value.size() - 8, 8);
  if (XXH3_64bits(value.data(), value.size() - 8) != checksum) {
    return absl::DataLossError("snapshot head: checksum mismatch (the stored bytes are damaged)");
  }
  ByteReader r(value.substr(0, value.size() - 8), "snapshot head");
  char magic[4];
  for (char& c : magic) CACHE_RETURN_IF_ERROR(r.Get("magic", &c));
  if (std::memcmp(magic, kHeadMagic, 4) != 0) return r.Error("magic", "not 'LRHD'");
  uint32_t version = 0;
  CACHE_RETURN_IF_ERROR(r.Get("format_version", &version));
  if (version != kHeadFormatVersion) {
    return absl::FailedPreconditionError(absl::StrCat("snapshot head format_version ", version,
                                                      "; this build reads version ",
                                                      kHeadFormatVersion));
  }
  HeadRecord head;
  CACHE_RETURN_IF_ERROR(r.Get("next_seq", &head.next_seq));
  CACHE_RETURN_IF_ERROR(r.Get("last_write_unix_micros", &head.last_write_unix_micros));
  CACHE_RETURN_IF_ERROR(r.Get("stored_bytes", &head.stored_bytes));
  CACHE_RETURN_IF_ERROR(r.Get("segment_index", &head.segment_index));
  CACHE_RETURN_IF_ERROR(r.GetBytes("job_id", &head.job_id));
  uint32_t n = 0;
  CACHE_RETURN_IF_ERROR(r.Get("chain.size", &n));
  CACHE_RETURN_IF_ERROR(r.GetArray("chain", n, &head.chain));
  CACHE_RETURN_IF_ERROR(r.GetArray("chain_bytes", n, &head.chain_bytes));
  if (r.remaining() != 0) return r.Error("end", "trailing bytes");
  if (head.chain.empty()) return r.Error("chain", "empty chain");
  for (uint64_t seq : head.chain) {
    if (seq == 0 || seq >= head.next_seq) return r.Error("chain", "seq outside [1, next_seq)");
  }
  return head;
}

std::string ShuffleWords(std::string_view bytes) {
  const size_t n = bytes.size() / 4;
  std::string out(bytes.size(), '\0');
  for (size_t i = 0; i < n; ++i) {
    for (size_t b = 0; b < 4; ++b) out[b * n + i] = bytes[i * 4 + b];
  }
  return out;
}

std::string UnshuffleWords(std::string_view bytes) {
  const size_t n = bytes.size() / 4;
  std::string out(bytes.size(), '\0');
  for (size_t i = 0; i < n; ++i) {
    for (size_t b = 0; b < 4; ++b) out[i * 4 + b] = bytes[b * n + i];
  }
  return out;
}

absl::StatusOr<std::string> Compress(Codec codec, int zstd_level, std::string_view raw) {
  std::string out;
  switch (codec) {
    case Codec::kNone:
      return std::string(raw);
    case Codec::kLz4: {
      if (raw.size() > LZ4_MAX_INPUT_SIZE) return absl::InvalidArgumentError("too large for LZ4");
      out.resize(LZ4_compressBound(static_cast<int>(raw.size())));
      const int n = LZ4_compress_default(raw.data(), out.data(), static_cast<int>(raw.size()),
                                         static_cast<int>(out.size()));
      if (n <= 0) return absl::InternalError("LZ4 compression failed");
      out.resize(n);
      return out;
    }
    case Codec::kZstd: {
      out.resize(ZSTD_compressBound(raw.size()));
      const size_t n = ZSTD_compress(out.data(), out.size(), raw.data(), raw.size(), zstd_level);
      if (ZSTD_isError(n)) {
        return absl::InternalError(absl::StrCat("ZSTD compression: ", ZSTD_getErrorName(n)));
      }
      out.resize(n);
      return out;
    }
  }
  return absl::InvalidArgumentError("unknown codec");
}

absl::StatusOr<std::string> Decompress(Codec codec, std::string_view stored, uint64_t raw_size) {
  // raw_size is checksummed, but bound it anyway: nothing this store writes exceeds 4 GiB.
  if (raw_size > (uint64_t{1} << 32)) {
    return absl::DataLossError(absl::StrCat("raw_payload_size ", raw_size, " exceeds 4 GiB"));
  }
  std::string out(raw_size, '\0');
  switch (codec) {
    case Codec::kNone:
      return std::string(stored);
    case Codec::kLz4: {
      if (raw_size > LZ4_MAX_INPUT_SIZE || stored.size() > LZ4_MAX_INPUT_SIZE) {
        return absl::DataLossError("LZ4 payload too large");
      }
      const int n = LZ4_decompress_safe(stored.data(), out.data(), static_cast<int>(stored.size()),
                                        static_cast<int>(raw_size));
      if (n < 0 || static_cast<uint64_t>(n) != raw_size) {
        return absl::DataLossError("LZ4 payload does not decompress to raw_payload_size bytes");
      }
      return out;
    }
    case Codec::kZstd: {
      const size_t n = ZSTD_decompress(out.data(), out.size(), stored.data(), stored.size());
      if (ZSTD_isError(n) || n != raw_size) {
        return absl::DataLossError("ZSTD payload does not decompress to raw_payload_size bytes");
      }
      return out;
    }
  }
  return absl::DataLossError("unknown codec");
}

}  // namespace longread::cache
