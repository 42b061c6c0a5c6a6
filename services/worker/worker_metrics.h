// The worker's own Prometheus metrics (docs/SERVICE.md, "Metrics", worker part), registered on
// the process's services::Metrics registry (which also holds build_info, handled RPCs, RocksDB
// size and the token counters).
#pragma once

#include <string>

#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "services/common/metrics.h"

namespace longread::worker {

struct WorkerMetrics {
  WorkerMetrics(services::Metrics* common, const std::string& device);

  services::Metrics* common;
  prometheus::Gauge* documents_in_flight;
  prometheus::Gauge* capacity_documents;
  prometheus::Histogram* segment_seconds;
  prometheus::Histogram* generation_seconds;
  prometheus::Histogram* decode_token_seconds;
  prometheus::Histogram* checkpoint_seconds;
  prometheus::Counter* checkpoint_bytes;
  prometheus::Gauge* archive_bytes;
  prometheus::Gauge* device_memory_bytes;
  // Batched reading (--batch-documents): passes run and the segments they read.
  prometheus::Counter* read_passes;
  prometheus::Counter* read_pass_segments;
};

}  // namespace longread::worker
