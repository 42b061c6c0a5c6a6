#include "services/common/auth.h"

#include <functional>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "services/common/grpc_server.h"

namespace longread::services {
namespace {

// Compares without an early exit, so the time taken does not reveal a matching prefix.
bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace

std::string TokenPrincipal(std::string_view token) {
  // FNV-1a: a stable name for logs, not a security boundary.
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : token) h = (h ^ c) * 1099511628211ull;
  return absl::StrFormat("token-%08x", static_cast<uint32_t>(h >> 32));
}

std::unique_ptr<TokenAuthenticator> TokenAuthenticator::Disabled() {
  return std::unique_ptr<TokenAuthenticator>(new TokenAuthenticator());
}

absl::StatusOr<std::unique_ptr<TokenAuthenticator>> TokenAuthenticator::FromFile(
    const std::string& path) {
  auto text = ReadSmallFile(path);
  if (!text.ok()) return text.status();
  auto auth = FromText(*text);
  if (!auth.ok())
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", auth.status().message()));
  return auth;
}

absl::StatusOr<std::unique_ptr<TokenAuthenticator>> TokenAuthenticator::FromText(
    std::string_view text) {
  std::unique_ptr<TokenAuthenticator> auth(new TokenAuthenticator());
  auth->enabled_ = true;
  int line_no = 0;
  for (absl::string_view piece :
       absl::StrSplit(absl::string_view(text.data(), text.size()), '\n')) {
    std::string_view line(piece.data(), piece.size());
    ++line_no;
    const size_t hash = line.find('#');
    if (hash != std::string_view::npos) line = line.substr(0, hash);
    const absl::string_view stripped =
        absl::StripAsciiWhitespace(absl::string_view(line.data(), line.size()));
    line = std::string_view(stripped.data(), stripped.size());
    if (line.empty()) continue;
    std::vector<std::string> fields = absl::StrSplit(absl::string_view(line.data(), line.size()),
                                                     absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (fields.size() != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", line_no, ": expected \"TOKEN ROLE\""));
    }
    Role role;
    if (fields[1] == "read") {
      role = Role::kRead;
    } else if (fields[1] == "write") {
      role = Role::kWrite;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", line_no, ": role must be read or write"));
    }
    auth->tokens_.push_back({fields[0], role});
  }
  if (auth->tokens_.empty()) return absl::InvalidArgumentError("no tokens");
  return auth;
}

grpc::Status TokenAuthenticator::Authorize(const grpc::ServerContextBase& context, Role needed,
                                           Caller* caller) const {
  if (!enabled_) {
    if (caller != nullptr) *caller = Caller{"anonymous", Role::kWrite};
    return grpc::Status::OK;
  }
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "missing bearer token");
  }
  std::string_view value(it->second.data(), it->second.size());
  constexpr std::string_view kBearer = "Bearer ";
  if (value.size() <= kBearer.size() ||
      !absl::EqualsIgnoreCase(absl::string_view(value.data(), kBearer.size()), "bearer ")) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "authorization must be \"Bearer TOKEN\"");
  }
  const std::string_view token = value.substr(kBearer.size());
  const Entry* found = nullptr;
  for (const Entry& e : tokens_) {
    if (ConstantTimeEquals(e.token, token)) found = &e;
  }
  if (found == nullptr) return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "unknown token");
  if (static_cast<int>(found->role) < static_cast<int>(needed)) {
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                        "this token may only read (role read)");
  }
  if (caller != nullptr) *caller = Caller{TokenPrincipal(token), found->role};
  return grpc::Status::OK;
}

}  // namespace longread::services
