// Early-return helpers for absl::Status / absl::StatusOr inside cache/ (Abseil has no public
// ASSIGN_OR_RETURN). Prefixed so they cannot collide with other modules' macros.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define CACHE_CONCAT_INNER(a, b) a##b
#define CACHE_CONCAT(a, b) CACHE_CONCAT_INNER(a, b)

#define CACHE_RETURN_IF_ERROR(expr)                \
  do {                                             \
    ::absl::Status cache_status_ = (expr);         \
    if (!cache_status_.ok()) return cache_status_; \
  } while (0)

#define CACHE_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                \
  if (!tmp.ok()) return tmp.status();               \
  lhs = std::move(tmp).value()

#define CACHE_ASSIGN_OR_RETURN(lhs, expr) \
  CACHE_ASSIGN_OR_RETURN_IMPL(CACHE_CONCAT(cache_statusor_, __LINE__), lhs, expr)
