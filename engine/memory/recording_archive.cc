#include "engine/memory/recording_archive.h"

#include <bit>
#include <cstring>
#include <type_traits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/half.h"

namespace longread::engine {

int64_t ArchivedBlockBytes(const ArchivedBlock& block) {
  return static_cast<int64_t>(
      block.positions.size() * sizeof(int64_t) + block.scores.size() * sizeof(float) +
      block.keys.size() * sizeof(float) + block.values.size() * sizeof(float));
}

// The inner archive gets the block by reference: the recorder keeps the one copy.
absl::Status RecordingBlockArchive::Put(ArchivedBlock block) {
  if (auto s = inner_->PutCopyOf(block); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  recorded_bytes_ += ArchivedBlockBytes(block);
  recorded_.push_back({std::move(block), {}, {}});
  return absl::OkStatus();
}

absl::Status RecordingBlockArchive::PutCopyOf(const ArchivedBlock& block) { return Put(block); }

absl::Status RecordingBlockArchive::PutBatch(std::span<const ArchivedBlock> blocks, size_t* n_put) {
  size_t put = 0;
  absl::Status s = inner_->PutBatch(blocks, &put);
  if (n_put != nullptr) *n_put = put;
  absl::MutexLock lock(&mu_);
  for (size_t i = 0; i < put; ++i) {
    recorded_bytes_ += ArchivedBlockBytes(blocks[i]);
    recorded_.push_back({blocks[i], {}, {}});
  }
  return s;
}

absl::Status RecordingBlockArchive::PutRows(std::span<const Bf16BlockRows> blocks, size_t* n_put) {
  size_t put = 0;
  absl::Status s = inner_->PutRows(blocks, &put);
  if (n_put != nullptr) *n_put = put;
  absl::MutexLock lock(&mu_);
  for (size_t i = 0; i < put; ++i) {
    const Bf16BlockRows& rows = blocks[i];
    RecordedBlock& r = recorded_.emplace_back();
    r.block.layer = rows.layer;
    r.block.kv_head = rows.kv_head;
    r.block.block_id = rows.block_id;
    r.block.positions.assign(rows.positions.begin(), rows.positions.end());
    r.block.scores.assign(rows.scores.begin(), rows.scores.end());
    r.keys16.assign(rows.keys.begin(), rows.keys.end());
    r.values16.assign(rows.values.begin(), rows.values.end());
    recorded_bytes_ += static_cast<int64_t>(
        rows.positions.size() * sizeof(int64_t) + rows.scores.size() * sizeof(float) +
        (rows.keys.size() + rows.values.size()) * sizeof(float));
  }
  return s;
}

Bf16BlockRows RecordedBlock::rows() const {
  Bf16BlockRows r;
  r.layer = block.layer;
  r.kv_head = block.kv_head;
  r.block_id = block.block_id;
  r.positions = block.positions;
  r.scores = block.scores;
  r.keys = keys16;
  r.values = values16;
  return r;
}

ArchivedBlock RecordedBlock::Widened() && {
  if (is_bf16()) {
    block.keys.resize(keys16.size());
    block.values.resize(values16.size());
    for (size_t i = 0; i < keys16.size(); ++i) block.keys[i] = kernels::BFloat16ToFloat(keys16[i]);
    for (size_t i = 0; i < values16.size(); ++i) {
      block.values[i] = kernels::BFloat16ToFloat(values16[i]);
    }
  }
  return std::move(block);
}

std::vector<RecordedBlock> RecordingBlockArchive::TakeRecordedBlocks() {
  absl::MutexLock lock(&mu_);
  std::vector<RecordedBlock> taken = std::move(recorded_);
  recorded_.clear();
  recorded_bytes_ = 0;
  return taken;
}

std::vector<ArchivedBlock> RecordingBlockArchive::TakeRecorded() {
  std::vector<RecordedBlock> recorded = TakeRecordedBlocks();
  std::vector<ArchivedBlock> taken;
  taken.reserve(recorded.size());
  for (RecordedBlock& r : recorded) taken.push_back(std::move(r).Widened());
  return taken;
}

int64_t RecordingBlockArchive::recorded_bytes() const {
  absl::MutexLock lock(&mu_);
  return recorded_bytes_;
}

int64_t RecordingBlockArchive::recorded_blocks() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(recorded_.size());
}

absl::Status ReplayBlocks(std::span<const ArchivedBlock> blocks, BlockArchive* archive) {
  for (const ArchivedBlock& block : blocks) {
    if (auto s = archive->PutCopyOf(block); !s.ok()) return s;
  }
  return absl::OkStatus();
}

namespace {

constexpr char kMagic[4] = {'L', 'R', 'B', 'D'};
constexpr uint32_t kVersion = 1;

uint64_t Fnv1a64(std::string_view bytes) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

// Little-endian on every platform the project builds for (x86-64, aarch64); a big-endian host
// would need byte swaps here.
static_assert(std::endian::native == std::endian::little);

template <typename T>
void Append(std::string* out, const T& value) {
  static_assert(std::is_trivially_copyable_v<T>);
  out->append(reinterpret_cast<const char*>(&value), sizeof(T));
}

template <typename T>
void AppendArray(std::string* out, const std::vector<T>& values) {
  out->append(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
}

class Reader {
 public:
  explicit Reader(std::string_view bytes) : bytes_(bytes) {}
  template <typename T>
  bool Get(T* value) {
    if (bytes_.size() - at_ < sizeof(T)) return false;
    std::memcpy(value, bytes_.data() + at_, sizeof(T));
    at_ += sizeof(T);
    return true;
  }
  template <typename T>
  bool GetArray(size_t n, std::vector<T>* values) {
    if ((bytes_.size() - at_) / sizeof(T) < n) return false;
    values->resize(n);
    std::memcpy(values->data(), bytes_.data() + at_, n * sizeof(T));
    at_ += n * sizeof(T);
    return true;
  }
  size_t remaining() const { return bytes_.size() - at_; }

 private:
  std::string_view bytes_;
  size_t at_ = 0;
};

}  // namespace

std::string EncodeArchivedBlocks(std::span<const ArchivedBlock> blocks, int64_t head_dim) {
  std::string out;
  size_t size = 28;
  for (const ArchivedBlock& b : blocks) size += 20 + ArchivedBlockBytes(b);
  out.reserve(size);
  out.append(kMagic, sizeof(kMagic));
  Append(&out, kVersion);
  Append(&out, static_cast<uint32_t>(head_dim));
  Append(&out, static_cast<uint64_t>(blocks.size()));
  for (const ArchivedBlock& b : blocks) {
    Append(&out, b.layer);
    Append(&out, b.kv_head);
    Append(&out, b.block_id);
    Append(&out, static_cast<uint32_t>(b.positions.size()));
    AppendArray(&out, b.positions);
    AppendArray(&out, b.scores);
    AppendArray(&out, b.keys);
    AppendArray(&out, b.values);
  }
  Append(&out, Fnv1a64(out));
  return out;
}

absl::StatusOr<std::vector<ArchivedBlock>> DecodeArchivedBlocks(std::string_view bytes,
                                                                int64_t head_dim) {
  if (bytes.size() < 28 || std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) {
    return absl::InvalidArgumentError("archived blocks: not an LRBD encoding");
  }
  const std::string_view body = bytes.substr(0, bytes.size() - sizeof(uint64_t));
  uint64_t checksum = 0;
  std::memcpy(&checksum, bytes.data() + body.size(), sizeof(checksum));
  if (checksum != Fnv1a64(body)) return absl::DataLossError("archived blocks: checksum mismatch");
  Reader r(body.substr(sizeof(kMagic)));
  uint32_t version = 0, dim = 0;
  uint64_t n_blocks = 0;
  if (!r.Get(&version) || !r.Get(&dim) || !r.Get(&n_blocks)) {
    return absl::DataLossError("archived blocks: truncated header");
  }
  if (version != kVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat("archived blocks: unknown format version ", version));
  }
  if (static_cast<int64_t>(dim) != head_dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("archived blocks: head_dim ", dim, ", expected ", head_dim));
  }
  // Each block takes at least 20 bytes: a count beyond that is damage, not an allocation.
  if (n_blocks > r.remaining() / 20) return absl::DataLossError("archived blocks: bad count");
  std::vector<ArchivedBlock> blocks(n_blocks);
  for (ArchivedBlock& b : blocks) {
    uint32_t n = 0;
    if (!r.Get(&b.layer) || !r.Get(&b.kv_head) || !r.Get(&b.block_id) || !r.Get(&n) ||
        !r.GetArray(n, &b.positions) || !r.GetArray(n, &b.scores) ||
        !r.GetArray(size_t{n} * dim, &b.keys) || !r.GetArray(size_t{n} * dim, &b.values)) {
      return absl::DataLossError("archived blocks: truncated block");
    }
  }
  if (r.remaining() != 0) return absl::DataLossError("archived blocks: trailing bytes");
  return blocks;
}

}  // namespace longread::engine
