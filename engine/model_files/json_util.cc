#include "engine/model_files/json_util.h"

#include <sys/stat.h>

#include <fstream>
#include <sstream>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "engine/model_files/internal.h"

namespace longread::engine::mf {
namespace {

// Depth of the deepest [ or { outside strings, with the offset where the limit was crossed.
absl::Status CheckDepth(std::string_view text, std::string_view what) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth) {
        return absl::InvalidArgumentError(
            Cat(what, ": JSON nested deeper than ", kMaxJsonDepth, " at byte offset ", i));
      }
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return absl::OkStatus();
}

const nlohmann::json* Member(const nlohmann::json& obj, std::string_view key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(std::string(key));
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

absl::Status Missing(std::string_view what, std::string_view key) {
  return absl::InvalidArgumentError(Cat(what, ": required field '", key, "' is missing"));
}

absl::Status WrongType(std::string_view what, std::string_view key, const nlohmann::json& v,
                       std::string_view want) {
  return absl::InvalidArgumentError(
      Cat(what, ": field '", key, "' is a ", v.type_name(), ", expected ", want));
}

}  // namespace

absl::StatusOr<nlohmann::json> ParseJson(std::string_view text, std::string_view what,
                                         uint64_t max_bytes) {
  if (text.size() > max_bytes) {
    return absl::InvalidArgumentError(
        Cat(what, ": ", text.size(), " bytes exceeds the limit of ", max_bytes));
  }
  MF_RETURN_IF_ERROR(CheckDepth(text, what));
  // nlohmann::json keeps the last of duplicate keys silently; a duplicated tensor or token
  // would hide data, so the callback records the first duplicate and parsing fails after.
  std::vector<absl::flat_hash_set<std::string>> open_objects;
  std::optional<std::string> duplicate;
  auto callback = [&](int, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using Event = nlohmann::json::parse_event_t;
    if (event == Event::object_start) {
      open_objects.emplace_back();
    } else if (event == Event::object_end) {
      if (!open_objects.empty()) open_objects.pop_back();
    } else if (event == Event::key && !open_objects.empty() && parsed.is_string()) {
      if (!open_objects.back().insert(parsed.get<std::string>()).second && !duplicate) {
        duplicate = parsed.get<std::string>();
      }
    }
    return true;
  };
  try {
    nlohmann::json json = nlohmann::json::parse(text.begin(), text.end(), callback);
    if (duplicate) {
      return absl::InvalidArgumentError(Cat(what, ": duplicate key '", *duplicate, "'"));
    }
    return json;
  } catch (const nlohmann::json::parse_error& e) {
    return absl::InvalidArgumentError(
        Cat(what, ": invalid JSON at byte offset ", e.byte, ": ", e.what()));
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(Cat(what, ": invalid JSON: ", e.what()));
  }
}

absl::StatusOr<std::string> ReadSmallFile(const std::string& path, uint64_t max_bytes) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return absl::NotFoundError(Cat("'", path, "' is missing"));
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(Cat("'", path, "' is not a regular file"));
  }
  if (static_cast<uint64_t>(st.st_size) > max_bytes) {
    return absl::InvalidArgumentError(
        Cat("'", path, "' is ", st.st_size, " bytes, over the limit of ", max_bytes));
  }
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  if (!in) return absl::InternalError(Cat("cannot read '", path, "'"));
  return out.str();
}

absl::StatusOr<int64_t> JsonInt(const nlohmann::json& obj, std::string_view key, int64_t lo,
                                int64_t hi, std::optional<int64_t> fallback,
                                std::string_view what) {
  const nlohmann::json* v = Member(obj, key);
  if (v == nullptr) {
    if (fallback) return *fallback;
    return Missing(what, key);
  }
  int64_t value = 0;
  if (v->is_number_unsigned()) {
    uint64_t u = v->get<uint64_t>();
    if (u > static_cast<uint64_t>(hi)) {
      return absl::OutOfRangeError(
          Cat(what, ": field '", key, "' = ", u, " is not in [", lo, ", ", hi, "]"));
    }
    value = static_cast<int64_t>(u);
  } else if (v->is_number_integer()) {
    value = v->get<int64_t>();
  } else {
    return WrongType(what, key, *v, "an integer");
  }
  if (value < lo || value > hi) {
    return absl::OutOfRangeError(
        Cat(what, ": field '", key, "' = ", value, " is not in [", lo, ", ", hi, "]"));
  }
  return value;
}

absl::StatusOr<double> JsonNumber(const nlohmann::json& obj, std::string_view key,
                                  std::optional<double> fallback, std::string_view what) {
  const nlohmann::json* v = Member(obj, key);
  if (v == nullptr) {
    if (fallback) return *fallback;
    return Missing(what, key);
  }
  if (!v->is_number()) return WrongType(what, key, *v, "a number");
  return v->get<double>();
}

absl::StatusOr<bool> JsonBool(const nlohmann::json& obj, std::string_view key,
                              std::optional<bool> fallback, std::string_view what) {
  const nlohmann::json* v = Member(obj, key);
  if (v == nullptr) {
    if (fallback) return *fallback;
    return Missing(what, key);
  }
  if (!v->is_boolean()) return WrongType(what, key, *v, "a boolean");
  return v->get<bool>();
}

absl::StatusOr<std::string> JsonString(const nlohmann::json& obj, std::string_view key,
                                       std::optional<std::string> fallback, std::string_view what) {
  const nlohmann::json* v = Member(obj, key);
  if (v == nullptr) {
    if (fallback) return *fallback;
    return Missing(what, key);
  }
  if (!v->is_string()) return WrongType(what, key, *v, "a string");
  return v->get<std::string>();
}

}  // namespace longread::engine::mf
