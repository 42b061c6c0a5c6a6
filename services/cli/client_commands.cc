#include "services/cli/client_commands.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/time_util.h"
#include "services/cli/client_common.h"
#include "services/common/metrics.h"

namespace longread::services {
namespace client {
namespace {

constexpr char kConnectionHelp[] = R"(
Connection:
  --coordinator HOST:PORT  the coordinator (default: $LONGREAD_COORDINATOR, else
                           127.0.0.1:50051)
  --tls-ca FILE            talk TLS, verifying the coordinator with this CA (PEM); without it
                           but with --tls-cert: the system's roots
  --tls-cert FILE --tls-key FILE   the client certificate and key (mutual TLS)
  --tls-server-name NAME   the name expected in the coordinator's certificate
  --token TOKEN            bearer token (default: $LONGREAD_TOKEN); never logged. Prefer
  --token-file FILE        a file holding the token (not visible in the process list)

Exit codes: 0 ok, 1 internal error, 2 bad usage, 3 input refused (a local file unreadable, or
the server answered INVALID_ARGUMENT, OUT_OF_RANGE, PERMISSION_DENIED or NOT_FOUND), 6 the job
failed or was cancelled, 7 the coordinator unreachable or overloaded (UNAVAILABLE,
RESOURCE_EXHAUSTED: the retry hint is printed, DEADLINE_EXCEEDED), 8 UNAUTHENTICATED (missing
or wrong token).
)";

constexpr char kWatchOutputHelp[] = R"(Output (watch):
  progress bars per document on stderr, the answers on stdout (several documents: each after
  a "== NAME ==" line); a document's failure on stderr
  --jsonl                one JSON object per event on stdout (proto3 JSON of JobEvent, field
                         names as in the .proto, 64-bit integers as strings), nothing else
  --quiet                no progress bars and notices
  --reattach-seconds S   a dropped stream is re-attached from the last offset seen, retrying
                         for up to S seconds (default 300) before giving up with exit code 7
)";

constexpr char kSubmitHelp[] = R"(Usage: longread submit [options] INPUT...

Submits a job to a coordinator: every INPUT becomes one or more documents, streamed in chunks
(never loaded whole). Prints the job id on stdout (with --watch: on stderr, then follows it).

Inputs (in command-line order):
  FILE                   a UTF-8 text document
  -                      stdin as one document (named "stdin")
  DIR                    every regular file under DIR (recursive, sorted, .git and symlinks
                         skipped), each its own document
  --repository PATH      a code repository as ONE document: a tar archive, or a directory sent
                         as a tar stream (files in path order, each after "=== path ===")
  --server-path PATH     a file on the coordinator's host under its --path-root (a directory
                         there: a repository)
  --server-repository PATH  a tar archive or directory on the coordinator's host, as a
                         repository
  --name TEXT            the job's name in listings

Task:
  --task NAME            summarize (default), analyze_code, question, or custom
  --question TEXT        the question for --task question (implies it)
  --instruction TEXT     your own instruction for --task custom (implies it)

Memory and generation (unset: the server's default, that of `longread run`):
  --memory-k K  --window W  --sinks S  --segment-tokens L  --block-tokens B
  --recall-blocks R (0: off)  --max-tokens N  --temperature T  --top-p P  --seed N

  --deadline DURATION    the job's time limit from submission (e.g. 90s, 10m, 2h): then it
                         ends FAILED (deadline exceeded), running documents stop within a
                         segment, and the answer text streamed so far stays readable
  --idempotency-key KEY  a resubmission with the same key returns the first job
  --chunk-bytes N        bytes per streamed message (default 1048576)
  --json                 print the SubmitJobResponse as JSON instead of the id
  --watch                follow the job to its end, as `longread watch`; the exit code is
                         then the job's (6 if it failed or was cancelled)
)";

constexpr char kWatchHelp[] = R"(Usage: longread watch [options] JOB_ID

Follows a job's events until it ends: progress, streamed answers, failures.
  --from-offset N        start from event N (default 0: the whole history)
)";

constexpr char kGetHelp[] = R"(Usage: longread get [options] JOB_ID

Prints a job: state, task, options, each document's state, progress, worker and answer.
  --json                 the Job as JSON
)";

constexpr char kListHelp[] = R"(Usage: longread list [options]

Lists jobs, newest first, one page at a time.
  --page-size N          jobs per page (default 50, at most 1000)
  --page-token TOKEN     the page after the one that printed this token
  --state STATE          only queued, running, succeeded, failed or cancelled jobs
  --json                 the ListJobsResponse as JSON
)";

constexpr char kCancelHelp[] = R"(Usage: longread cancel [options] JOB_ID

Cancels a job (idempotent): running documents stop within one segment. Prints the job.
  --json                 the Job as JSON
)";

std::string FullHelp(std::string_view command) {
  if (command == "submit") {
    return absl::StrCat(kSubmitHelp, "\n", kWatchOutputHelp, kConnectionHelp);
  }
  if (command == "watch") return absl::StrCat(kWatchHelp, "\n", kWatchOutputHelp, kConnectionHelp);
  if (command == "get") return absl::StrCat(kGetHelp, kConnectionHelp);
  if (command == "list") return absl::StrCat(kListHelp, kConnectionHelp);
  if (command == "cancel") return absl::StrCat(kCancelHelp, kConnectionHelp);
  return "";
}

std::string Timestamp(const google::protobuf::Timestamp& t) {
  if (t.seconds() == 0 && t.nanos() == 0) return "-";
  return google::protobuf::util::TimeUtil::ToString(t);
}

std::string TaskText(const v1::Task& task) {
  switch (task.kind()) {
    case v1::TASK_KIND_ANALYZE_CODE:
      return "analyze_code";
    case v1::TASK_KIND_QUESTION:
      return absl::StrCat("question: ", task.question());
    case v1::TASK_KIND_CUSTOM:
      return absl::StrCat("custom: ", task.instruction());
    default:
      return "summarize";
  }
}

void PrintJob(const v1::Job& job) {
  std::printf("job %s  %s%s\n", job.job_id().c_str(), JobStateName(job.state()).c_str(),
              job.deadline_exceeded() ? " (deadline exceeded)"
              : job.cancel_requested() && job.state() == v1::JOB_STATE_RUNNING ? " (cancelling)"
                                                                               : "");
  if (!job.name().empty()) std::printf("name     %s\n", job.name().c_str());
  std::printf("task     %s\n", TaskText(job.task()).c_str());
  const v1::JobOptions& o = job.options();
  std::printf(
      "options  memory_k %lld  window %lld  sinks %lld  segment_tokens %lld  block_tokens %lld  "
      "recall_blocks %lld  max_new_tokens %lld  temperature %g  top_p %g  seed %llu\n",
      static_cast<long long>(o.memory_k()), static_cast<long long>(o.window()),
      static_cast<long long>(o.sinks()), static_cast<long long>(o.segment_tokens()),
      static_cast<long long>(o.block_tokens()), static_cast<long long>(o.recall_blocks()),
      static_cast<long long>(o.max_new_tokens()), o.temperature(), o.top_p(),
      static_cast<unsigned long long>(o.seed()));
  std::printf("created  %s  updated %s  events %lld\n", Timestamp(job.created()).c_str(),
              Timestamp(job.updated()).c_str(), static_cast<long long>(job.events()));
  if (job.has_deadline()) std::printf("deadline %s\n", Timestamp(job.deadline()).c_str());
  for (const v1::DocumentStatus& d : job.documents()) {
    std::printf("document %d  %s  %s  %lld/%lld tokens%s%s\n", d.index(), d.name().c_str(),
                DocumentStateName(d.state()).c_str(), static_cast<long long>(d.tokens_read()),
                static_cast<long long>(d.total_tokens()),
                d.worker().empty() ? "" : absl::StrCat("  worker ", d.worker()).c_str(),
                d.error().empty() ? "" : absl::StrCat("  error: ", d.error()).c_str());
  }
  for (const v1::DocumentStatus& d : job.documents()) {
    if (d.answer().empty()) continue;
    std::printf("\n== answer %d: %s ==\n%s\n", d.index(), d.name().c_str(), d.answer().c_str());
  }
}

bool ParseJobState(const std::string& text, v1::JobState* state) {
  static const std::pair<const char*, v1::JobState> kStates[] = {
      {"queued", v1::JOB_STATE_QUEUED},       {"running", v1::JOB_STATE_RUNNING},
      {"succeeded", v1::JOB_STATE_SUCCEEDED}, {"failed", v1::JOB_STATE_FAILED},
      {"cancelled", v1::JOB_STATE_CANCELLED},
  };
  for (const auto& [name, value] : kStates) {
    if (text == name) {
      *state = value;
      return true;
    }
  }
  return false;
}

int OneJobId(const Flags& flags, const char* command, std::string* job_id) {
  if (flags.positional.size() != 1 || flags.positional[0].empty()) {
    return Usage(absl::StrCat(command, " needs exactly one JOB_ID"));
  }
  *job_id = flags.positional[0];
  return kOk;
}

int GetCommand(const Flags& flags) {
  std::string job_id;
  if (int rc = OneJobId(flags, "get", &job_id); rc != kOk) return rc;
  Connection connection;
  if (int rc = Connect(flags, &connection); rc != kOk) return rc;
  grpc::ClientContext context;
  connection.Prepare(&context);
  v1::GetJobRequest request;
  request.set_job_id(job_id);
  v1::Job job;
  grpc::Status status = connection.stub->GetJob(&context, request, &job);
  if (!status.ok()) return ReportRpcError("get", status, &context);
  if (flags.Has("json")) {
    std::printf("%s\n", ToJson(job).c_str());
  } else {
    PrintJob(job);
  }
  return kOk;
}

int CancelCommand(const Flags& flags) {
  std::string job_id;
  if (int rc = OneJobId(flags, "cancel", &job_id); rc != kOk) return rc;
  Connection connection;
  if (int rc = Connect(flags, &connection); rc != kOk) return rc;
  grpc::ClientContext context;
  connection.Prepare(&context);
  v1::CancelJobRequest request;
  request.set_job_id(job_id);
  v1::Job job;
  grpc::Status status = connection.stub->CancelJob(&context, request, &job);
  if (!status.ok()) return ReportRpcError("cancel", status, &context);
  if (flags.Has("json")) {
    std::printf("%s\n", ToJson(job).c_str());
  } else {
    PrintJob(job);
  }
  return kOk;
}

int ListCommand(const Flags& flags) {
  if (!flags.positional.empty()) return Usage("list takes no arguments");
  v1::ListJobsRequest request;
  int64_t page_size = 0;
  std::string error;
  if (!ParseInt(flags, "page-size", 1, &page_size, &error)) return Usage(error);
  if (page_size > 1000) return Usage("--page-size must be at most 1000");
  request.set_page_size(static_cast<int32_t>(page_size));
  request.set_page_token(flags.Get("page-token"));
  if (flags.Has("state")) {
    v1::JobState state;
    if (!ParseJobState(flags.Get("state"), &state)) {
      return Usage("--state must be queued, running, succeeded, failed or cancelled");
    }
    request.set_state(state);
  }
  Connection connection;
  if (int rc = Connect(flags, &connection); rc != kOk) return rc;
  grpc::ClientContext context;
  connection.Prepare(&context);
  v1::ListJobsResponse response;
  grpc::Status status = connection.stub->ListJobs(&context, request, &response);
  if (!status.ok()) return ReportRpcError("list", status, &context);
  if (flags.Has("json")) {
    std::printf("%s\n", ToJson(response).c_str());
    return kOk;
  }
  std::printf("%-22s %-10s %5s  %-30s %s\n", "JOB_ID", "STATE", "DOCS", "CREATED", "NAME");
  for (const v1::Job& job : response.jobs()) {
    std::printf("%-22s %-10s %5d  %-30s %s\n", job.job_id().c_str(),
                JobStateName(job.state()).c_str(), job.documents_size(),
                Timestamp(job.created()).c_str(), job.name().c_str());
  }
  if (!response.next_page_token().empty()) {
    std::fprintf(stderr, "more: longread list --page-token %s\n",
                 response.next_page_token().c_str());
  }
  return kOk;
}

int WatchCommand(const Flags& flags) {
  std::string job_id;
  if (int rc = OneJobId(flags, "watch", &job_id); rc != kOk) return rc;
  WatchOptions options;
  std::string error;
  if (!ParseInt(flags, "from-offset", 0, &options.from_offset, &error) ||
      !ParseDouble(flags, "reattach-seconds", 0, 1e9, &options.reattach_seconds, &error)) {
    return Usage(error);
  }
  options.jsonl = flags.Has("jsonl");
  options.quiet = flags.Has("quiet");
  Connection connection;
  if (int rc = Connect(flags, &connection); rc != kOk) return rc;
  return WatchJob(connection, job_id, options);
}

}  // namespace

const std::set<std::string> kConnectionFlags = {
    "coordinator", "tls-ca", "tls-cert", "tls-key", "token", "token-file", "tls-server-name"};

bool Flags::Has(const std::string& name) const {
  for (const auto& [n, v] : items) {
    if (n == name) return true;
  }
  return false;
}

std::string Flags::Get(const std::string& name, const std::string& fallback) const {
  std::string value = fallback;
  for (const auto& [n, v] : items) {
    if (n == name) value = v;
  }
  return value;
}

bool ParseFlags(int argc, char** argv, int first, const std::set<std::string>& switches,
                const std::set<std::string>& valued, Flags* flags, std::string* error) {
  for (int i = first; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h") a = "--help";
    if (a.rfind("--", 0) != 0 || a == "-") {
      flags->items.emplace_back("", a);
      flags->positional.push_back(a);
      continue;
    }
    std::string name = a.substr(2), value;
    const auto eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    if (switches.count(name) > 0) {
      if (eq != std::string::npos) {
        *error = absl::StrCat("--", name, " takes no value");
        return false;
      }
    } else if (valued.count(name) > 0 || kConnectionFlags.count(name) > 0) {
      if (eq == std::string::npos) {
        if (i + 1 >= argc) {
          *error = absl::StrCat("option --", name, " needs a value");
          return false;
        }
        value = argv[++i];
      }
    } else {
      *error = absl::StrCat("unknown option --", name);
      return false;
    }
    flags->items.emplace_back(name, value);
  }
  return true;
}

bool ParseInt(const Flags& flags, const std::string& name, int64_t min, int64_t* out,
              std::string* error) {
  if (!flags.Has(name)) return true;
  if (!absl::SimpleAtoi(flags.Get(name), out) || *out < min) {
    *error =
        absl::StrCat("--", name, " must be an integer >= ", min, ", got '", flags.Get(name), "'");
    return false;
  }
  return true;
}

bool ParseDouble(const Flags& flags, const std::string& name, double min, double max, double* out,
                 std::string* error) {
  if (!flags.Has(name)) return true;
  if (!absl::SimpleAtod(flags.Get(name), out) || !(*out >= min && *out <= max)) {
    *error = absl::StrCat("--", name, " must be a number in [", min, ", ", max, "], got '",
                          flags.Get(name), "'");
    return false;
  }
  return true;
}

int Usage(const std::string& error) {
  std::fprintf(stderr, "longread: %s (see --help)\n", error.c_str());
  return kUsage;
}

void Connection::Prepare(grpc::ClientContext* context) const {
  if (!token.empty()) context->AddMetadata("authorization", absl::StrCat("Bearer ", token));
}

namespace {
bool ReadWhole(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::ostringstream buffer;
  buffer << in.rdbuf();
  *out = buffer.str();
  return true;
}
}  // namespace

int Connect(const Flags& flags, Connection* connection) {
  const char* env = std::getenv("LONGREAD_COORDINATOR");
  connection->target =
      flags.Get("coordinator", env != nullptr && *env != '\0' ? env : "127.0.0.1:50051");
  if (connection->target.empty()) return Usage("--coordinator needs HOST:PORT");
  if (flags.Has("token-file")) {
    if (!ReadWhole(flags.Get("token-file"), &connection->token)) {
      return Usage(absl::StrCat("cannot read --token-file ", flags.Get("token-file")));
    }
    connection->token = std::string(absl::StripAsciiWhitespace(connection->token));
  } else if (flags.Has("token")) {
    connection->token = flags.Get("token");
  } else if (const char* t = std::getenv("LONGREAD_TOKEN"); t != nullptr) {
    connection->token = t;
  }
  grpc::ChannelArguments arguments;
  arguments.SetMaxReceiveMessageSize(64 << 20);
  arguments.SetMaxSendMessageSize(64 << 20);
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (flags.Has("tls-ca") || flags.Has("tls-cert") || flags.Has("tls-key")) {
    if (flags.Has("tls-cert") != flags.Has("tls-key")) {
      return Usage("--tls-cert and --tls-key go together");
    }
    grpc::SslCredentialsOptions ssl;
    const std::pair<const char*, std::string*> files[] = {{"tls-ca", &ssl.pem_root_certs},
                                                          {"tls-cert", &ssl.pem_cert_chain},
                                                          {"tls-key", &ssl.pem_private_key}};
    for (const auto& [name, field] : files) {
      if (flags.Has(name) && !ReadWhole(flags.Get(name), field)) {
        return Usage(absl::StrCat("cannot read --", name, " ", flags.Get(name)));
      }
    }
    credentials = grpc::SslCredentials(ssl);
    if (flags.Has("tls-server-name")) {
      arguments.SetSslTargetNameOverride(flags.Get("tls-server-name"));
    }
  } else {
    credentials = grpc::InsecureChannelCredentials();
  }
  connection->channel = grpc::CreateCustomChannel(connection->target, credentials, arguments);
  connection->stub = v1::JobService::NewStub(connection->channel);
  return kOk;
}

int ExitCodeFor(const grpc::Status& status) {
  switch (status.error_code()) {
    case grpc::StatusCode::OK:
      return kOk;
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::OUT_OF_RANGE:
    case grpc::StatusCode::PERMISSION_DENIED:
    case grpc::StatusCode::NOT_FOUND:
    case grpc::StatusCode::FAILED_PRECONDITION:
      return kRefused;
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return kUnavailable;
    case grpc::StatusCode::UNAUTHENTICATED:
      return kUnauthenticated;
    default:
      return kInternal;
  }
}

int ReportRpcError(const std::string& what, const grpc::Status& status,
                   const grpc::ClientContext* context) {
  std::string hint;
  if (context != nullptr && status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
    const auto& trailers = context->GetServerTrailingMetadata();
    if (auto it = trailers.find("retry-after-ms"); it != trailers.end()) {
      hint =
          absl::StrCat(" (retry after ", std::string(it->second.data(), it->second.size()), " ms)");
    }
  }
  std::fprintf(stderr, "longread: %s failed: %s: %s%s\n", what.c_str(),
               std::string(services::GrpcCodeName(status.error_code())).c_str(),
               status.error_message().c_str(), hint.c_str());
  return ExitCodeFor(status);
}

std::string ToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  return out;
}

std::string JobStateName(v1::JobState state) {
  switch (state) {
    case v1::JOB_STATE_QUEUED:
      return "queued";
    case v1::JOB_STATE_RUNNING:
      return "running";
    case v1::JOB_STATE_SUCCEEDED:
      return "succeeded";
    case v1::JOB_STATE_FAILED:
      return "failed";
    case v1::JOB_STATE_CANCELLED:
      return "cancelled";
    default:
      return "unknown";
  }
}

std::string DocumentStateName(v1::DocumentState state) {
  switch (state) {
    case v1::DOCUMENT_STATE_QUEUED:
      return "queued";
    case v1::DOCUMENT_STATE_RUNNING:
      return "running";
    case v1::DOCUMENT_STATE_SUCCEEDED:
      return "succeeded";
    case v1::DOCUMENT_STATE_FAILED:
      return "failed";
    case v1::DOCUMENT_STATE_CANCELLED:
      return "cancelled";
    default:
      return "unknown";
  }
}

}  // namespace client

bool IsClientCommand(std::string_view command) {
  return command == "submit" || command == "watch" || command == "get" || command == "list" ||
         command == "cancel";
}

std::string_view ClientCommandHelp(std::string_view command) {
  static const std::string kHelps[] = {client::FullHelp("submit"), client::FullHelp("watch"),
                                       client::FullHelp("get"), client::FullHelp("list"),
                                       client::FullHelp("cancel")};
  static const char* const kNames[] = {"submit", "watch", "get", "list", "cancel"};
  for (int i = 0; i < 5; ++i) {
    if (command == kNames[i]) return kHelps[i];
  }
  return "";
}

int RunClientCommand(int argc, char** argv) {
  using namespace client;
  const std::string command = argv[1];
  static const std::set<std::string> kWatchSwitches = {"jsonl", "quiet"};
  static const std::set<std::string> kWatchValued = {"reattach-seconds"};
  std::set<std::string> switches = {"help"}, valued;
  if (command == "submit") {
    switches.insert({"json", "watch", "jsonl", "quiet"});
    valued = {"repository",    "server-path",     "server-repository", "name",
              "task",          "question",        "instruction",       "memory-k",
              "window",        "sinks",           "segment-tokens",    "block-tokens",
              "recall-blocks", "max-tokens",      "temperature",       "top-p",
              "seed",          "idempotency-key", "chunk-bytes",       "reattach-seconds",
              "deadline"};
  } else if (command == "watch") {
    switches.insert(kWatchSwitches.begin(), kWatchSwitches.end());
    valued = {"from-offset", "reattach-seconds"};
  } else if (command == "get" || command == "cancel") {
    switches.insert("json");
  } else if (command == "list") {
    switches.insert("json");
    valued = {"page-size", "page-token", "state"};
  }
  Flags flags;
  std::string error;
  if (!ParseFlags(argc, argv, 2, switches, valued, &flags, &error)) {
    return Usage(absl::StrCat(error, " for ", command));
  }
  if (flags.Has("help")) {
    std::fputs(std::string(ClientCommandHelp(command)).c_str(), stdout);
    return kOk;
  }
  if (command == "submit") return SubmitCommand(flags);
  if (command == "watch") return WatchCommand(flags);
  if (command == "get") return GetCommand(flags);
  if (command == "list") return ListCommand(flags);
  if (command == "cancel") return CancelCommand(flags);
  return Usage("unknown command '" + command + "'");
}

}  // namespace longread::services
