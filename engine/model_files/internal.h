// Helpers private to the model-file readers: early-return macros for absl::Status (Abseil has no
// public ASSIGN_OR_RETURN; the MF_ prefix keeps them from colliding with other modules') and a
// StrCat that accepts std::string_view (Debian's Abseil has its own string_view type).
#pragma once

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <string_view>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace longread::engine::mf {

inline absl::string_view Adapt(std::string_view s) { return {s.data(), s.size()}; }
inline absl::string_view Adapt(const std::string& s) { return {s.data(), s.size()}; }
inline absl::string_view Adapt(const char* s) { return s; }
inline absl::string_view Adapt(absl::string_view s) { return s; }
template <typename T>
requires std::is_arithmetic_v<T> T Adapt(T v) { return v; }

template <typename... Args>
std::string Cat(const Args&... args) {
  return absl::StrCat(Adapt(args)...);
}

// A trivially copyable value read from possibly unaligned little-endian bytes.
template <typename T>
T LoadLe(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// A double narrowed to float, refusing values a float cannot hold (the cast would be undefined).
inline absl::StatusOr<float> NarrowToFloat(double v, std::string_view field) {
  if (std::isfinite(v) && std::fabs(v) > static_cast<double>(std::numeric_limits<float>::max())) {
    return absl::OutOfRangeError(Cat(field, ": value ", v, " does not fit in a float"));
  }
  return static_cast<float>(v);
}

// Same code, new message: prefixes `context` to `s`'s message.
inline absl::Status Annotate(const absl::Status& s, std::string_view context) {
  return absl::Status(s.code(), Cat(context, s.message()));
}

}  // namespace longread::engine::mf

#define MF_CONCAT_INNER(a, b) a##b
#define MF_CONCAT(a, b) MF_CONCAT_INNER(a, b)

#define MF_RETURN_IF_ERROR(expr)             \
  do {                                       \
    ::absl::Status mf_status_ = (expr);      \
    if (!mf_status_.ok()) return mf_status_; \
  } while (0)

#define MF_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                             \
  if (!tmp.ok()) return tmp.status();            \
  lhs = std::move(tmp).value()

#define MF_ASSIGN_OR_RETURN(lhs, expr) \
  MF_ASSIGN_OR_RETURN_IMPL(MF_CONCAT(mf_statusor_, __LINE__), lhs, expr)
