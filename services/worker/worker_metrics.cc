#include "services/worker/worker_metrics.h"

namespace longread::worker {
namespace {

prometheus::Gauge* NewGauge(prometheus::Registry& r, const std::string& name,
                            const std::string& help, const prometheus::Labels& labels = {}) {
  return &prometheus::BuildGauge().Name(name).Help(help).Register(r).Add(labels);
}

prometheus::Histogram* NewHistogram(prometheus::Registry& r, const std::string& name,
                                    const std::string& help, double first, double last) {
  return &prometheus::BuildHistogram().Name(name).Help(help).Register(r).Add(
      {}, services::Metrics::SecondsBuckets(first, last));
}

}  // namespace

WorkerMetrics::WorkerMetrics(services::Metrics* common_metrics, const std::string& device)
    : common(common_metrics) {
  prometheus::Registry& r = common->registry();
  documents_in_flight = NewGauge(r, "longread_worker_documents_in_flight",
                                 "Documents this worker is reading or answering.");
  capacity_documents =
      NewGauge(r, "longread_worker_capacity_documents", "Documents this worker reads at once.");
  segment_seconds =
      NewHistogram(r, "longread_segment_seconds", "Time to read one segment.", 0.01, 120);
  generation_seconds =
      NewHistogram(r, "longread_generation_seconds",
                   "Time to generate one answer (recall and the question included).", 0.05, 600);
  decode_token_seconds = NewHistogram(r, "longread_decode_token_seconds",
                                      "Time to generate one answer token.", 0.001, 8);
  checkpoint_seconds = NewHistogram(r, "longread_checkpoint_seconds",
                                    "Time to take, encode and send one checkpoint.", 0.001, 120);
  checkpoint_bytes = &prometheus::BuildCounter()
                          .Name("longread_checkpoint_bytes_total")
                          .Help("Checkpoint bytes sent (snapshot + archive blocks).")
                          .Register(r)
                          .Add({});
  archive_bytes = NewGauge(r, "longread_archive_bytes", "Bytes of the recall archives held.");
  device_memory_bytes =
      NewGauge(r, "longread_device_memory_bytes", "Model weights and memories held on the device.",
               {{"device", device == "cpu" ? "cpu" : device}});
  read_passes = &prometheus::BuildCounter()
                     .Name("longread_read_passes_total")
                     .Help(
                         "Forward passes that read documents' segments together "
                         "(--batch-documents > 1).")
                     .Register(r)
                     .Add({});
  read_pass_segments = &prometheus::BuildCounter()
                            .Name("longread_read_pass_segments_total")
                            .Help("Segments read by those passes (one per document per pass).")
                            .Register(r)
                            .Add({});
}

}  // namespace longread::worker
