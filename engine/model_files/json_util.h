// JSON parsing for the Hugging Face files: nesting and size limits are checked before
// nlohmann::json builds anything, and its exceptions become absl::Status naming the byte offset.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace longread::engine::mf {

constexpr int kMaxJsonDepth = 64;

// `what` names the document in errors ("config.json"). Refuses text over `max_bytes`.
absl::StatusOr<nlohmann::json> ParseJson(std::string_view text, std::string_view what,
                                         uint64_t max_bytes);

// Reads a whole regular file of at most `max_bytes`.
absl::StatusOr<std::string> ReadSmallFile(const std::string& path, uint64_t max_bytes);

// An integer member in [lo, hi]; `fallback` when absent or null (an error if there is none).
absl::StatusOr<int64_t> JsonInt(const nlohmann::json& obj, std::string_view key, int64_t lo,
                                int64_t hi, std::optional<int64_t> fallback, std::string_view what);
absl::StatusOr<double> JsonNumber(const nlohmann::json& obj, std::string_view key,
                                  std::optional<double> fallback, std::string_view what);
absl::StatusOr<bool> JsonBool(const nlohmann::json& obj, std::string_view key,
                              std::optional<bool> fallback, std::string_view what);
absl::StatusOr<std::string> JsonString(const nlohmann::json& obj, std::string_view key,
                                       std::optional<std::string> fallback, std::string_view what);

}  // namespace longread::engine::mf
