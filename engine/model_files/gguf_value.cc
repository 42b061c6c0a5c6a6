// GgufValue decoding and the ggml type table; the parser is in gguf.cc.
#include <cstring>
#include <limits>

#include "engine/model_files/gguf.h"
#include "engine/model_files/internal.h"

namespace longread::engine {
namespace {

struct TypeLayout {
  const char* name;
  int64_t block_elements;
  int64_t block_bytes;
};

// ggml_type ids as numbered in the GGUF specification; ids removed from ggml have no entry.
constexpr TypeLayout kGgmlTypes[] = {
    {"F32", 1, 4},        {"F16", 1, 2},       {"Q4_0", 32, 18},     {"Q4_1", 32, 20},
    {nullptr, 0, 0},      {nullptr, 0, 0},     {"Q5_0", 32, 22},     {"Q5_1", 32, 24},
    {"Q8_0", 32, 34},     {"Q8_1", 32, 36},    {"Q2_K", 256, 84},    {"Q3_K", 256, 110},
    {"Q4_K", 256, 144},   {"Q5_K", 256, 176},  {"Q6_K", 256, 210},   {"Q8_K", 256, 292},
    {"IQ2_XXS", 256, 66}, {"IQ2_XS", 256, 74}, {"IQ3_XXS", 256, 98}, {"IQ1_S", 256, 50},
    {"IQ4_NL", 32, 18},   {"IQ3_S", 256, 110}, {"IQ2_S", 256, 82},   {"IQ4_XS", 256, 136},
    {"I8", 1, 1},         {"I16", 1, 2},       {"I32", 1, 4},        {"I64", 1, 8},
    {"F64", 1, 8},        {"IQ1_M", 256, 56},  {"BF16", 1, 2},       {nullptr, 0, 0},
    {nullptr, 0, 0},      {nullptr, 0, 0},     {"TQ1_0", 256, 54},   {"TQ2_0", 256, 66},
    {nullptr, 0, 0},      {nullptr, 0, 0},     {nullptr, 0, 0},      {"MXFP4", 32, 17},
};

// A decoded scalar: exactly one of the fields is meaningful, as `kind` says.
struct Number {
  enum Kind { kUnsigned, kSigned, kFloat, kBool, kNone } kind = kNone;
  uint64_t u = 0;
  int64_t i = 0;
  double f = 0;
};

Number Decode(GgufValueType t, std::string_view raw) {
  Number n;
  if (raw.size() != GgufScalarSize(t) || raw.empty()) return n;
  const char* p = raw.data();
  switch (t) {
    case GgufValueType::kU8:
      return {Number::kUnsigned, mf::LoadLe<uint8_t>(p), 0, 0};
    case GgufValueType::kU16:
      return {Number::kUnsigned, mf::LoadLe<uint16_t>(p), 0, 0};
    case GgufValueType::kU32:
      return {Number::kUnsigned, mf::LoadLe<uint32_t>(p), 0, 0};
    case GgufValueType::kU64:
      return {Number::kUnsigned, mf::LoadLe<uint64_t>(p), 0, 0};
    case GgufValueType::kI8:
      return {Number::kSigned, 0, mf::LoadLe<int8_t>(p), 0};
    case GgufValueType::kI16:
      return {Number::kSigned, 0, mf::LoadLe<int16_t>(p), 0};
    case GgufValueType::kI32:
      return {Number::kSigned, 0, mf::LoadLe<int32_t>(p), 0};
    case GgufValueType::kI64:
      return {Number::kSigned, 0, mf::LoadLe<int64_t>(p), 0};
    case GgufValueType::kF32:
      return {Number::kFloat, 0, 0, mf::LoadLe<float>(p)};
    case GgufValueType::kF64:
      return {Number::kFloat, 0, 0, mf::LoadLe<double>(p)};
    case GgufValueType::kBool:
      return {Number::kBool, mf::LoadLe<uint8_t>(p), 0, 0};
    default:
      return n;
  }
}

absl::Status TypeError(GgufValueType have, std::string_view want) {
  return absl::InvalidArgumentError(
      mf::Cat("value has type ", GgufValueTypeName(have), ", expected ", want));
}

}  // namespace

uint64_t GgufScalarSize(GgufValueType t) {
  switch (t) {
    case GgufValueType::kU8:
    case GgufValueType::kI8:
    case GgufValueType::kBool:
      return 1;
    case GgufValueType::kU16:
    case GgufValueType::kI16:
      return 2;
    case GgufValueType::kU32:
    case GgufValueType::kI32:
    case GgufValueType::kF32:
      return 4;
    case GgufValueType::kU64:
    case GgufValueType::kI64:
    case GgufValueType::kF64:
      return 8;
    case GgufValueType::kString:
    case GgufValueType::kArray:
      return 0;
  }
  return 0;
}

std::string_view GgufValueTypeName(GgufValueType t) {
  static constexpr std::string_view kNames[] = {"u8",  "i8",  "u16",  "i16",    "u32",
                                                "i32", "f32", "bool", "string", "array",
                                                "u64", "i64", "f64"};
  uint32_t i = static_cast<uint32_t>(t);
  return i < std::size(kNames) ? kNames[i] : "unknown";
}

std::string GgmlTypeName(uint32_t type) {
  if (type < std::size(kGgmlTypes) && kGgmlTypes[type].name != nullptr) {
    return kGgmlTypes[type].name;
  }
  return mf::Cat("type#", type);
}

bool GgmlTypeLayout(uint32_t type, int64_t* block_elements, int64_t* block_bytes) {
  if (type >= std::size(kGgmlTypes) || kGgmlTypes[type].name == nullptr) return false;
  *block_elements = kGgmlTypes[type].block_elements;
  *block_bytes = kGgmlTypes[type].block_bytes;
  return true;
}

// ---------------------------------------------------------------------------------------------
// GgufValue

absl::StatusOr<uint64_t> GgufValue::AsU64() const {
  Number n = Decode(type_, raw_);
  if (n.kind == Number::kUnsigned) return n.u;
  if (n.kind == Number::kSigned) {
    if (n.i < 0) return absl::OutOfRangeError(mf::Cat("value ", n.i, " is negative"));
    return static_cast<uint64_t>(n.i);
  }
  return TypeError(type_, "an integer");
}

absl::StatusOr<int64_t> GgufValue::AsI64() const {
  Number n = Decode(type_, raw_);
  if (n.kind == Number::kSigned) return n.i;
  if (n.kind == Number::kUnsigned) {
    if (n.u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return absl::OutOfRangeError(mf::Cat("value ", n.u, " does not fit in i64"));
    }
    return static_cast<int64_t>(n.u);
  }
  return TypeError(type_, "an integer");
}

absl::StatusOr<double> GgufValue::AsF64() const {
  Number n = Decode(type_, raw_);
  switch (n.kind) {
    case Number::kUnsigned:
      return static_cast<double>(n.u);
    case Number::kSigned:
      return static_cast<double>(n.i);
    case Number::kFloat:
      return n.f;
    default:
      return TypeError(type_, "a number");
  }
}

absl::StatusOr<bool> GgufValue::AsBool() const {
  Number n = Decode(type_, raw_);
  if (n.kind != Number::kBool) return TypeError(type_, "bool");
  if (n.u > 1) return absl::InvalidArgumentError(mf::Cat("bool byte is ", n.u));
  return n.u == 1;
}

absl::StatusOr<std::string_view> GgufValue::AsString() const {
  if (type_ != GgufValueType::kString) return TypeError(type_, "string");
  return raw_;
}

absl::StatusOr<GgufValue> GgufValue::At(uint64_t i) const {
  if (!is_array()) return TypeError(type_, "array");
  if (i >= count_) {
    return absl::OutOfRangeError(mf::Cat("index ", i, " >= array size ", count_));
  }
  if (elem_type_ == GgufValueType::kArray) return arrays_[i];
  GgufValue v;
  v.type_ = elem_type_;
  if (elem_type_ == GgufValueType::kString) {
    v.raw_ = strings_[i];
  } else {
    uint64_t size = GgufScalarSize(elem_type_);
    v.raw_ = raw_.substr(i * size, size);
  }
  return v;
}

absl::StatusOr<std::vector<std::string>> GgufValue::ArrayStrings() const {
  if (!is_array() || elem_type_ != GgufValueType::kString) {
    return absl::InvalidArgumentError(mf::Cat("value is ", is_array() ? "an array of " : "",
                                              GgufValueTypeName(is_array() ? elem_type_ : type_),
                                              ", expected an array of strings"));
  }
  return std::vector<std::string>(strings_.begin(), strings_.end());
}

absl::StatusOr<std::vector<int64_t>> GgufValue::ArrayI64() const {
  if (!is_array()) return TypeError(type_, "array of integers");
  std::vector<int64_t> out;
  out.reserve(count_);
  for (uint64_t i = 0; i < count_; ++i) {
    MF_ASSIGN_OR_RETURN(GgufValue e, At(i));
    absl::StatusOr<int64_t> v = e.AsI64();
    if (!v.ok()) {
      return absl::Status(v.status().code(),
                          mf::Cat("array element ", i, ": ", v.status().message()));
    }
    out.push_back(*v);
  }
  return out;
}

absl::StatusOr<std::vector<double>> GgufValue::ArrayF64() const {
  if (!is_array()) return TypeError(type_, "array of numbers");
  std::vector<double> out;
  out.reserve(count_);
  for (uint64_t i = 0; i < count_; ++i) {
    MF_ASSIGN_OR_RETURN(GgufValue e, At(i));
    absl::StatusOr<double> v = e.AsF64();
    if (!v.ok()) {
      return absl::Status(v.status().code(),
                          mf::Cat("array element ", i, ": ", v.status().message()));
    }
    out.push_back(*v);
  }
  return out;
}

int64_t GgufTensorInfo::elements() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;  // the parser proved this does not overflow
  return n;
}

}  // namespace longread::engine
