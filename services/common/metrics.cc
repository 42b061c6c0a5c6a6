#include "services/common/metrics.h"

#include <exception>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

#ifndef LONGREAD_VERSION
#define LONGREAD_VERSION "0.0.0"
#endif
#ifndef LONGREAD_REVISION
#define LONGREAD_REVISION "unknown"
#endif

namespace longread::services {

std::string_view BuildVersion() { return LONGREAD_VERSION; }
std::string_view BuildRevision() { return LONGREAD_REVISION; }

std::string_view GrpcCodeName(int code) {
  static constexpr std::string_view kNames[] = {"OK",
                                                "CANCELLED",
                                                "UNKNOWN",
                                                "INVALID_ARGUMENT",
                                                "DEADLINE_EXCEEDED",
                                                "NOT_FOUND",
                                                "ALREADY_EXISTS",
                                                "PERMISSION_DENIED",
                                                "RESOURCE_EXHAUSTED",
                                                "FAILED_PRECONDITION",
                                                "ABORTED",
                                                "OUT_OF_RANGE",
                                                "UNIMPLEMENTED",
                                                "INTERNAL",
                                                "UNAVAILABLE",
                                                "DATA_LOSS",
                                                "UNAUTHENTICATED"};
  if (code < 0 || code >= static_cast<int>(std::size(kNames))) return "UNKNOWN";
  return kNames[code];
}

prometheus::Histogram::BucketBoundaries Metrics::SecondsBuckets(double first, double last,
                                                                double factor) {
  prometheus::Histogram::BucketBoundaries bounds;
  for (double b = first; b <= last * 1.0001; b *= factor) bounds.push_back(b);
  return bounds;
}

absl::StatusOr<std::unique_ptr<Metrics>> Metrics::Start(const MetricsOptions& options) {
  std::unique_ptr<Metrics> m(new Metrics());
  m->registry_ = std::make_shared<prometheus::Registry>();
  auto& reg = *m->registry_;
  prometheus::BuildGauge()
      .Name("longread_build_info")
      .Help("Build of this process; always 1")
      .Register(reg)
      .Add({{"version", std::string(BuildVersion())},
            {"revision", std::string(BuildRevision())},
            {"backend", options.backend}})
      .Set(1);
  m->handled_ = &prometheus::BuildCounter()
                     .Name("longread_grpc_server_handled_total")
                     .Help("RPCs finished by the server, by method and status code")
                     .Register(reg);
  m->rocksdb_size_bytes_ = &prometheus::BuildGauge()
                                .Name("longread_rocksdb_size_bytes")
                                .Help("Live SST files and memtables of this process's database")
                                .Register(reg)
                                .Add({});
  m->tokens_read_ = &prometheus::BuildCounter()
                         .Name("longread_tokens_read_total")
                         .Help("Document tokens read")
                         .Register(reg)
                         .Add({});
  m->tokens_generated_ = &prometheus::BuildCounter()
                              .Name("longread_tokens_generated_total")
                              .Help("Answer tokens generated")
                              .Register(reg)
                              .Add({});
  if (!options.listen.empty()) {
    try {
      m->exposer_ = std::make_unique<prometheus::Exposer>(options.listen);
    } catch (const std::exception& e) {
      return absl::UnavailableError(
          absl::StrCat("cannot serve /metrics on ", options.listen, ": ", e.what()));
    }
    m->exposer_->RegisterCollectable(m->registry_);
    const std::vector<int> ports = m->exposer_->GetListeningPorts();
    m->port_ = ports.empty() ? 0 : ports.front();
  }
  return m;
}

void Metrics::RecordHandled(std::string_view full_method, int grpc_code) {
  // "/longread.v1.JobService/SubmitJob" -> ("longread.v1.JobService", "SubmitJob")
  std::string_view s = full_method;
  if (!s.empty() && s.front() == '/') s.remove_prefix(1);
  const size_t slash = s.find('/');
  const std::string_view service = slash == std::string_view::npos ? s : s.substr(0, slash);
  const std::string_view method =
      slash == std::string_view::npos ? std::string_view() : s.substr(slash + 1);
  handled_
      ->Add({{"grpc_service", std::string(service)},
             {"grpc_method", std::string(method)},
             {"grpc_code", std::string(GrpcCodeName(grpc_code))}})
      .Increment();
}

}  // namespace longread::services
