#include "engine/model_files/gguf.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "engine/model_files/internal.h"

namespace longread::engine {

static_assert(std::endian::native == std::endian::little,
              "GGUF is little-endian; this reader decodes in place");

namespace {

constexpr uint32_t kMinVersion = 2;
constexpr uint32_t kMaxVersion = 3;
constexpr uint32_t kMaxDims = 4;
constexpr int kMaxArrayDepth = 16;
constexpr uint64_t kMaxKeyLength = 65535;
constexpr uint64_t kMaxTensorNameLength = 256;
constexpr uint64_t kMaxAlignment = uint64_t{1} << 30;
// Fewest bytes a metadata entry / tensor info can occupy; a count larger than what the
// remaining bytes could hold at this size is refused before anything is reserved.
constexpr uint64_t kMinKvBytes = 8 + 1 + 4 + 1;                  // key length, key, type, u8 value
constexpr uint64_t kMinTensorInfoBytes = 8 + 1 + 4 + 8 + 4 + 8;  // name, n_dims, dim, type, offset

bool IsKnownValueType(uint32_t t) { return t <= static_cast<uint32_t>(GgufValueType::kF64); }

absl::Status WithKey(std::string_view key, const absl::Status& s) {
  return absl::Status(s.code(), mf::Cat("gguf: key '", key, "': ", s.message()));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Parsing

class GgufParser {
 public:
  GgufParser(std::string_view bytes, GgufFile* file) : bytes_(bytes), file_(file) {}

  absl::Status Run() {
    MF_RETURN_IF_ERROR(Header());
    for (uint64_t i = 0; i < n_kv_; ++i) MF_RETURN_IF_ERROR(KeyValue(i));
    MF_RETURN_IF_ERROR(Alignment());
    std::vector<uint64_t> info_offsets;
    info_offsets.reserve(n_tensors_);
    for (uint64_t i = 0; i < n_tensors_; ++i) {
      info_offsets.push_back(pos_);
      MF_RETURN_IF_ERROR(TensorInfo(i));
    }
    return DataSection(info_offsets);
  }

 private:
  uint64_t remaining() const { return bytes_.size() - pos_; }

  absl::Status Truncated(std::string_view field, uint64_t need) const {
    return absl::DataLossError(mf::Cat("gguf: ", field, " at offset ", pos_, " needs ", need,
                                       " bytes but only ", remaining(), " remain (file size ",
                                       bytes_.size(), ")"));
  }

  absl::Status Invalid(std::string_view field, uint64_t offset, std::string_view what) const {
    return absl::InvalidArgumentError(mf::Cat("gguf: ", field, " at offset ", offset, ": ", what));
  }

  template <typename T>
  absl::StatusOr<T> Read(std::string_view field) {
    if (remaining() < sizeof(T)) return Truncated(field, sizeof(T));
    T v = mf::LoadLe<T>(bytes_.data() + pos_);
    pos_ += sizeof(T);
    return v;
  }

  absl::StatusOr<std::string_view> String(std::string_view field, uint64_t max_length) {
    uint64_t at = pos_;
    MF_ASSIGN_OR_RETURN(uint64_t length, Read<uint64_t>(field));
    if (length > remaining()) {
      pos_ = at;
      return absl::DataLossError(mf::Cat("gguf: ", field, " at offset ", at, ": string length ",
                                         length, " exceeds the ", remaining() - 8,
                                         " bytes left in the file"));
    }
    if (length > max_length) {
      return Invalid(field, at,
                     mf::Cat("string length ", length, " exceeds the limit ", max_length));
    }
    std::string_view s = bytes_.substr(pos_, length);
    pos_ += length;
    return s;
  }

  absl::Status Header() {
    if (bytes_.size() < 4 || bytes_.substr(0, 4) != "GGUF") {
      return absl::InvalidArgumentError("gguf: bad magic at offset 0 (not a GGUF file)");
    }
    pos_ = 4;
    MF_ASSIGN_OR_RETURN(uint32_t version, Read<uint32_t>("version"));
    if (version == 1) {
      return absl::InvalidArgumentError(
          "gguf: version 1 at offset 4 is not supported (only versions 2 and 3)");
    }
    if (version < kMinVersion || version > kMaxVersion) {
      bool swapped = (version & 0xFFFF) == 0 && (version >> 16) != 0;
      return absl::InvalidArgumentError(mf::Cat("gguf: unsupported version ", version,
                                                " at offset 4 (only 2 and 3)",
                                                swapped ? "; a big-endian file?" : ""));
    }
    file_->version_ = version;
    uint64_t at = pos_;
    MF_ASSIGN_OR_RETURN(n_tensors_, Read<uint64_t>("tensor_count"));
    MF_ASSIGN_OR_RETURN(n_kv_, Read<uint64_t>("metadata_kv_count"));
    // Each count alone, then both together, must fit in the bytes left at their minimum sizes.
    uint64_t rem = remaining();
    if (n_tensors_ > rem / kMinTensorInfoBytes || n_kv_ > rem / kMinKvBytes ||
        n_tensors_ * kMinTensorInfoBytes + n_kv_ * kMinKvBytes > rem) {
      return absl::DataLossError(mf::Cat("gguf: tensor_count ", n_tensors_,
                                         " and metadata_kv_count ", n_kv_, " at offset ", at,
                                         " cannot fit in the ", rem, " bytes left in the file"));
    }
    file_->kv_.reserve(n_kv_);
    file_->tensors_.reserve(n_tensors_);
    return absl::OkStatus();
  }

  absl::Status KeyValue(uint64_t index) {
    uint64_t at = pos_;
    std::string field = mf::Cat("metadata key #", index);
    MF_ASSIGN_OR_RETURN(std::string_view key, String(field, kMaxKeyLength));
    if (key.empty()) return Invalid(field, at, "empty key");
    field = mf::Cat("metadata '", key, "'");
    if (file_->kv_index_.contains(key)) return Invalid(field, at, "duplicate key");
    uint64_t type_at = pos_;
    MF_ASSIGN_OR_RETURN(uint32_t type, Read<uint32_t>(field));
    if (!IsKnownValueType(type)) {
      return Invalid(field, type_at, mf::Cat("unknown value type ", type));
    }
    GgufValue value;
    MF_RETURN_IF_ERROR(Value(static_cast<GgufValueType>(type), field, 0, &value));
    file_->kv_index_.emplace(key, file_->kv_.size());
    file_->kv_.emplace_back(key, std::move(value));
    return absl::OkStatus();
  }

  absl::Status Value(GgufValueType type, const std::string& field, int depth, GgufValue* out) {
    out->type_ = type;
    uint64_t at = pos_;
    if (type == GgufValueType::kString) {
      MF_ASSIGN_OR_RETURN(out->raw_, String(field, std::numeric_limits<uint64_t>::max()));
      return absl::OkStatus();
    }
    if (type != GgufValueType::kArray) {
      uint64_t size = GgufScalarSize(type);
      if (remaining() < size) return Truncated(field, size);
      out->raw_ = bytes_.substr(pos_, size);
      pos_ += size;
      if (type == GgufValueType::kBool && static_cast<uint8_t>(out->raw_[0]) > 1) {
        return Invalid(field, at, "bool value is neither 0 nor 1");
      }
      return absl::OkStatus();
    }
    if (depth >= kMaxArrayDepth) {
      return Invalid(field, at, mf::Cat("arrays nested deeper than ", kMaxArrayDepth));
    }
    MF_ASSIGN_OR_RETURN(uint32_t elem, Read<uint32_t>(field));
    if (!IsKnownValueType(elem)) {
      return Invalid(field, at, mf::Cat("unknown array element type ", elem));
    }
    out->elem_type_ = static_cast<GgufValueType>(elem);
    uint64_t count_at = pos_;
    MF_ASSIGN_OR_RETURN(out->count_, Read<uint64_t>(field));
    uint64_t min_elem_bytes = GgufScalarSize(out->elem_type_);
    if (out->elem_type_ == GgufValueType::kString) min_elem_bytes = 8;
    if (out->elem_type_ == GgufValueType::kArray) min_elem_bytes = 12;
    if (out->count_ > remaining() / min_elem_bytes) {
      return absl::DataLossError(mf::Cat("gguf: ", field, " at offset ", count_at, ": array of ",
                                         out->count_, " ", GgufValueTypeName(out->elem_type_),
                                         " elements cannot fit in the ", remaining(),
                                         " bytes left in the file"));
    }
    if (min_elem_bytes == GgufScalarSize(out->elem_type_)) {
      out->raw_ = bytes_.substr(pos_, out->count_ * min_elem_bytes);
      pos_ += out->raw_.size();
      if (out->elem_type_ == GgufValueType::kBool) {
        for (char c : out->raw_) {
          if (static_cast<uint8_t>(c) > 1) return Invalid(field, at, "bool element not 0 or 1");
        }
      }
      return absl::OkStatus();
    }
    if (out->elem_type_ == GgufValueType::kString) {
      out->strings_.reserve(out->count_);
      for (uint64_t i = 0; i < out->count_; ++i) {
        MF_ASSIGN_OR_RETURN(std::string_view s, String(mf::Cat(field, "[", i, "]"),
                                                       std::numeric_limits<uint64_t>::max()));
        out->strings_.push_back(s);
      }
      return absl::OkStatus();
    }
    out->arrays_.reserve(out->count_);
    for (uint64_t i = 0; i < out->count_; ++i) {
      out->arrays_.emplace_back();
      MF_RETURN_IF_ERROR(Value(GgufValueType::kArray, mf::Cat(field, "[", i, "]"), depth + 1,
                               &out->arrays_.back()));
    }
    return absl::OkStatus();
  }

  absl::Status Alignment() {
    const GgufValue* v = file_->Find("general.alignment");
    if (v == nullptr) return absl::OkStatus();
    absl::StatusOr<uint64_t> a = v->AsU64();
    if (!a.ok()) return WithKey("general.alignment", a.status());
    if (*a == 0 || !std::has_single_bit(*a) || *a > kMaxAlignment) {
      return absl::InvalidArgumentError(mf::Cat(
          "gguf: general.alignment ", *a, " is not a power of two in [1, ", kMaxAlignment, "]"));
    }
    file_->alignment_ = *a;
    return absl::OkStatus();
  }

  absl::Status TensorInfo(uint64_t index) {
    uint64_t at = pos_;
    std::string field = mf::Cat("tensor info #", index);
    MF_ASSIGN_OR_RETURN(std::string_view name, String(field, kMaxTensorNameLength));
    field = mf::Cat("tensor '", name, "'");
    if (name.empty()) return Invalid(field, at, "empty tensor name");
    if (file_->tensor_index_.contains(name)) return Invalid(field, at, "duplicate tensor name");
    GgufTensorInfo info;
    info.name = std::string(name);
    uint64_t dims_at = pos_;
    MF_ASSIGN_OR_RETURN(uint32_t n_dims, Read<uint32_t>(field));
    if (n_dims == 0 || n_dims > kMaxDims) {
      return Invalid(field, dims_at, mf::Cat("n_dims ", n_dims, " not in [1, ", kMaxDims, "]"));
    }
    int64_t elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t dim_at = pos_;
      MF_ASSIGN_OR_RETURN(uint64_t dim, Read<uint64_t>(field));
      if (dim == 0 || dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          __builtin_mul_overflow(elements, static_cast<int64_t>(dim), &elements)) {
        return Invalid(
            field, dim_at,
            mf::Cat("dim[", d, "] = ", dim, " is zero or makes the element count overflow"));
      }
      info.dims.push_back(static_cast<int64_t>(dim));
    }
    uint64_t type_at = pos_;
    MF_ASSIGN_OR_RETURN(info.type, Read<uint32_t>(field));
    int64_t block_elements = 0, block_bytes = 0;
    if (!GgmlTypeLayout(info.type, &block_elements, &block_bytes)) {
      return Invalid(field, type_at, mf::Cat("unknown ggml type id ", info.type));
    }
    if (info.dims[0] % block_elements != 0) {
      return Invalid(field, type_at,
                     mf::Cat("row length ", info.dims[0], " is not a multiple of the ",
                             GgmlTypeName(info.type), " block size ", block_elements));
    }
    int64_t bytes = 0;
    if (__builtin_mul_overflow(elements / block_elements, block_bytes, &bytes)) {
      return Invalid(field, type_at, "byte size overflows");
    }
    info.bytes = static_cast<uint64_t>(bytes);
    uint64_t offset_at = pos_;
    MF_ASSIGN_OR_RETURN(info.offset, Read<uint64_t>(field));
    if (info.offset % file_->alignment_ != 0) {
      return Invalid(field, offset_at,
                     mf::Cat("data offset ", info.offset, " is not a multiple of the alignment ",
                             file_->alignment_));
    }
    file_->tensor_index_.emplace(name, file_->tensors_.size());
    file_->tensors_.push_back(std::move(info));
    return absl::OkStatus();
  }

  absl::Status DataSection(const std::vector<uint64_t>& info_offsets) {
    uint64_t align = file_->alignment_;
    uint64_t start = (pos_ + align - 1) / align * align;  // pos_ <= size < 2^63: no overflow
    uint64_t size = bytes_.size();
    if (start > size) {
      if (!file_->tensors_.empty()) {
        return absl::DataLossError(mf::Cat("gguf: data section start ", start, " (aligned to ",
                                           align, ") lies past the end of the file (size ", size,
                                           ")"));
      }
      start = size;
    }
    file_->data_offset_ = start;
    uint64_t avail = size - start;
    std::vector<size_t> order(file_->tensors_.size());
    for (size_t i = 0; i < order.size(); ++i) {
      GgufTensorInfo& t = file_->tensors_[i];
      order[i] = i;
      if (t.offset > avail || t.bytes > avail - t.offset) {
        uint64_t absolute = 0;
        std::string where = __builtin_add_overflow(start, t.offset, &absolute)
                                ? mf::Cat("data-section offset ", t.offset)
                                : mf::Cat("offset ", absolute);
        return absl::DataLossError(mf::Cat("gguf: tensor '", t.name, "' (info at offset ",
                                           info_offsets[i], ") data [", where, ", ", t.bytes,
                                           " bytes) lies outside the file (size ", size, ")"));
      }
      t.data = reinterpret_cast<const uint8_t*>(bytes_.data()) + start + t.offset;
    }
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return file_->tensors_[a].offset < file_->tensors_[b].offset;
    });
    for (size_t k = 1; k < order.size(); ++k) {
      const GgufTensorInfo& prev = file_->tensors_[order[k - 1]];
      const GgufTensorInfo& next = file_->tensors_[order[k]];
      if (prev.offset + prev.bytes > next.offset) {
        return absl::InvalidArgumentError(mf::Cat("gguf: tensor '", next.name, "' data at offset ",
                                                  start + next.offset, " overlaps tensor '",
                                                  prev.name, "' [", start + prev.offset, ", ",
                                                  start + prev.offset + prev.bytes, ")"));
      }
    }
    return absl::OkStatus();
  }

  std::string_view bytes_;
  GgufFile* file_;
  uint64_t pos_ = 0;
  uint64_t n_tensors_ = 0;
  uint64_t n_kv_ = 0;
};

// ---------------------------------------------------------------------------------------------
// GgufFile

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Parse(std::string_view bytes) {
  std::unique_ptr<GgufFile> file(new GgufFile());
  file->bytes_ = bytes;
  GgufParser parser(bytes, file.get());
  MF_RETURN_IF_ERROR(parser.Run());
  return file;
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  MF_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> mapping, MappedFile::Open(path));
  absl::StatusOr<std::unique_ptr<GgufFile>> file = Parse(mapping->bytes());
  if (!file.ok()) {
    return absl::Status(file.status().code(), mf::Cat(file.status().message(), " [", path, "]"));
  }
  (*file)->mapping_ = std::move(mapping);
  return file;
}

const GgufValue* GgufFile::Find(std::string_view key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

const GgufTensorInfo* GgufFile::FindTensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

absl::StatusOr<const GgufValue*> GgufFile::Require(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return absl::NotFoundError(mf::Cat("gguf: key '", key, "' is missing"));
  return v;
}

absl::StatusOr<std::string> GgufFile::GetString(std::string_view key) const {
  MF_ASSIGN_OR_RETURN(const GgufValue* v, Require(key));
  absl::StatusOr<std::string_view> s = v->AsString();
  if (!s.ok()) return WithKey(key, s.status());
  return std::string(*s);
}

absl::StatusOr<uint64_t> GgufFile::GetU64(std::string_view key) const {
  MF_ASSIGN_OR_RETURN(const GgufValue* v, Require(key));
  absl::StatusOr<uint64_t> u = v->AsU64();
  if (!u.ok()) return WithKey(key, u.status());
  return *u;
}

absl::StatusOr<uint32_t> GgufFile::GetU32(std::string_view key) const {
  MF_ASSIGN_OR_RETURN(uint64_t u, GetU64(key));
  if (u > std::numeric_limits<uint32_t>::max()) {
    return absl::OutOfRangeError(
        mf::Cat("gguf: key '", key, "': value ", u, " does not fit in u32"));
  }
  return static_cast<uint32_t>(u);
}

absl::StatusOr<int64_t> GgufFile::GetI64(std::string_view key) const {
  MF_ASSIGN_OR_RETURN(const GgufValue* v, Require(key));
  absl::StatusOr<int64_t> i = v->AsI64();
  if (!i.ok()) return WithKey(key, i.status());
  return *i;
}

absl::StatusOr<float> GgufFile::GetF32(std::string_view key) const {
  MF_ASSIGN_OR_RETURN(const GgufValue* v, Require(key));
  absl::StatusOr<double> f = v->AsF64();
  if (!f.ok()) return WithKey(key, f.status());
  return mf::NarrowToFloat(*f, mf::Cat("gguf: key '", key, "'"));
}

absl::StatusOr<bool> GgufFile::GetBool(std::string_view key) const {
  MF_ASSIGN_OR_RETURN(const GgufValue* v, Require(key));
  absl::StatusOr<bool> b = v->AsBool();
  if (!b.ok()) return WithKey(key, b.status());
  return *b;
}

absl::StatusOr<std::vector<std::string>> GgufFile::GetStringArray(std::string_view key) const {
  MF_ASSIGN_OR_RETURN(const GgufValue* v, Require(key));
  absl::StatusOr<std::vector<std::string>> a = v->ArrayStrings();
  if (!a.ok()) return WithKey(key, a.status());
  return a;
}

absl::StatusOr<std::vector<int64_t>> GgufFile::GetI64Array(std::string_view key) const {
  MF_ASSIGN_OR_RETURN(const GgufValue* v, Require(key));
  absl::StatusOr<std::vector<int64_t>> a = v->ArrayI64();
  if (!a.ok()) return WithKey(key, a.status());
  return a;
}

}  // namespace longread::engine
