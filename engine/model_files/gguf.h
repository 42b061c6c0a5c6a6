// Reader for GGUF model files, versions 2 and 3 (little-endian). Every count, length and offset
// read from the file is checked against the bytes that remain and against overflow before
// anything is allocated or indexed, so a hostile file yields an error, never a crash or a huge
// allocation. Values and tensor data point into the file's bytes: nothing is copied.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "engine/model_files/mapped_file.h"

namespace longread::engine {

enum class GgufValueType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};

std::string_view GgufValueTypeName(GgufValueType t);

// Bytes of one scalar of type t; 0 for string and array.
uint64_t GgufScalarSize(GgufValueType t);

// Name of a ggml tensor type id ("Q4_K", ...), or "type#<id>" for ids this reader does not know.
std::string GgmlTypeName(uint32_t type);

// Elements per block and bytes per block of a ggml tensor type; false for unknown ids.
bool GgmlTypeLayout(uint32_t type, int64_t* block_elements, int64_t* block_bytes);

// One metadata value: a scalar, a string or an array (arrays may nest). Scalars and scalar
// arrays keep their raw little-endian bytes in the file; conversions decode on demand.
class GgufValue {
 public:
  GgufValueType type() const { return type_; }
  bool is_array() const { return type_ == GgufValueType::kArray; }

  // Integers convert to any integer type whose range holds them; AsF64 takes any number.
  absl::StatusOr<uint64_t> AsU64() const;
  absl::StatusOr<int64_t> AsI64() const;
  absl::StatusOr<double> AsF64() const;
  absl::StatusOr<bool> AsBool() const;
  absl::StatusOr<std::string_view> AsString() const;

  // Arrays only (0 / kU8 otherwise).
  GgufValueType element_type() const { return elem_type_; }
  uint64_t size() const { return count_; }
  absl::StatusOr<GgufValue> At(uint64_t i) const;
  absl::StatusOr<std::vector<std::string>> ArrayStrings() const;
  absl::StatusOr<std::vector<int64_t>> ArrayI64() const;
  absl::StatusOr<std::vector<double>> ArrayF64() const;

 private:
  friend class GgufParser;

  GgufValueType type_ = GgufValueType::kU8;
  GgufValueType elem_type_ = GgufValueType::kU8;
  uint64_t count_ = 0;
  // Scalar: its raw bytes. String: its text. Array of scalars: the packed elements.
  std::string_view raw_;
  std::vector<std::string_view> strings_;  // array of strings
  std::vector<GgufValue> arrays_;          // array of arrays
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> dims;  // ggml order: dims[0] is the row length (contiguous)
  uint32_t type = 0;          // ggml type id; see kernels::IsSupportedDType
  uint64_t offset = 0;        // relative to the data section
  uint64_t bytes = 0;
  const uint8_t* data = nullptr;

  int64_t elements() const;
};

class GgufFile {
 public:
  // Maps the file read-only; the mapping lives as long as this object.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);
  // Parses bytes that the caller keeps alive for the life of the returned object.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Parse(std::string_view bytes);

  uint32_t version() const { return version_; }
  uint64_t file_size() const { return bytes_.size(); }
  std::string_view bytes() const { return bytes_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }

  // Metadata in file order.
  const std::vector<std::pair<std::string_view, GgufValue>>& metadata() const { return kv_; }
  const GgufValue* Find(std::string_view key) const;
  absl::StatusOr<std::string> GetString(std::string_view key) const;
  absl::StatusOr<uint32_t> GetU32(std::string_view key) const;
  absl::StatusOr<uint64_t> GetU64(std::string_view key) const;
  absl::StatusOr<int64_t> GetI64(std::string_view key) const;
  absl::StatusOr<float> GetF32(std::string_view key) const;
  absl::StatusOr<bool> GetBool(std::string_view key) const;
  absl::StatusOr<std::vector<std::string>> GetStringArray(std::string_view key) const;
  absl::StatusOr<std::vector<int64_t>> GetI64Array(std::string_view key) const;

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* FindTensor(std::string_view name) const;

 private:
  friend class GgufParser;
  GgufFile() = default;
  absl::StatusOr<const GgufValue*> Require(std::string_view key) const;

  std::unique_ptr<MappedFile> mapping_;  // null when parsed from caller-owned bytes
  std::string_view bytes_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string_view, GgufValue>> kv_;
  absl::flat_hash_map<std::string_view, size_t> kv_index_;
  std::vector<GgufTensorInfo> tensors_;
  absl::flat_hash_map<std::string_view, size_t> tensor_index_;
};

}  // namespace longread::engine
