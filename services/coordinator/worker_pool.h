// The workers the coordinator schedules onto: a static list of HOST:PORT, or dns:///NAME:PORT
// resolved by the coordinator itself every resolve period (a Kubernetes headless Service: one
// address per pod). One channel per address, so a document sticks to the worker it started on.
// A poller asks each worker for its load (GetLoad) every second: capacity, draining, health.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "longread/v1/worker_service.grpc.pb.h"
#include "services/common/grpc_server.h"

namespace longread::coordinator {

struct Worker {
  std::string address;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::WorkerService::Stub> stub;
  // Guarded by WorkerPool::mu_.
  bool healthy = false;
  bool draining = false;
  bool removed = false;  // no longer resolved: finishes its documents, gets no new ones
  int capacity = 0;
  int reported_in_flight = 0;
  int assigned = 0;                              // documents this coordinator runs there now
  int64_t assigned_tokens = 0;                   // their document tokens left to read then
  absl::Time full_until = absl::InfinitePast();  // it said RESOURCE_EXHAUSTED
  std::string model_fingerprint;
};

struct WorkerPoolOptions {
  std::string workers;  // "host:port,host:port" or "dns:///name:port"
  services::ClientTlsFiles tls;
  absl::Duration resolve_period = absl::Seconds(10);
  absl::Duration poll_period = absl::Seconds(1);
  int max_message_bytes = services::kDefaultMaxMessageBytes;
};

class WorkerPool {
 public:
  // INVALID_ARGUMENT for a malformed --workers.
  static absl::StatusOr<std::unique_ptr<WorkerPool>> Create(WorkerPoolOptions options,
                                                            std::function<void()> on_change);
  // Workers reached through channels the caller made, by name (embedded mode: a worker server in
  // this process, through grpc::Server::InProcessChannel). options.workers and tls are unused.
  static std::unique_ptr<WorkerPool> CreateWithChannels(
      std::map<std::string, std::shared_ptr<grpc::Channel>> channels, WorkerPoolOptions options,
      std::function<void()> on_change);
  ~WorkerPool();

  void Start();
  void Stop();

  // Of the healthy workers with a free slot (not `avoid` unless it is the only one), the one with
  // the fewest document tokens assigned per slot of capacity, then the most free slots; its slot
  // taken for a document of `tokens` tokens to read. Null when none is free. By tokens, not
  // documents: a document stays on its worker, so a batch split by count leaves the worker that
  // drew the short ones idle at the end.
  std::shared_ptr<Worker> Acquire(const std::string& avoid, int64_t tokens);
  void Release(const std::shared_ptr<Worker>& worker, int64_t tokens);
  // The stream to it broke: no new work until a GetLoad answers again.
  void MarkLost(const std::shared_ptr<Worker>& worker);
  void MarkFull(const std::shared_ptr<Worker>& worker);

  struct Counts {
    int healthy = 0;
    int unhealthy = 0;
    int free_slots = 0;
  };
  Counts counts();

 private:
  WorkerPool(WorkerPoolOptions options, std::function<void()> on_change)
      : options_(std::move(options)), on_change_(std::move(on_change)) {}
  void SetAddresses(const std::vector<std::string>& addresses);
  std::vector<std::string> Resolve();
  void PollLoop();
  int FreeSlotsLocked(const Worker& w) const;

  const WorkerPoolOptions options_;
  std::function<void()> on_change_;
  std::string dns_host_, dns_port_;  // set for dns:///
  std::vector<std::string> static_addresses_;
  std::map<std::string, std::shared_ptr<grpc::Channel>> premade_channels_;

  std::mutex mu_;
  std::map<std::string, std::shared_ptr<Worker>> workers_;
  std::condition_variable stop_cv_;
  bool stop_ = false;
  std::thread poller_;
};

}  // namespace longread::coordinator
