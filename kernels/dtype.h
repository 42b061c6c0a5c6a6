// Element types of weight tensors, numbered as in GGUF (ggml_type) so that a file's type id maps
// to a DType by a range check alone.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace longread::kernels {

enum class DType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ8_0 = 8,
  kBF16 = 30,
};

// Elements per quantization block (1 for plain float types).
constexpr int64_t BlockElements(DType t) {
  switch (t) {
    case DType::kQ4_0:
    case DType::kQ4_1:
    case DType::kQ8_0:
      return 32;
    default:
      return 1;
  }
}

// Bytes per block: Q4_0 = f16 scale + 16 nibble bytes; Q4_1 = f16 scale + f16 min + 16 bytes;
// Q8_0 = f16 scale + 32 int8.
constexpr int64_t BlockBytes(DType t) {
  switch (t) {
    case DType::kF32:
      return 4;
    case DType::kF16:
    case DType::kBF16:
      return 2;
    case DType::kQ4_0:
      return 18;
    case DType::kQ4_1:
      return 20;
    case DType::kQ8_0:
      return 34;
  }
  return 0;
}

// True when `id` names a type this build can compute with.
constexpr bool IsSupportedDType(uint32_t id) {
  return id == 0 || id == 1 || id == 2 || id == 3 || id == 8 || id == 30;
}

constexpr std::string_view DTypeName(DType t) {
  switch (t) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kQ4_0:
      return "Q4_0";
    case DType::kQ4_1:
      return "Q4_1";
    case DType::kQ8_0:
      return "Q8_0";
    case DType::kBF16:
      return "BF16";
  }
  return "?";
}

// A row-major weight matrix as stored in the model file: `rows` output features, each a row of
// `cols` input elements encoded in `type` (cols is a multiple of BlockElements(type)).
struct MatrixView {
  DType type = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  const void* data = nullptr;

  int64_t row_bytes() const { return cols / BlockElements(type) * BlockBytes(type); }
};

}  // namespace longread::kernels
