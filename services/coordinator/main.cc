// longread-coordinator: the public JobService, the durable job log, the scheduler of documents
// onto workers (docs/SERVICE.md).
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "engine/model_files/model_file.h"
#include "engine/tokenizer/tokenizer.h"
#include "services/common/auth.h"
#include "services/common/grpc_server.h"
#include "services/common/log.h"
#include "services/common/metrics.h"
#include "services/coordinator/coordinator.h"
#include "services/coordinator/job_service.h"
#include "services/coordinator/job_store.h"
#include "services/coordinator/worker_pool.h"

namespace longread::coordinator {
namespace {

using services::Log;
using services::LogLevel;

enum ExitCode { kOk = 0, kInternal = 1, kUsage = 2, kBadModel = 4 };
constexpr char kDefaultModel[] = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

constexpr char kHelp[] = R"(usage: longread-coordinator [flags]

The public longread.v1.JobService: accepts jobs, tokenizes and persists their documents in
RocksDB before acknowledging, schedules documents onto workers (each document stays on one
worker; a lost worker's documents resume elsewhere from their last checkpoint), and streams
events to watchers. A restarted coordinator resumes every unfinished job. See docs/SERVICE.md.

  --listen ADDR              gRPC address (default 0.0.0.0:50051; port 0 picks a free port)
  --metrics-listen ADDR      Prometheus /metrics (default 0.0.0.0:9464; "" serves none)
  --health-listen ADDR       also serve grpc.health.v1.Health alone, in plaintext, here
                             (Kubernetes probes; default: off)
  --db DIR                   RocksDB of jobs, documents, events, checkpoints (default
                             longread-coordinator.db)
  --workers LIST             comma-separated HOST:PORT, or dns:///NAME:PORT (a headless
                             Service, re-resolved every --resolve-seconds, default 10)
  --resolve-seconds S        how often a dns:/// name is resolved again (default 10)
  --model PATH               the model whose tokenizer splits documents (default: $LONGREAD_MODEL
                             or models/SmolLM2-135M-Instruct.Q4_1.gguf, as longread run)
  --path-root DIR            server-side paths are allowed under this root (repeatable; none:
                             server-side paths are refused)
  --max-document-bytes N     one document's limit (default 1073741824); over it: OUT_OF_RANGE
  --max-job-bytes N          one job's limit (default 4294967296); over it: OUT_OF_RANGE
  --max-queued-documents N   documents waiting for a worker (default 10000); beyond it
                             SubmitJob answers RESOURCE_EXHAUSTED with retry-after-ms
  --checkpoint-seconds S     how often workers checkpoint a document (default 30)
  --max-attempts N           workers a document may be lost on before it fails (default 5)
  --max-message-bytes N      gRPC message limit, both directions (default 16777216)
  --tls-cert F --tls-key F   serve TLS with this certificate and key (PEM)
  --tls-client-ca F          require client certificates signed by this CA (mutual TLS)
  --worker-tls-ca F          talk TLS to workers, verifying them with this CA
  --worker-tls-cert F --worker-tls-key F   the coordinator's client certificate (mTLS)
  --worker-tls-server-name N the name expected in worker certificates (default: the address)
  --auth-tokens FILE         bearer tokens, one per line "TOKEN ROLE" (ROLE: read | write);
                             unset: no authentication (loopback development only, a warning)
  --port-file F              write the bound gRPC port to F once serving (for scripts and tests)
  --backup-dir DIR           on SIGUSR1, write a consistent copy of the database (an online
                             backup) into DIR/<UTC time> (default: the --db path + ".backups")
  --log-format text|json     stderr log lines (default text)
  --help                     this text

Exit codes: 0 stopped cleanly (SIGTERM/SIGINT), 1 internal error, 2 usage, 4 unusable model.

  longread-coordinator backup --db DIR --to DIR    offline backup (see backup --help)
)";

constexpr char kBackupHelp[] = R"(usage: longread-coordinator backup --db DIR --to DIR

Copies a stopped coordinator's database into the new directory --to, consistently (hard links
where the filesystem allows). A running coordinator holds the database's lock: send it SIGUSR1
instead, and it writes the same copy into its --backup-dir while serving. Restore: start a
coordinator with --db on a copy (deploy/README.md). Exit codes: 0 done, 1 failed, 2 usage.
)";

struct Flags {
  std::map<std::string, std::string> values;
  std::vector<std::string> path_roots;
  bool help = false;
  std::string Get(const std::string& name, const std::string& fallback = "") const {
    auto it = values.find(name);
    return it == values.end() ? fallback : it->second;
  }
};

const char* const kKnown[] = {"listen",
                              "metrics-listen",
                              "health-listen",
                              "db",
                              "workers",
                              "resolve-seconds",
                              "model",
                              "path-root",
                              "max-document-bytes",
                              "max-job-bytes",
                              "max-queued-documents",
                              "checkpoint-seconds",
                              "max-attempts",
                              "max-message-bytes",
                              "tls-cert",
                              "tls-key",
                              "tls-client-ca",
                              "worker-tls-ca",
                              "worker-tls-cert",
                              "worker-tls-key",
                              "worker-tls-server-name",
                              "auth-tokens",
                              "port-file",
                              "backup-dir",
                              "log-format"};

bool ParseFlags(int argc, char** argv, Flags* flags, std::string* error) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      flags->help = true;
      continue;
    }
    if (a.rfind("--", 0) != 0) {
      *error = absl::StrCat("unexpected argument \"", a, "\"");
      return false;
    }
    std::string name = a.substr(2), value;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else {
      if (i + 1 >= argc) {
        *error = absl::StrCat("--", name, " needs a value");
        return false;
      }
      value = argv[++i];
    }
    if (std::find(std::begin(kKnown), std::end(kKnown), name) == std::end(kKnown)) {
      *error = absl::StrCat("unknown flag --", name);
      return false;
    }
    if (name == "path-root") {
      flags->path_roots.push_back(value);
    } else {
      flags->values[name] = value;
    }
  }
  return true;
}

template <typename T>
bool ParseNumber(const Flags& flags, const std::string& name, T fallback, T min, T* out,
                 std::string* error) {
  const std::string v = flags.Get(name);
  if (v.empty()) {
    *out = fallback;
    return true;
  }
  bool ok;
  if constexpr (std::is_floating_point_v<T>) {
    ok = absl::SimpleAtod(v, out);
  } else {
    ok = absl::SimpleAtoi(v, out);
  }
  if (!ok || *out < min) {
    *error = absl::StrCat("--", name, " must be a number >= ", min);
    return false;
  }
  return true;
}

std::atomic<int> g_signal{0};
void OnSignal(int sig) { g_signal = sig; }
std::atomic<bool> g_backup_requested{false};
void OnBackupSignal(int) { g_backup_requested = true; }

int Usage(const std::string& error) {
  std::fprintf(stderr, "longread-coordinator: %s (see --help)\n", error.c_str());
  return kUsage;
}

// Writes a backup of the serving database into `backup_dir`/<UTC time>.
void BackUp(const JobStore& store, const std::string& backup_dir) {
  const absl::Time start = absl::Now();
  const std::string path =
      absl::StrCat(backup_dir, "/", absl::FormatTime("%Y%m%dT%H%M%SZ", start, absl::UTCTimeZone()));
  std::error_code ec;
  std::filesystem::create_directories(backup_dir, ec);
  absl::Status s =
      ec ? absl::UnavailableError(absl::StrCat("mkdir ", backup_dir, ": ", ec.message()))
         : store.Checkpoint(path);
  if (!s.ok()) {
    Log(LogLevel::kError, "backup_failed", {{"path", path}, {"error", std::string(s.message())}});
    return;
  }
  Log(LogLevel::kInfo, "backup_done",
      {{"path", path}, {"seconds", absl::StrCat(absl::ToDoubleSeconds(absl::Now() - start))}});
}

int BackupMain(int argc, char** argv) {
  std::string db, to;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kBackupHelp, stdout);
      return kOk;
    }
    if ((a == "--db" || a == "--to") && i + 1 < argc) {
      (a == "--db" ? db : to) = argv[++i];
    } else {
      return Usage(absl::StrCat("backup: unexpected argument \"", a, "\""));
    }
  }
  if (db.empty() || to.empty()) return Usage("backup needs --db DIR and --to DIR");
  if (!std::filesystem::exists(std::filesystem::path(db) / "CURRENT")) {
    return Usage(absl::StrCat("backup: ", db, " is not a coordinator database"));
  }
  auto store = JobStore::Open(db);
  if (!store.ok()) {
    Log(LogLevel::kError, "backup_failed",
        {{"db", db},
         {"error", std::string(store.status().message())},
         {"note", "a running coordinator holds the lock: send it SIGUSR1 (--backup-dir)"}});
    return kInternal;
  }
  if (absl::Status s = (*store)->Checkpoint(to); !s.ok()) {
    Log(LogLevel::kError, "backup_failed", {{"db", db}, {"error", std::string(s.message())}});
    return kInternal;
  }
  Log(LogLevel::kInfo, "backup_done", {{"db", db}, {"path", to}});
  return kOk;
}

int Main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "backup") return BackupMain(argc - 1, argv + 1);
  Flags flags;
  std::string error;
  if (!ParseFlags(argc, argv, &flags, &error)) return Usage(error);
  if (flags.help) {
    std::fputs(kHelp, stdout);
    return kOk;
  }
  const std::string log_format = flags.Get("log-format", "text");
  if (log_format == "json") {
    services::SetLogFormat(services::LogFormat::kJson);
  } else if (log_format != "text") {
    return Usage("--log-format must be text or json");
  }
  CoordinatorOptions options;
  int64_t max_message_bytes = 0;
  double resolve_seconds = 0;
  int64_t max_attempts = 0;
  if (!ParseNumber<int64_t>(flags, "max-document-bytes", options.max_document_bytes, 1,
                            &options.max_document_bytes, &error) ||
      !ParseNumber<int64_t>(flags, "max-job-bytes", options.max_job_bytes, 1,
                            &options.max_job_bytes, &error) ||
      !ParseNumber<int64_t>(flags, "max-queued-documents", options.max_queued_documents, 1,
                            &options.max_queued_documents, &error) ||
      !ParseNumber<double>(flags, "checkpoint-seconds", 30.0, 0.0, &options.checkpoint_seconds,
                           &error) ||
      !ParseNumber<int64_t>(flags, "max-attempts", 5, 1, &max_attempts, &error) ||
      !ParseNumber<int64_t>(flags, "max-message-bytes", services::kDefaultMaxMessageBytes, 4096,
                            &max_message_bytes, &error) ||
      !ParseNumber<double>(flags, "resolve-seconds", 10.0, 0.1, &resolve_seconds, &error)) {
    return Usage(error);
  }
  options.max_attempts = static_cast<int>(max_attempts);
  const std::string workers = flags.Get("workers");
  if (workers.empty()) return Usage("--workers is required (HOST:PORT,... or dns:///NAME:PORT)");

  std::unique_ptr<services::TokenAuthenticator> auth;
  if (flags.Get("auth-tokens").empty()) {
    auth = services::TokenAuthenticator::Disabled();
    Log(LogLevel::kWarning, "auth_disabled",
        {{"note",
          "no --auth-tokens: every caller may read and write (loopback development only)"}});
  } else {
    auto loaded = services::TokenAuthenticator::FromFile(flags.Get("auth-tokens"));
    if (!loaded.ok()) return Usage(std::string(loaded.status().message()));
    auth = std::move(*loaded);
  }

  // Only the tokenizer is used; the weights stay mapped, untouched.
  std::string model_path = flags.Get("model");
  if (model_path.empty()) {
    const char* env = std::getenv("LONGREAD_MODEL");
    model_path = env != nullptr && *env != '\0' ? env : kDefaultModel;
  }
  auto model_file = engine::ModelFile::Open(model_path);
  if (!model_file.ok()) {
    Log(LogLevel::kError, "model_unusable",
        {{"path", model_path}, {"error", std::string(model_file.status().message())}});
    return kBadModel;
  }
  auto tokenizer = engine::Tokenizer::Create((*model_file)->tokenizer());
  if (!tokenizer.ok()) {
    Log(LogLevel::kError, "tokenizer_unusable",
        {{"path", model_path}, {"error", std::string(tokenizer.status().message())}});
    return kBadModel;
  }
  options.model_fingerprint = (*model_file)->fingerprint();

  const std::string db_path = flags.Get("db", "longread-coordinator.db");
  auto store = JobStore::Open(db_path);
  if (!store.ok()) {
    Log(LogLevel::kError, "db_unusable",
        {{"db", db_path}, {"error", std::string(store.status().message())}});
    return kInternal;
  }

  services::MetricsOptions metrics_options;
  metrics_options.listen = flags.Get("metrics-listen", "0.0.0.0:9464");
  auto metrics = services::Metrics::Start(metrics_options);
  if (!metrics.ok()) {
    Log(LogLevel::kError, "metrics_unavailable",
        {{"error", std::string(metrics.status().message())}});
    return kInternal;
  }
  CoordinatorMetrics coordinator_metrics(metrics->get());

  WorkerPoolOptions pool_options;
  pool_options.workers = workers;
  pool_options.resolve_period = absl::Seconds(resolve_seconds);
  pool_options.max_message_bytes = static_cast<int>(max_message_bytes);
  pool_options.tls.ca = flags.Get("worker-tls-ca");
  pool_options.tls.cert = flags.Get("worker-tls-cert");
  pool_options.tls.key = flags.Get("worker-tls-key");
  pool_options.tls.server_name_override = flags.Get("worker-tls-server-name");
  pool_options.tls.use_tls = !pool_options.tls.ca.empty() || !pool_options.tls.cert.empty();
  Coordinator* coordinator_ptr = nullptr;
  auto pool = WorkerPool::Create(pool_options, [&coordinator_ptr] {
    if (coordinator_ptr != nullptr) coordinator_ptr->Poke();
  });
  if (!pool.ok()) return Usage(std::string(pool.status().message()));

  Coordinator coordinator(options, store->get(), pool->get(), &coordinator_metrics);
  coordinator_ptr = &coordinator;
  if (absl::Status s = coordinator.Recover(); !s.ok()) {
    Log(LogLevel::kError, "recovery_failed",
        {{"db", db_path}, {"error", std::string(s.message())}});
    return kInternal;
  }

  JobServiceOptions service_options;
  service_options.path_roots = flags.path_roots;
  service_options.spool_dir = db_path + ".spool";
  JobServiceImpl service(&coordinator, tokenizer->get(), auth.get(), service_options);

  services::GrpcServerOptions server_options;
  server_options.listen = flags.Get("listen", "0.0.0.0:50051");
  server_options.tls.cert = flags.Get("tls-cert");
  server_options.tls.key = flags.Get("tls-key");
  server_options.tls.client_ca = flags.Get("tls-client-ca");
  server_options.max_message_bytes = static_cast<int>(max_message_bytes);
  server_options.health_service_names = {"longread.v1.JobService"};
  server_options.metrics = metrics->get();
  server_options.health_listen = flags.Get("health-listen");
  auto server = services::GrpcServer::Start(server_options, {&service});
  if (!server.ok()) {
    Log(LogLevel::kError, "listen_failed", {{"error", std::string(server.status().message())}});
    return kInternal;
  }
  (*pool)->Start();
  coordinator.Start();

  signal(SIGTERM, OnSignal);
  signal(SIGINT, OnSignal);
  signal(SIGUSR1, OnBackupSignal);
  const std::string backup_dir = flags.Get("backup-dir", db_path + ".backups");
  signal(SIGPIPE, SIG_IGN);
  const int port = (*server)->port();
  if (!flags.Get("port-file").empty()) {
    // Written then renamed, so a reader never sees a partial number.
    const std::string tmp = flags.Get("port-file") + ".tmp";
    std::ofstream(tmp) << port << "\n";
    std::filesystem::rename(tmp, flags.Get("port-file"));
  }
  Log(LogLevel::kInfo, "serving",
      {{"port", std::to_string(port)},
       {"metrics_port", std::to_string((*metrics)->port())},
       {"health_port", std::to_string((*server)->health_port())},
       {"db", db_path},
       {"workers", workers},
       {"tls", server_options.tls.cert.empty()        ? "off"
               : server_options.tls.client_ca.empty() ? "on"
                                                      : "mutual"},
       {"auth", auth->enabled() ? "tokens" : "off"},
       {"version", std::string(services::BuildVersion())},
       {"revision", std::string(services::BuildRevision())}});

  while (g_signal.load() == 0) {
    if (g_backup_requested.exchange(false)) BackUp(**store, backup_dir);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  Log(LogLevel::kInfo, "stopping", {{"signal", std::to_string(g_signal.load())}});
  (*server)->SetServing(false);
  // Streams to workers are cut; their documents stay RUNNING in the log and resume on restart.
  coordinator.Stop();
  (*pool)->Stop();
  (*server)->Shutdown(absl::Seconds(2));
  (*server)->Wait();
  store->reset();  // the job log, closed
  Log(LogLevel::kInfo, "stopped", {});
  // The rest is the process's own memory and threads. Their destructors are skipped because two
  // of them wait on timers (as in longread-worker's exit): gRPC 1.51's grpc_shutdown joins executor
  // threads that may be polling until their next timer, and civetweb's stop waits for its 2 s poll.
  std::fflush(nullptr);
  std::_Exit(kOk);
}

}  // namespace
}  // namespace longread::coordinator

int main(int argc, char** argv) { return longread::coordinator::Main(argc, argv); }
