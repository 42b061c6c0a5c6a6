#include "services/coordinator/worker_pool.h"

#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "services/common/log.h"

namespace longread::coordinator {

using services::Log;
using services::LogLevel;

absl::StatusOr<std::unique_ptr<WorkerPool>> WorkerPool::Create(WorkerPoolOptions options,
                                                               std::function<void()> on_change) {
  std::unique_ptr<WorkerPool> pool(new WorkerPool(std::move(options), std::move(on_change)));
  absl::string_view spec = pool->options_.workers;
  if (absl::ConsumePrefix(&spec, "dns:///")) {
    const size_t colon = spec.rfind(':');
    if (colon == absl::string_view::npos || colon == 0 || colon + 1 == spec.size()) {
      return absl::InvalidArgumentError("--workers dns:///NAME:PORT needs a port");
    }
    pool->dns_host_ = std::string(spec.substr(0, colon));
    pool->dns_port_ = std::string(spec.substr(colon + 1));
  } else {
    for (absl::string_view a : absl::StrSplit(spec, ',', absl::SkipWhitespace())) {
      if (a.find(':') == absl::string_view::npos) {
        return absl::InvalidArgumentError(absl::StrCat("--workers: \"", a, "\" is not HOST:PORT"));
      }
      pool->static_addresses_.emplace_back(a);
    }
  }
  return pool;
}

std::unique_ptr<WorkerPool> WorkerPool::CreateWithChannels(
    std::map<std::string, std::shared_ptr<grpc::Channel>> channels, WorkerPoolOptions options,
    std::function<void()> on_change) {
  std::unique_ptr<WorkerPool> pool(new WorkerPool(std::move(options), std::move(on_change)));
  for (const auto& [name, channel] : channels) pool->static_addresses_.push_back(name);
  pool->premade_channels_ = std::move(channels);
  return pool;
}

WorkerPool::~WorkerPool() { Stop(); }

std::vector<std::string> WorkerPool::Resolve() {
  if (dns_host_.empty()) return static_addresses_;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* result = nullptr;
  std::set<std::string> found;
  if (getaddrinfo(dns_host_.c_str(), dns_port_.c_str(), &hints, &result) != 0) {
    Log(LogLevel::kWarning, "workers_unresolved", {{"name", dns_host_}});
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::string> keep;
    for (const auto& [a, w] : workers_) keep.push_back(a);
    return keep;  // a failed lookup keeps the workers known so far
  }
  for (addrinfo* ai = result; ai != nullptr; ai = ai->ai_next) {
    char host[NI_MAXHOST];
    if (getnameinfo(ai->ai_addr, ai->ai_addrlen, host, sizeof(host), nullptr, 0, NI_NUMERICHOST) !=
        0) {
      continue;
    }
    found.insert(ai->ai_family == AF_INET6 ? absl::StrCat("[", host, "]:", dns_port_)
                                           : absl::StrCat(host, ":", dns_port_));
  }
  freeaddrinfo(result);
  return std::vector<std::string>(found.begin(), found.end());
}

void WorkerPool::SetAddresses(const std::vector<std::string>& addresses) {
  std::lock_guard<std::mutex> lock(mu_);
  std::set<std::string> wanted(addresses.begin(), addresses.end());
  for (auto& [address, w] : workers_) w->removed = !wanted.count(address);
  for (const std::string& address : addresses) {
    if (workers_.count(address)) continue;
    auto premade = premade_channels_.find(address);
    auto channel = premade != premade_channels_.end()
                       ? absl::StatusOr<std::shared_ptr<grpc::Channel>>(premade->second)
                       : services::MakeChannel(address, options_.tls, options_.max_message_bytes);
    if (!channel.ok()) {
      Log(LogLevel::kError, "worker_channel_failed",
          {{"worker", address}, {"error", std::string(channel.status().message())}});
      continue;
    }
    auto w = std::make_shared<Worker>();
    w->address = address;
    w->channel = *channel;
    w->stub = v1::WorkerService::NewStub(w->channel);
    workers_[address] = w;
    Log(LogLevel::kInfo, "worker_added", {{"worker", address}});
  }
  // Forget removed workers that run nothing of ours.
  for (auto it = workers_.begin(); it != workers_.end();) {
    if (it->second->removed && it->second->assigned == 0) {
      Log(LogLevel::kInfo, "worker_removed", {{"worker", it->first}});
      it = workers_.erase(it);
    } else {
      ++it;
    }
  }
}

void WorkerPool::Start() {
  SetAddresses(Resolve());
  poller_ = std::thread([this] { PollLoop(); });
}

void WorkerPool::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  stop_cv_.notify_all();
  if (poller_.joinable()) poller_.join();
}

void WorkerPool::PollLoop() {
  absl::Time next_resolve = absl::Now() + options_.resolve_period;
  // The first poll at once: a freshly started coordinator (or embedded run) waits for no period.
  for (bool first = true;; first = false) {
    if (!first) {
      std::unique_lock<std::mutex> lock(mu_);
      if (stop_cv_.wait_for(lock,
                            absl::ToChronoSeconds(options_.poll_period) +
                                absl::ToChronoMilliseconds(
                                    options_.poll_period -
                                    absl::Seconds(absl::ToInt64Seconds(options_.poll_period))),
                            [this] { return stop_; })) {
        return;
      }
    }
    if (!dns_host_.empty() && absl::Now() >= next_resolve) {
      SetAddresses(Resolve());
      next_resolve = absl::Now() + options_.resolve_period;
    }
    std::vector<std::shared_ptr<Worker>> workers;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& [a, w] : workers_) workers.push_back(w);
    }
    bool changed = false;
    for (const auto& w : workers) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
      v1::WorkerLoad load;
      const grpc::Status s = w->stub->GetLoad(&ctx, v1::GetLoadRequest(), &load);
      std::lock_guard<std::mutex> lock(mu_);
      const bool was_usable = w->healthy && !w->draining && FreeSlotsLocked(*w) > 0;
      if (s.ok()) {
        if (!w->healthy) Log(LogLevel::kInfo, "worker_healthy", {{"worker", w->address}});
        w->healthy = true;
        w->capacity = load.capacity();
        w->reported_in_flight = load.in_flight();
        w->draining = load.draining();
        w->model_fingerprint = load.model_fingerprint();
      } else {
        if (w->healthy) {
          Log(LogLevel::kWarning, "worker_unhealthy",
              {{"worker", w->address}, {"error", s.error_message()}});
        }
        w->healthy = false;
      }
      const bool usable = w->healthy && !w->draining && FreeSlotsLocked(*w) > 0;
      changed = changed || usable != was_usable || usable;
    }
    if (changed && on_change_) on_change_();
  }
}

int WorkerPool::FreeSlotsLocked(const Worker& w) const {
  if (!w.healthy || w.draining || w.removed || absl::Now() < w.full_until) return 0;
  // Other coordinators (or documents of ours it has not reported yet) may hold slots too.
  return std::max(0, w.capacity - std::max(w.assigned, w.reported_in_flight));
}

std::shared_ptr<Worker> WorkerPool::Acquire(const std::string& avoid, int64_t tokens) {
  std::lock_guard<std::mutex> lock(mu_);
  auto load = [](const Worker& w) {
    return static_cast<double>(w.assigned_tokens) / std::max(1, w.capacity);
  };
  // Fewer tokens per slot first, then more free slots.
  auto better = [&](const Worker& a, int a_free, const Worker& b, int b_free) {
    if (load(a) != load(b)) return load(a) < load(b);
    return a_free > b_free;
  };
  std::shared_ptr<Worker> best, fallback;
  int best_free = 0, fallback_free = 0;
  for (auto& [address, w] : workers_) {
    const int free = FreeSlotsLocked(*w);
    if (free <= 0) continue;
    if (address == avoid) {
      if (fallback == nullptr || better(*w, free, *fallback, fallback_free)) {
        fallback = w, fallback_free = free;
      }
    } else if (best == nullptr || better(*w, free, *best, best_free)) {
      best = w, best_free = free;
    }
  }
  if (best == nullptr) best = fallback;
  if (best != nullptr) {
    ++best->assigned;
    best->assigned_tokens += tokens;
    // The report is stale now; count the new document until the next poll says otherwise.
    ++best->reported_in_flight;
  }
  return best;
}

void WorkerPool::Release(const std::shared_ptr<Worker>& worker, int64_t tokens) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    --worker->assigned;
    worker->assigned_tokens -= tokens;
    worker->reported_in_flight = std::max(0, worker->reported_in_flight - 1);
  }
  if (on_change_) on_change_();
}

void WorkerPool::MarkLost(const std::shared_ptr<Worker>& worker) {
  std::lock_guard<std::mutex> lock(mu_);
  worker->healthy = false;
}

void WorkerPool::MarkFull(const std::shared_ptr<Worker>& worker) {
  std::lock_guard<std::mutex> lock(mu_);
  worker->full_until = absl::Now() + absl::Seconds(2);
}

WorkerPool::Counts WorkerPool::counts() {
  std::lock_guard<std::mutex> lock(mu_);
  Counts c;
  for (auto& [a, w] : workers_) {
    (w->healthy ? c.healthy : c.unhealthy)++;
    c.free_slots += FreeSlotsLocked(*w);
  }
  return c;
}

}  // namespace longread::coordinator
