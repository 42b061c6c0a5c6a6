// The Prometheus side shared by the coordinator and the worker (names: docs/SERVICE.md): one
// registry per process, served by an Exposer on --metrics-listen, with the metrics both processes
// export (build info, handled RPCs by code, RocksDB size, tokens read and generated).
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace grpc {
class Status;
}

namespace longread::services {

struct MetricsOptions {
  // HOST:PORT for /metrics; port 0 picks a free one (see port()); "" serves nothing (the
  // registry still counts, e.g. in the embedded mode).
  std::string listen;
  std::string backend = "cpu";  // build_info label: cpu | cuda
};

class Metrics {
 public:
  // UNAVAILABLE when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<Metrics>> Start(const MetricsOptions& options);

  prometheus::Registry& registry() { return *registry_; }
  // The bound port of /metrics (0 when not served).
  int port() const { return port_; }

  // Counts one finished RPC. `full_method` is gRPC's "/package.Service/Method".
  void RecordHandled(std::string_view full_method, int grpc_code);

  prometheus::Gauge& rocksdb_size_bytes() { return *rocksdb_size_bytes_; }
  prometheus::Counter& tokens_read() { return *tokens_read_; }
  prometheus::Counter& tokens_generated() { return *tokens_generated_; }

  // Exponential buckets from `first` seconds, each `factor` times the previous, up to `last`.
  static prometheus::Histogram::BucketBoundaries SecondsBuckets(double first, double last,
                                                                double factor = 2.0);

 private:
  Metrics() = default;

  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
  prometheus::Family<prometheus::Counter>* handled_ = nullptr;
  prometheus::Gauge* rocksdb_size_bytes_ = nullptr;
  prometheus::Counter* tokens_read_ = nullptr;
  prometheus::Counter* tokens_generated_ = nullptr;
};

// The canonical upper-case name of a gRPC status code ("OK", "NOT_FOUND", ...).
std::string_view GrpcCodeName(int code);

// The build's version and git revision (from CMake), for build_info and --version.
std::string_view BuildVersion();
std::string_view BuildRevision();

}  // namespace longread::services
