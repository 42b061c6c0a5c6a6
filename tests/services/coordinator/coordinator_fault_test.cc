// Failures of whole processes under a running job: a worker killed (SIGKILL) mid-document, the
// coordinator killed and restarted, a worker drained (SIGTERM). Each job must end with the
// answer of an undisturbed run, and a watcher must see every event exactly once. The failover
// numbers (tokens re-read, checkpoint bytes and seconds, time lost) are printed for the notes.
#include <cstdio>
#include <regex>
#include <set>

#include "tests/services/coordinator/coordinator_harness.h"

namespace longread::coordinator::testing {
namespace {

constexpr char kQuestion[] = "Who was the keeper on duty?";

double Seconds(const google::protobuf::Timestamp& t) { return t.seconds() + t.nanos() * 1e-9; }

// Sums the coordinator's checkpoint_stored log lines: count, bytes, persist seconds.
struct CheckpointLog {
  int count = 0;
  int64_t bytes = 0;
  double seconds = 0;
};
CheckpointLog ParseCheckpoints(const std::string& log) {
  CheckpointLog c;
  std::regex line(R"re("event":"checkpoint_stored".*?"bytes":"(\d+)".*?"seconds":"([\d.]+)")re");
  for (auto it = std::sregex_iterator(log.begin(), log.end(), line); it != std::sregex_iterator();
       ++it) {
    ++c.count;
    c.bytes += std::stoll((*it)[1]);
    c.seconds += std::stod((*it)[2]);
  }
  return c;
}

struct Cluster {
  explicit Cluster(const std::string& dir, std::vector<std::string> coordinator_flags)
      : a(dir + "/a", {"--capacity", "1", "--drain-seconds", "30"}),
        b(dir + "/b", {"--capacity", "1", "--drain-seconds", "30"}),
        coordinator_dir(dir + "/c"),
        flags(std::move(coordinator_flags)) {
    if (a.serving() && b.serving()) StartCoordinator();
  }
  void StartCoordinator() {
    coordinator = testing::StartCoordinator(coordinator_dir,
                                            absl::StrCat(a.target(), ",", b.target()), flags);
    stub = JobStub(coordinator->target());
  }
  WorkerProcess& ByAddress(const std::string& address) { return address == a.target() ? a : b; }

  WorkerProcess a, b;
  std::string coordinator_dir;
  std::vector<std::string> flags;
  std::unique_ptr<Process> coordinator;
  std::unique_ptr<v1::JobService::Stub> stub;
};

TEST(CoordinatorFaultTest, AWorkerKilledMidDocumentResumesOnTheOtherFromItsLastCheckpoint) {
  REQUIRE_REFERENCE(ref);
  TempDir dir;
  Cluster cluster(dir.path(), {"--checkpoint-seconds", "0"});
  ASSERT_TRUE(cluster.coordinator && cluster.coordinator->serving())
      << cluster.a.log() << cluster.b.log();
  const v1::JobHeader header = TinyHeader(kQuestion);
  const std::string document = worker::testing::LongDocument();
  v1::SubmitJobResponse response;
  ASSERT_TRUE(Submit(cluster.stub.get(), header, {{"long", document}}, &response).ok());

  // Kill the worker once it has read a few segments.
  std::string first_worker;
  auto before = Watch(cluster.stub.get(), response.job_id(), 0, [&](const v1::JobEvent& e) {
    if (e.has_assigned()) first_worker = e.assigned().worker();
    return e.has_progress() && e.progress().tokens_read() >= 640;
  });
  ASSERT_FALSE(first_worker.empty());
  ASSERT_TRUE(before.back().has_progress()) << cluster.coordinator->log();
  const double killed_at = absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch());
  cluster.ByAddress(first_worker).Signal(SIGKILL);
  const int64_t read_before_kill = before.back().progress().tokens_read();

  auto after = WatchToEnd(cluster.stub.get(), response.job_id(), before.back().offset() + 1);
  std::vector<v1::JobEvent> events = before;
  events.insert(events.end(), after.begin(), after.end());
  ExpectDense(events);
  ASSERT_TRUE(events.back().has_job_done()) << cluster.coordinator->log();
  ASSERT_EQ(events.back().job_done().state(), v1::JOB_STATE_SUCCEEDED)
      << cluster.coordinator->log();

  const v1::DocumentAssigned* resumed = nullptr;
  double resumed_caught_up_at = 0;
  int64_t max_read = 0;
  for (const v1::JobEvent& e : after) {
    if (e.has_assigned()) resumed = &e.assigned();
    if (e.has_progress()) max_read = std::max(max_read, e.progress().tokens_read());
    if (resumed != nullptr && e.has_progress() && resumed_caught_up_at == 0 &&
        e.progress().tokens_read() >= read_before_kill) {
      resumed_caught_up_at = Seconds(e.time());
    }
  }
  ASSERT_NE(resumed, nullptr);
  EXPECT_NE(resumed->worker(), first_worker);
  EXPECT_EQ(resumed->attempt(), 2);
  EXPECT_GT(resumed->resume_from_tokens(), 0) << "resumed from a checkpoint, not the start";

  const v1::Job job = GetJob(cluster.stub.get(), response.job_id());
  const v1::DocumentStatus& d = job.documents(0);
  const std::string undisturbed =
      worker::testing::ReferenceAnswer(*ref, document, ReferenceAssignment(*ref, header));
  EXPECT_EQ(d.answer(), undisturbed);
  EXPECT_EQ(d.stats().attempts(), 2);
  // Checkpoints every segment: at most one segment is read again.
  EXPECT_LE(d.stats().tokens_reread(), header.options().segment_tokens());

  const CheckpointLog checkpoints = ParseCheckpoints(cluster.coordinator->log());
  std::printf(
      "FAILOVER worker_sigkill: tokens_read_before_kill=%lld resume_from=%lld tokens_reread=%lld "
      "checkpoints=%d checkpoint_bytes_avg=%lld persist_seconds_avg=%.4f "
      "seconds_lost=%.2f document_tokens=%lld\n",
      static_cast<long long>(read_before_kill),
      static_cast<long long>(resumed->resume_from_tokens()),
      static_cast<long long>(d.stats().tokens_reread()), checkpoints.count,
      static_cast<long long>(checkpoints.count ? checkpoints.bytes / checkpoints.count : 0),
      checkpoints.count ? checkpoints.seconds / checkpoints.count : 0.0,
      resumed_caught_up_at > 0 ? resumed_caught_up_at - killed_at : -1.0,
      static_cast<long long>(d.total_tokens()));
  // The resumed worker's own account of its checkpoints (taking + sending them).
  const std::string log = cluster.coordinator->log();
  const std::string metrics =
      ScrapeMetrics(static_cast<int>(LoggedInt(log, "serving", "metrics_port")));
  EXPECT_NE(metrics.find("longread_failovers_total{reason=\"worker_lost\"} 1"), std::string::npos)
      << metrics;
  std::printf(
      "FAILOVER worker_checkpoints: checkpoints=%lld checkpoint_bytes=%lld "
      "checkpoint_seconds=%.3f read_seconds=%.3f archive_bytes=%lld\n",
      LoggedInt(log, "document_finished", "checkpoints"),
      LoggedInt(log, "document_finished", "checkpoint_bytes"),
      LoggedNumber(log, "document_finished", "checkpoint_seconds"),
      LoggedNumber(log, "document_finished", "read_seconds"),
      LoggedInt(log, "document_finished", "archive_bytes"));
}

TEST(CoordinatorFaultTest, ACoordinatorKilledAndRestartedFinishesTheJobAndWatchersReattach) {
  REQUIRE_REFERENCE(ref);
  TempDir dir;
  Cluster cluster(dir.path(), {"--checkpoint-seconds", "0"});
  ASSERT_TRUE(cluster.coordinator && cluster.coordinator->serving());
  const v1::JobHeader header = TinyHeader(kQuestion);
  const std::vector<InlineDocument> documents = {{"long", worker::testing::LongDocument()},
                                                 {"short-0", NumberedDocument(0)},
                                                 {"short-1", NumberedDocument(1)}};
  v1::SubmitJobResponse response;
  ASSERT_TRUE(Submit(cluster.stub.get(), header, documents, &response).ok());

  auto before = Watch(cluster.stub.get(), response.job_id(), 0, [](const v1::JobEvent& e) {
    return e.has_progress() && e.progress().document_index() == 0 &&
           e.progress().tokens_read() >= 384;
  });
  ASSERT_FALSE(before.empty());
  cluster.coordinator->Kill();  // SIGKILL
  cluster.StartCoordinator();
  ASSERT_TRUE(cluster.coordinator->serving()) << cluster.coordinator->log();

  // The client re-attaches from the offset after the last event it saw.
  auto after = WatchToEnd(cluster.stub.get(), response.job_id(), before.back().offset() + 1);
  std::vector<v1::JobEvent> events = before;
  events.insert(events.end(), after.begin(), after.end());
  ExpectDense(events);
  ASSERT_TRUE(events.back().has_job_done()) << cluster.coordinator->log();
  EXPECT_EQ(events.back().job_done().state(), v1::JOB_STATE_SUCCEEDED);

  // What the first coordinator sent is what the second one replays.
  auto replay = WatchToEnd(cluster.stub.get(), response.job_id(), 0);
  ASSERT_EQ(replay.size(), events.size());
  for (size_t i = 0; i < before.size(); ++i) {
    EXPECT_EQ(replay[i].SerializeAsString(), before[i].SerializeAsString()) << i;
  }

  std::map<int, std::string> streamed;
  for (const v1::JobEvent& e : events) {
    if (e.has_answer()) streamed[e.answer().document_index()] += e.answer().text();
  }
  const v1::Job job = GetJob(cluster.stub.get(), response.job_id());
  const v1::DocumentAssignment assignment = ReferenceAssignment(*ref, header);
  for (size_t i = 0; i < documents.size(); ++i) {
    EXPECT_EQ(job.documents(i).answer(),
              worker::testing::ReferenceAnswer(*ref, documents[i].text, assignment))
        << i;
    EXPECT_EQ(streamed[static_cast<int>(i)], job.documents(i).answer()) << "no text repeated";
  }
  std::printf(
      "FAILOVER coordinator_sigkill: events_before=%zu events_after=%zu "
      "long_document_attempts=%d tokens_reread=%lld\n",
      before.size(), after.size(), job.documents(0).stats().attempts(),
      static_cast<long long>(job.documents(0).stats().tokens_reread()));
}

TEST(CoordinatorFaultTest, AWorkerDrainedBySigtermHandsItsDocumentToTheOther) {
  REQUIRE_REFERENCE(ref);
  TempDir dir;
  // No periodic checkpoints: the one the drain takes is where the document resumes.
  Cluster cluster(dir.path(), {"--checkpoint-seconds", "3600"});
  ASSERT_TRUE(cluster.coordinator && cluster.coordinator->serving());
  const v1::JobHeader header = TinyHeader(kQuestion);
  const std::string document = worker::testing::LongDocument();
  v1::SubmitJobResponse response;
  ASSERT_TRUE(Submit(cluster.stub.get(), header, {{"long", document}}, &response).ok());

  std::string first_worker;
  auto before = Watch(cluster.stub.get(), response.job_id(), 0, [&](const v1::JobEvent& e) {
    if (e.has_assigned()) first_worker = e.assigned().worker();
    return e.has_progress() && e.progress().tokens_read() >= 384;
  });
  ASSERT_FALSE(first_worker.empty());
  WorkerProcess& drained = cluster.ByAddress(first_worker);
  drained.Signal(SIGTERM);
  auto after = WatchToEnd(cluster.stub.get(), response.job_id(), before.back().offset() + 1);
  EXPECT_EQ(drained.WaitExit(), 0) << drained.log();
  ASSERT_FALSE(after.empty());
  ASSERT_TRUE(after.back().has_job_done()) << cluster.coordinator->log();
  EXPECT_EQ(after.back().job_done().state(), v1::JOB_STATE_SUCCEEDED);
  const v1::DocumentAssigned* resumed = nullptr;
  for (const v1::JobEvent& e : after) {
    if (e.has_assigned()) resumed = &e.assigned();
  }
  ASSERT_NE(resumed, nullptr);
  EXPECT_NE(resumed->worker(), first_worker);
  EXPECT_GT(resumed->resume_from_tokens(), 0) << "resumed from the drain's checkpoint";
  const v1::Job job = GetJob(cluster.stub.get(), response.job_id());
  EXPECT_EQ(job.documents(0).answer(),
            worker::testing::ReferenceAnswer(*ref, document, ReferenceAssignment(*ref, header)));
  EXPECT_NE(cluster.coordinator->log().find(R"("reason":"drained")"), std::string::npos);
  std::printf("FAILOVER worker_sigterm: resume_from=%lld tokens_reread=%lld\n",
              static_cast<long long>(resumed->resume_from_tokens()),
              static_cast<long long>(job.documents(0).stats().tokens_reread()));
}

// CancelJob while a document is being read reaches its worker: the job ends CANCELLED and the
// worker's only slot is free again for the next job, which then finishes.
TEST(CoordinatorFaultTest, CancelReachesTheWorkerAndFreesItsSlot) {
  REQUIRE_REFERENCE(ref);
  TempDir dir;
  Cluster cluster(dir.path(), {"--checkpoint-seconds", "3600"});
  ASSERT_TRUE(cluster.coordinator && cluster.coordinator->serving());
  const v1::JobHeader header = TinyHeader(kQuestion);
  v1::SubmitJobResponse first, second;
  ASSERT_TRUE(
      Submit(cluster.stub.get(), header,
             {{"a", worker::testing::LongDocument()}, {"b", worker::testing::LongDocument()}},
             &first)
          .ok());
  auto before = Watch(cluster.stub.get(), first.job_id(), 0,
                      [](const v1::JobEvent& e) { return e.has_progress(); });
  {
    grpc::ClientContext context;
    v1::CancelJobRequest request;
    request.set_job_id(first.job_id());
    v1::Job job;
    ASSERT_TRUE(cluster.stub->CancelJob(&context, request, &job).ok());
  }
  auto after = WatchToEnd(cluster.stub.get(), first.job_id(), before.back().offset() + 1);
  ASSERT_FALSE(after.empty());
  ASSERT_TRUE(after.back().has_job_done());
  EXPECT_EQ(after.back().job_done().state(), v1::JOB_STATE_CANCELLED);
  const v1::Job cancelled = GetJob(cluster.stub.get(), first.job_id());
  for (const v1::DocumentStatus& d : cancelled.documents()) {
    EXPECT_EQ(d.state(), v1::DOCUMENT_STATE_CANCELLED) << d.index();
  }
  // Both workers (capacity 1 each) take the next job's documents.
  const std::string document = NumberedDocument(7);
  ASSERT_TRUE(Submit(cluster.stub.get(), header, {{"c", document}, {"d", document}}, &second).ok());
  auto events = WatchToEnd(cluster.stub.get(), second.job_id());
  ASSERT_TRUE(events.back().has_job_done()) << cluster.coordinator->log();
  EXPECT_EQ(events.back().job_done().state(), v1::JOB_STATE_SUCCEEDED);
}

// The sample `name` (no labels) in a /metrics page; -1 when absent.
double MetricValue(const std::string& page, const std::string& name) {
  const size_t at = page.find("\n" + name + " ");
  return at == std::string::npos ? -1 : std::atof(page.c_str() + at + name.size() + 2);
}

// A job whose deadline passes mid-document ends FAILED with DEADLINE_EXCEEDED (event, GetJob),
// its worker stops reading within a segment and takes the next job, which succeeds.
TEST(CoordinatorFaultTest, AJobPastItsDeadlineFailsDeadlineExceededAndItsWorkerStops) {
  REQUIRE_REFERENCE(ref);
  TempDir dir;
  Cluster cluster(dir.path(), {"--checkpoint-seconds", "3600"});
  ASSERT_TRUE(cluster.coordinator && cluster.coordinator->serving());
  v1::JobHeader header = TinyHeader(kQuestion);
  header.mutable_timeout()->set_seconds(2);
  // ~3,300 tokens: far longer than 2 s of reading on one thread.
  const std::string document =
      worker::testing::LongDocument() + "\n\n" + worker::testing::LongDocument();
  v1::SubmitJobResponse first;
  ASSERT_TRUE(Submit(cluster.stub.get(), header, {{"long", document}}, &first).ok());
  ASSERT_TRUE(first.job().has_deadline());
  const auto events = WatchToEnd(cluster.stub.get(), first.job_id());
  ExpectDense(events);
  ASSERT_FALSE(events.empty());
  ASSERT_TRUE(events.back().has_job_done()) << cluster.coordinator->log();
  EXPECT_EQ(events.back().job_done().state(), v1::JOB_STATE_FAILED);
  std::string worker_address;
  bool job_error = false;
  for (const v1::JobEvent& e : events) {
    if (e.has_assigned()) worker_address = e.assigned().worker();
    if (e.has_error() && e.error().document_index() == -1) {
      EXPECT_EQ(e.error().code(), grpc::StatusCode::DEADLINE_EXCEEDED);
      job_error = true;
    }
  }
  EXPECT_TRUE(job_error) << "no job-level DEADLINE_EXCEEDED event";
  ASSERT_FALSE(worker_address.empty()) << "the document never reached a worker";

  const v1::Job job = GetJob(cluster.stub.get(), first.job_id());
  EXPECT_EQ(job.state(), v1::JOB_STATE_FAILED);
  EXPECT_TRUE(job.deadline_exceeded());
  const double timeout = Seconds(job.deadline()) - Seconds(job.created());
  EXPECT_NEAR(timeout, 2.0, 0.5);
  ASSERT_EQ(job.documents_size(), 1);
  EXPECT_EQ(job.documents(0).state(), v1::DOCUMENT_STATE_FAILED);
  EXPECT_LT(job.documents(0).tokens_read(), job.documents(0).total_tokens());

  // The worker stopped: it says so, frees its slot, and reads no more.
  WorkerProcess& worker = cluster.ByAddress(worker_address);
  std::string page;
  for (int i = 0; i < 100; ++i) {
    page = worker.ScrapeMetrics();
    if (MetricValue(page, "longread_worker_documents_in_flight") == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(MetricValue(page, "longread_worker_documents_in_flight"), 0) << page;
  const std::string log = worker.log();
  ASSERT_NE(log.find("\"event\":\"document_stopped\""), std::string::npos) << log;
  EXPECT_NE(log.find("\"code\":\"CANCELLED\""), std::string::npos) << log;
  const long long stopped_at = LoggedInt(log, "document_stopped", "tokens_read");
  EXPECT_LT(stopped_at, job.documents(0).total_tokens());
  const double read_total = MetricValue(page, "longread_tokens_read_total");
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  EXPECT_EQ(MetricValue(worker.ScrapeMetrics(), "longread_tokens_read_total"), read_total);
  std::printf("DEADLINE timeout=%.3f tokens_read=%lld of %lld worker_stopped_at=%lld\n", timeout,
              static_cast<long long>(job.documents(0).tokens_read()),
              static_cast<long long>(job.documents(0).total_tokens()), stopped_at);

  // A job without a deadline runs on both workers (capacity 1 each): both slots are free.
  v1::SubmitJobResponse second;
  const std::string short_document = NumberedDocument(3);
  ASSERT_TRUE(Submit(cluster.stub.get(), TinyHeader(kQuestion),
                     {{"c", short_document}, {"d", short_document}}, &second)
                  .ok());
  const auto after = WatchToEnd(cluster.stub.get(), second.job_id());
  ASSERT_TRUE(after.back().has_job_done()) << cluster.coordinator->log();
  EXPECT_EQ(after.back().job_done().state(), v1::JOB_STATE_SUCCEEDED);
}

// The deadline is persisted with the job: a coordinator killed before it and restarted after it
// ends the job DEADLINE_EXCEEDED on recovery. (Its worker does not exist: the job stays queued.)
TEST(CoordinatorFaultTest, ADeadlineSurvivesACoordinatorRestart) {
  REQUIRE_REFERENCE(ref);
  TempDir dir;
  const std::string d = dir.path() + "/c";
  auto coordinator = StartCoordinator(d, "127.0.0.1:1");
  ASSERT_TRUE(coordinator->serving()) << coordinator->log();
  v1::JobHeader header = TinyHeader(kQuestion);
  header.mutable_timeout()->set_seconds(3);
  v1::SubmitJobResponse response;
  {
    auto stub = JobStub(coordinator->target());
    ASSERT_TRUE(Submit(stub.get(), header, {{"doc", NumberedDocument(1)}}, &response).ok());
  }
  coordinator->Kill();  // SIGKILL, well before the deadline
  const v1::Job submitted = response.job();
  ASSERT_TRUE(submitted.has_deadline());
  EXPECT_FALSE(submitted.deadline_exceeded());
  const double wait =
      Seconds(submitted.deadline()) - absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch()) + 0.2;
  ASSERT_GT(wait, 0) << "the coordinator outlived the deadline: nothing to recover";
  std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<int>(wait * 1000)));

  coordinator = StartCoordinator(d, "127.0.0.1:1");
  ASSERT_TRUE(coordinator->serving()) << coordinator->log();
  auto stub = JobStub(coordinator->target());
  const auto events = WatchToEnd(stub.get(), response.job_id());
  ExpectDense(events);
  ASSERT_TRUE(events.back().has_job_done()) << coordinator->log();
  EXPECT_EQ(events.back().job_done().state(), v1::JOB_STATE_FAILED);
  bool job_error = false;
  for (const v1::JobEvent& e : events) {
    job_error = job_error || (e.has_error() && e.error().document_index() == -1 &&
                              e.error().code() == grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  EXPECT_TRUE(job_error);
  const v1::Job job = GetJob(stub.get(), response.job_id());
  EXPECT_TRUE(job.deadline_exceeded());
  EXPECT_EQ(job.deadline().seconds(), submitted.deadline().seconds());
  EXPECT_EQ(job.documents(0).state(), v1::DOCUMENT_STATE_FAILED);
}

// Watchers that never read do not grow the coordinator: each holds one event at a time while
// the job streams on, and a watcher that reads normally still gets every event.
TEST(CoordinatorFaultTest, WatchersThatNeverReadKeepMemoryBounded) {
  REQUIRE_REFERENCE(ref);
  TempDir dir;
  Cluster cluster(dir.path(), {"--checkpoint-seconds", "3600"});
  ASSERT_TRUE(cluster.coordinator && cluster.coordinator->serving());
  const v1::JobHeader header = TinyHeader(kQuestion);
  v1::SubmitJobResponse response;
  ASSERT_TRUE(Submit(cluster.stub.get(), header,
                     {{"a", NumberedDocument(1)}, {"b", NumberedDocument(2)}}, &response)
                  .ok());
  // 200 streams opened and never read.
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReader<v1::JobEvent>>> readers;
  v1::WatchJobRequest request;
  request.set_job_id(response.job_id());
  for (int i = 0; i < 200; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    readers.push_back(cluster.stub->WatchJob(contexts.back().get(), request));
  }
  auto events = WatchToEnd(cluster.stub.get(), response.job_id());
  ExpectDense(events);
  ASSERT_TRUE(events.back().has_job_done());
  const std::string status =
      services::testing::ReadFile(absl::StrCat("/proc/", cluster.coordinator->pid(), "/status"));
  const long long peak_kib = std::atoll(status.c_str() + status.find("VmHWM:") + 6);
  std::printf("MEMORY idle_watchers=200 coordinator_vmhwm_kib=%lld events=%zu\n", peak_kib,
              events.size());
  EXPECT_LT(peak_kib, 400 * 1024);
  for (auto& c : contexts) c->TryCancel();
  for (auto& r : readers) r->Finish();
}

}  // namespace
}  // namespace longread::coordinator::testing
