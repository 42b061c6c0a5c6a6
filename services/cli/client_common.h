// What the client commands share: flags, the connection to the coordinator (TLS, bearer
// token), gRPC status -> exit code, JSON output.
#pragma once

#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "google/protobuf/message.h"
#include "grpcpp/grpcpp.h"
#include "longread/v1/job_service.grpc.pb.h"

namespace longread::services::client {

// Exit codes, documented in every client command's --help and in README.md.
enum ExitCode {
  kOk = 0,
  kInternal = 1,
  kUsage = 2,
  kRefused = 3,          // INVALID_ARGUMENT, OUT_OF_RANGE, PERMISSION_DENIED, NOT_FOUND, or a
                         // local input that cannot be read
  kJobFailed = 6,        // the job ended FAILED or CANCELLED
  kUnavailable = 7,      // unreachable, UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED
  kUnauthenticated = 8,  // UNAUTHENTICATED
};

struct Flags {
  // Every option and positional argument in command-line order (positional: empty name).
  std::vector<std::pair<std::string, std::string>> items;
  std::vector<std::string> positional;
  bool Has(const std::string& name) const;
  // The last value given.
  std::string Get(const std::string& name, const std::string& fallback = "") const;
};

// `switches` take no value; any option not in `switches` or `valued` is a usage error.
bool ParseFlags(int argc, char** argv, int first, const std::set<std::string>& switches,
                const std::set<std::string>& valued, Flags* flags, std::string* error);
bool ParseInt(const Flags& flags, const std::string& name, int64_t min, int64_t* out,
              std::string* error);
bool ParseDouble(const Flags& flags, const std::string& name, double min, double max, double* out,
                 std::string* error);

int Usage(const std::string& error);

// The flags every client command takes (connection, TLS, token).
extern const std::set<std::string> kConnectionFlags;

struct Connection {
  std::string target;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::JobService::Stub> stub;
  std::string token;  // never logged
  // Adds the bearer token to a call.
  void Prepare(grpc::ClientContext* context) const;
};

// A usage error's exit code, or kOk with `connection` ready.
int Connect(const Flags& flags, Connection* connection);

int ExitCodeFor(const grpc::Status& status);
// Prints "longread: WHAT failed: CODE: message" (and any retry hint) on stderr; the exit code.
int ReportRpcError(const std::string& what, const grpc::Status& status,
                   const grpc::ClientContext* context = nullptr);

// Proto3 JSON, field names as in the .proto, zero values printed, one line.
std::string ToJson(const google::protobuf::Message& message);
std::string JobStateName(v1::JobState state);
std::string DocumentStateName(v1::DocumentState state);

struct WatchOptions {
  int64_t from_offset = 0;
  bool jsonl = false;
  bool quiet = false;
  double reattach_seconds = 300;  // give up when no stream could be opened for this long
};
// Follows a job to its end. kOk when it succeeded, kJobFailed when it failed or was cancelled.
int WatchJob(const Connection& connection, const std::string& job_id, const WatchOptions& options);

int SubmitCommand(const Flags& flags);

}  // namespace longread::services::client
