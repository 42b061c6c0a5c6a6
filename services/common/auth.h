// Bearer-token authentication of the public API. Tokens come from a file, one per line:
// "TOKEN ROLE" with ROLE read | write (write may also read); '#' starts a comment. Clients send
// the metadata "authorization: Bearer TOKEN". Tokens never appear in logs: a caller is named by
// the first 8 hex digits of the token's hash (its principal).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"

namespace longread::services {

enum class Role { kRead = 1, kWrite = 2 };

struct Caller {
  std::string principal;  // "anonymous" when authentication is off
  Role role = Role::kWrite;
};

class TokenAuthenticator {
 public:
  // An authenticator that lets everyone in as a writer (no --auth-tokens).
  static std::unique_ptr<TokenAuthenticator> Disabled();
  // INVALID_ARGUMENT naming the line for a malformed file; NOT_FOUND when it cannot be read.
  static absl::StatusOr<std::unique_ptr<TokenAuthenticator>> FromFile(const std::string& path);
  static absl::StatusOr<std::unique_ptr<TokenAuthenticator>> FromText(std::string_view text);

  bool enabled() const { return enabled_; }

  // UNAUTHENTICATED without a known bearer token, PERMISSION_DENIED when its role is too weak.
  grpc::Status Authorize(const grpc::ServerContextBase& context, Role needed, Caller* caller) const;

 private:
  struct Entry {
    std::string token;
    Role role;
  };
  bool enabled_ = false;
  std::vector<Entry> tokens_;
};

// The principal of a token as logs show it.
std::string TokenPrincipal(std::string_view token);

}  // namespace longread::services
