// longread-worker: loads the model once and serves longread.v1.WorkerService (docs/SERVICE.md).
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/memory/open_backend.h"
#include "engine/model/llama_model.h"
#include "engine/model_files/model_file.h"
#include "engine/tokenizer/tokenizer.h"
#include "kernels/thread_pool.h"
#include "services/common/grpc_server.h"
#include "services/common/log.h"
#include "services/common/metrics.h"
#include "services/worker/worker_metrics.h"
#include "services/worker/worker_service.h"

namespace longread {
namespace {

using services::Log;
using services::LogLevel;

// As `longread run`.
enum ExitCode { kOk = 0, kInternal = 1, kUsage = 2, kBadModel = 4, kNoDevice = 6 };

constexpr char kDefaultModel[] = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

constexpr char kHelp[] = R"(usage: longread-worker [options]

Serves longread.v1.WorkerService: loads the model once and reads the documents a coordinator
assigns, many at once, streaming progress, checkpoints and answers back (docs/SERVICE.md).

  --listen ADDR           gRPC address (default 0.0.0.0:50061; port 0 picks a free one)
  --listen-port-file F    once serving, write the bound gRPC port to F (for scripts and tests
                          that listen on port 0)
  --metrics-listen ADDR   Prometheus /metrics (default 0.0.0.0:9465; "" serves none)
  --health-listen ADDR    also serve grpc.health.v1.Health alone, in plaintext, here
                          (Kubernetes probes; NOT_SERVING while draining; default: off)
  --model PATH            GGUF file or Hugging Face directory (default: $LONGREAD_MODEL, else
                          models/SmolLM2-135M-Instruct.Q4_1.gguf); coordinators must use the same
  --threads N             CPU threads of the shared thread pool (default: the cores)
  --device cpu|cuda|auto  where documents are read (default cpu). cuda: the weights once on the
                          GPU (bf16) and each document's memory there too; sampling stays on
                          the host. auto: cuda when this build has CUDA and a GPU is visible.
                          cuda without a visible GPU: exit 6. The device is the `backend`
                          label of longread_build_info and the `device` label of
                          longread_device_memory_bytes on /metrics
  --capacity N            documents read at once (default 4); more are refused with
                          RESOURCE_EXHAUSTED
  --batch-documents N     up to N documents' segments share one forward pass (default: the
                          capacity with --device cuda, 1 on the CPU: each reads alone)
  --cache-dir DIR         local RocksDB of recall archives, in DIR/worker-db (default
                          $XDG_CACHE_HOME/longread or ~/.cache/longread); one database per
                          process: give each worker on a host its own directory
  --archive-max-bytes N   recall archive cap per document (default 1073741824)
  --drain-seconds S       on SIGTERM: stop accepting, let each document finish its current
                          segment, checkpoint and hand it back, exit within S (default 60)
  --tls-cert F --tls-key F      serve TLS
  --tls-client-ca F       require client certificates signed by this CA (mutual TLS)
  --max-message-bytes N   gRPC message limit (default 16777216)
  --log-format text|json  structured logs on stderr (default text)
  --help                  this text

Exit codes: 0 ok (including a drained SIGTERM), 1 internal error (cannot listen, cache
unusable), 2 usage, 4 unusable model, 6 the --device asked for is unavailable.
)";

int Usage(const std::string& error) {
  std::fprintf(stderr, "longread-worker: %s (see --help)\n", error.c_str());
  return kUsage;
}

std::string DefaultCacheDir() {
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  if (xdg != nullptr && xdg[0] == '/') return absl::StrCat(xdg, "/longread");
  const char* home = std::getenv("HOME");
  if (home != nullptr && home[0] != '\0') return absl::StrCat(home, "/.cache/longread");
  return "";
}

int Main(int argc, char** argv) {
  static const std::set<std::string> kKnown = {
      "listen",        "listen-port-file",  "metrics-listen",
      "model",         "threads",           "device",
      "capacity",      "cache-dir",         "archive-max-bytes",
      "drain-seconds", "tls-cert",          "tls-key",
      "tls-client-ca", "max-message-bytes", "log-format",
      "help",          "health-listen",     "batch-documents"};
  std::map<std::string, std::string> flags;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h") a = "--help";
    if (a.rfind("--", 0) != 0) return Usage(absl::StrCat("unexpected argument '", a, "'"));
    std::string name = a.substr(2), value;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else if (name != "help") {
      if (i + 1 >= argc) return Usage(absl::StrCat("option --", name, " needs a value"));
      value = argv[++i];
    }
    if (!kKnown.count(name)) return Usage(absl::StrCat("unknown option --", name));
    flags[name] = value;
  }
  if (flags.count("help")) {
    std::fputs(kHelp, stdout);
    return kOk;
  }
  auto get = [&](const std::string& name, const std::string& fallback) {
    auto it = flags.find(name);
    return it == flags.end() ? fallback : it->second;
  };
  auto get_int = [&](const std::string& name, int64_t fallback, int64_t min, int64_t* out) {
    *out = fallback;
    if (!flags.count(name)) return true;
    return absl::SimpleAtoi(flags[name], out) && *out >= min;
  };
  const std::string format = get("log-format", "text");
  if (format == "json") {
    services::SetLogFormat(services::LogFormat::kJson);
  } else if (format != "text") {
    return Usage("--log-format must be text or json");
  }
  int64_t threads = 0, capacity = 0, archive_max = 0, max_message = 0, batch_documents = 0;
  double drain_seconds = 60;
  if (!get_int("threads", kernels::DefaultThreadCount(), 1, &threads)) {
    return Usage("--threads must be an integer >= 1");
  }
  if (!get_int("capacity", 4, 1, &capacity)) return Usage("--capacity must be an integer >= 1");
  if (!get_int("batch-documents", 0, 1, &batch_documents)) {
    return Usage("--batch-documents must be an integer >= 1");
  }
  if (!get_int("archive-max-bytes", int64_t{1} << 30, 0, &archive_max)) {
    return Usage("--archive-max-bytes must be an integer >= 0");
  }
  if (!get_int("max-message-bytes", services::kDefaultMaxMessageBytes, 1 << 20, &max_message)) {
    return Usage("--max-message-bytes must be an integer >= 1048576");
  }
  if (flags.count("drain-seconds") &&
      (!absl::SimpleAtod(flags["drain-seconds"], &drain_seconds) || !(drain_seconds >= 0))) {
    return Usage("--drain-seconds must be a number >= 0");
  }
  auto resolved_device = engine::ResolveDevice(get("device", "cpu"));
  if (!resolved_device.ok()) return Usage(std::string(resolved_device.status().message()));
  const std::string device = *resolved_device;
  if (auto s = engine::CheckDevice(device); !s.ok()) {
    Log(LogLevel::kError, "device_unavailable", {{"device", device}, {"error", s.ToString()}});
    return kNoDevice;
  }
  const std::string cache_dir = get("cache-dir", DefaultCacheDir());
  if (cache_dir.empty()) return Usage("--cache-dir is needed (no HOME or XDG_CACHE_HOME)");
  services::ServerTlsFiles tls{get("tls-cert", ""), get("tls-key", ""), get("tls-client-ca", "")};
  if (tls.cert.empty() != tls.key.empty()) return Usage("--tls-cert and --tls-key go together");
  if (!tls.client_ca.empty() && tls.cert.empty()) return Usage("--tls-client-ca needs --tls-cert");

  // SIGTERM and SIGINT are taken by sigwait below: block them before any thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  std::string path = get("model", "");
  if (path.empty()) {
    const char* env = std::getenv("LONGREAD_MODEL");
    path = env != nullptr && *env != '\0' ? env : kDefaultModel;
  }
  auto file = engine::ModelFile::Open(path);
  if (!file.ok()) {
    Log(LogLevel::kError, "model_unusable", {{"path", path}, {"error", file.status().ToString()}});
    return kBadModel;
  }
  Log(LogLevel::kInfo, "model_loaded", {{"path", path}, {"model", (*file)->Describe()}});
  auto tokenizer = engine::Tokenizer::Create((*file)->tokenizer());
  if (!tokenizer.ok()) {
    Log(LogLevel::kError, "tokenizer_unusable",
        {{"path", path}, {"error", tokenizer.status().ToString()}});
    return kBadModel;
  }
  auto model = engine::LlamaModel::Load(std::move(*file));
  if (!model.ok()) {
    Log(LogLevel::kError, "model_unusable", {{"path", path}, {"error", model.status().ToString()}});
    return kBadModel;
  }
  kernels::ThreadPool pool(static_cast<int>(threads));
  auto backend = engine::OpenReadingBackend(device, model->get());
  if (!backend.ok()) {
    Log(LogLevel::kError, "device_unavailable",
        {{"device", device}, {"error", backend.status().ToString()}});
    return backend.status().code() == absl::StatusCode::kFailedPrecondition ? kNoDevice : kInternal;
  }

  services::MetricsOptions metrics_options;
  metrics_options.listen = get("metrics-listen", "0.0.0.0:9465");
  metrics_options.backend = device;
  auto metrics = services::Metrics::Start(metrics_options);
  if (!metrics.ok()) {
    Log(LogLevel::kError, "metrics_unavailable", {{"error", metrics.status().ToString()}});
    return kInternal;
  }
  worker::WorkerMetrics worker_metrics(metrics->get(), device);

  worker::WorkerModel worker_model{model->get(), tokenizer->get(), &pool, nullptr, backend->get()};
  worker::WorkerOptions options;
  options.capacity = static_cast<int32_t>(capacity);
  options.cache_dir = cache_dir;
  options.archive_max_bytes = static_cast<uint64_t>(archive_max);
  options.device = device;
  // Batching pays where one pass over many documents' rows fills the device: on the GPU.
  options.batch_documents = static_cast<int32_t>(batch_documents > 0 ? batch_documents
                                                 : device == "cpu"   ? 1
                                                                     : capacity);
  options.answer_handback_margin = absl::Seconds(std::min(5.0, drain_seconds / 4));
  auto service = worker::WorkerServiceImpl::Create(worker_model, options, &worker_metrics);
  if (!service.ok()) {
    Log(LogLevel::kError, "worker_unusable", {{"error", service.status().ToString()}});
    return kInternal;
  }
  if (!(*service)->archive_ready()) {
    Log(LogLevel::kError, "cache_unusable",
        {{"cache_dir", cache_dir},
         {"note", "recall needs the local archive; give each worker its own --cache-dir"}});
    return kInternal;
  }

  services::GrpcServerOptions server_options;
  server_options.listen = get("listen", "0.0.0.0:50061");
  server_options.tls = tls;
  server_options.max_message_bytes = static_cast<int>(max_message);
  server_options.health_service_names = {"longread.v1.WorkerService"};
  server_options.metrics = metrics->get();
  server_options.health_listen = get("health-listen", "");
  auto server = services::GrpcServer::Start(server_options, {service->get()});
  if (!server.ok()) {
    Log(LogLevel::kError, "listen_failed", {{"error", server.status().ToString()}});
    return kInternal;
  }
  Log(LogLevel::kInfo, "serving",
      {{"port", std::to_string((*server)->port())},
       {"metrics_port", std::to_string((*metrics)->port())},
       {"health_port", std::to_string((*server)->health_port())},
       {"capacity", std::to_string(capacity)},
       {"threads", std::to_string(threads)},
       {"tls", tls.cert.empty() ? "off" : (tls.client_ca.empty() ? "tls" : "mtls")},
       {"model_fingerprint", (*model)->fingerprint()}});
  if (flags.count("listen-port-file")) {
    const std::string port_file = flags["listen-port-file"];
    const std::string tmp = port_file + ".tmp";
    {
      std::ofstream out(tmp);
      out << (*server)->port() << "\n";
    }
    std::rename(tmp.c_str(), port_file.c_str());  // readers never see a partial file
  }

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  const auto drain_start = std::chrono::steady_clock::now();
  const absl::Time deadline = absl::Now() + absl::Seconds(drain_seconds);
  const int32_t in_flight = (*service)->in_flight();
  Log(LogLevel::kInfo, "draining",
      {{"signal", signal_number == SIGTERM ? "SIGTERM" : "SIGINT"},
       {"documents_in_flight", std::to_string(in_flight)},
       {"drain_seconds", absl::StrCat(drain_seconds)}});
  (*server)->SetServing(false);
  (*service)->StartDrain(deadline);
  const bool idle = (*service)->WaitIdle(deadline);
  // Calls still open (a coordinator that never half-closes) are cancelled by the shutdown.
  (*server)->Shutdown(absl::Seconds(1));
  (*server)->Wait();
  const double drained =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - drain_start).count();
  Log(idle ? LogLevel::kInfo : LogLevel::kWarning, "drained",
      {{"seconds", absl::StrFormat("%.3f", drained)},
       {"documents_in_flight_at_signal", std::to_string(in_flight)},
       {"documents_left", std::to_string((*service)->in_flight())}});
  // What must end in order has: the calls (Shutdown above), then the archive database, closed
  // here. The rest is the process's own memory and threads, and its destructors are skipped
  // because two of them wait on timers after the drain: the last grpc::Server's destructor calls
  // grpc_shutdown, which in gRPC 1.51 joins the executor threads, one of which may be polling
  // until its next timer (the keepalive's, up to 10 s: the ~11 s seen between `drained` and
  // the exit), and the /metrics exposer's stop waits for civetweb's master thread to leave its
  // 2 s poll.
  service->reset();
  std::fflush(nullptr);
  std::_Exit(kOk);
}

}  // namespace
}  // namespace longread

int main(int argc, char** argv) { return longread::Main(argc, argv); }
