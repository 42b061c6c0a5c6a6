// The message of a status, for EXPECT_THAT(..., HasSubstr(...)) on parse errors.
#pragma once

#include <string>

#include "absl/status/status.h"

namespace longread::engine::testing {

inline std::string Message(const absl::Status& s) { return std::string(s.message()); }

}  // namespace longread::engine::testing
