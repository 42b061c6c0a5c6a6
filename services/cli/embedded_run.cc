#include "services/cli/embedded_run.h"

#include <algorithm>
#include <limits>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "longread/v1/job_service.grpc.pb.h"
#include "services/common/auth.h"
#include "services/common/metrics.h"
#include "services/coordinator/coordinator.h"
#include "services/coordinator/job_service.h"
#include "services/coordinator/job_store.h"
#include "services/coordinator/worker_pool.h"
#include "services/worker/worker_metrics.h"
#include "services/worker/worker_service.h"

namespace longread::services {
namespace {

constexpr size_t kChunkBytes = 1 << 20;  // SubmitJob chunks (the gRPC limit is far above)
constexpr char kWorkerName[] = "in-process";

absl::Status FromGrpc(const grpc::Status& s) {
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

std::unique_ptr<grpc::Server> StartInProcessServer(grpc::Service* service) {
  grpc::ServerBuilder builder;
  builder.SetMaxReceiveMessageSize(-1);
  builder.SetMaxSendMessageSize(-1);
  builder.RegisterService(service);
  return builder.BuildAndStart();
}

std::shared_ptr<grpc::Channel> InProcessChannel(grpc::Server* server) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  return server->InProcessChannel(args);
}

}  // namespace

void ToServiceJob(const engine::DocumentJobOptions& options, v1::Task* task, v1::JobOptions* o) {
  switch (options.task) {
    case engine::Task::kSummarize:
      task->set_kind(v1::TASK_KIND_SUMMARIZE);
      break;
    case engine::Task::kAnalyzeCode:
      task->set_kind(v1::TASK_KIND_ANALYZE_CODE);
      break;
    case engine::Task::kQuestion:
      task->set_kind(v1::TASK_KIND_QUESTION);
      task->set_question(options.question);
      break;
    case engine::Task::kCustom:
      task->set_kind(v1::TASK_KIND_CUSTOM);
      task->set_instruction(options.question);
      break;
  }
  const engine::MemoryConfig& m = options.runner.memory;
  if (m.is_dense()) {
    o->set_dense(true);  // the worker replaces the memory options by MemoryConfig::Dense()
  } else {
    o->set_memory_k(m.top_k);
    o->set_window(m.window);
    o->set_sinks(m.sinks);
    o->set_block_tokens(m.block_tokens);
    o->set_positions(m.position_mode == engine::PositionMode::kOriginal ? "original" : "slot");
    o->set_block_score(m.block_score == engine::BlockScore::kMean ? "mean" : "max");
    o->set_task_weight(m.task_weight);
    o->set_task_score(m.task_score == engine::TaskScore::kMaxDot ? "max-dot" : "segment-mass");
    o->set_mask(m.mask_mode == engine::MaskMode::kSoft ? "soft" : "hard");
  }
  o->set_segment_tokens(options.runner.segment_tokens);
  o->set_recall_blocks(options.recall.blocks);
  o->set_recall_candidates(options.recall.candidates);
  o->set_recall_scope(options.recall.shared ? "shared" : "head");
  o->set_instruction_first(options.instruction_first);
  const engine::GenerateOptions& g = options.generate;
  o->set_max_new_tokens(g.max_new_tokens);
  o->set_temperature(g.sampling.temperature);
  o->set_top_p(g.sampling.top_p);
  o->set_seed(g.sampling.seed);
  o->set_no_repeat_ngram(g.sampling.no_repeat_ngram);
  o->set_repeat_penalty(g.sampling.repeat_penalty);
  o->set_repeat_last_n(g.sampling.repeat_last_n);
}

absl::StatusOr<EmbeddedRunResult> RunEmbedded(const EmbeddedRunOptions& options,
                                              const v1::Task& task,
                                              const v1::JobOptions& job_options,
                                              std::string document,
                                              const EmbeddedRunCallbacks& callbacks) {
  // Two registries: both components export some of the same names (checkpoint bytes, tokens),
  // each as its own process would. Nothing serves them (no listen address).
  auto worker_registry = Metrics::Start(MetricsOptions{});
  auto coordinator_registry = Metrics::Start(MetricsOptions{});
  if (!worker_registry.ok()) return worker_registry.status();
  if (!coordinator_registry.ok()) return coordinator_registry.status();

  // The worker, as longread-worker hosts it, on the caller's model and the run's archive.
  worker::WorkerMetrics worker_metrics(
      worker_registry->get(),
      options.backend != nullptr ? std::string(options.backend->device()) : "cpu");
  worker::WorkerOptions worker_options;
  worker_options.capacity = 1;
  worker_options.archive_max_bytes = options.archive_max_bytes;
  worker_options.archive_db = options.archive_db;
  const std::string archive_id = options.archive_id;
  worker_options.archive_id = [archive_id] { return archive_id; };
  auto worker = worker::WorkerServiceImpl::Create(
      worker::WorkerModel{options.model, options.tokenizer, options.pool, options.scorer,
                          options.backend},
      std::move(worker_options), &worker_metrics);
  if (!worker.ok()) return worker.status();
  std::unique_ptr<grpc::Server> worker_server = StartInProcessServer(worker->get());
  if (worker_server == nullptr) return absl::InternalError("the in-process worker did not start");

  // The coordinator, as longread-coordinator hosts it, with its log in memory.
  auto store = coordinator::JobStore::OpenInMemory();
  if (!store.ok()) return store.status();
  coordinator::CoordinatorOptions coordinator_options;
  coordinator_options.max_document_bytes = options.max_document_bytes;
  coordinator_options.max_job_bytes = options.max_document_bytes;
  coordinator_options.checkpoint_seconds = -1;  // one process: nothing to fail over to
  coordinator_options.max_attempts = 1;
  coordinator_options.model_fingerprint = options.model->fingerprint();
  coordinator::CoordinatorMetrics coordinator_metrics(coordinator_registry->get());
  coordinator::Coordinator* coordinator_ptr = nullptr;
  coordinator::WorkerPoolOptions pool_options;
  pool_options.poll_period = absl::Milliseconds(200);
  auto pool = coordinator::WorkerPool::CreateWithChannels(
      {{kWorkerName, InProcessChannel(worker_server.get())}}, pool_options, [&coordinator_ptr] {
        if (coordinator_ptr != nullptr) coordinator_ptr->Poke();
      });
  coordinator::Coordinator coordinator(coordinator_options, store->get(), pool.get(),
                                       &coordinator_metrics);
  coordinator_ptr = &coordinator;
  const auto auth = TokenAuthenticator::Disabled();
  coordinator::JobServiceOptions service_options;
  service_options.accept_binary = true;  // `longread run` replaces invalid UTF-8, refuses nothing
  coordinator::JobServiceImpl service(&coordinator, options.tokenizer, auth.get(), service_options);
  std::unique_ptr<grpc::Server> coordinator_server = StartInProcessServer(&service);
  if (coordinator_server == nullptr) {
    worker_server->Shutdown();
    return absl::InternalError("the in-process coordinator did not start");
  }
  pool->Start();
  coordinator.Start();
  auto stub = v1::JobService::NewStub(InProcessChannel(coordinator_server.get()));

  absl::StatusOr<EmbeddedRunResult> outcome = [&]() -> absl::StatusOr<EmbeddedRunResult> {
    EmbeddedRunResult result;
    {
      grpc::ClientContext context;
      v1::SubmitJobResponse response;
      auto writer = stub->SubmitJob(&context, &response);
      v1::SubmitJobRequest request;
      v1::JobHeader* header = request.mutable_header();
      *header->mutable_task() = task;
      *header->mutable_options() = job_options;
      header->set_name(options.document_name);
      bool sent = writer->Write(request);
      request.mutable_document()->set_name(options.document_name);
      sent = sent && writer->Write(request);
      for (size_t at = 0; sent && at < document.size(); at += kChunkBytes) {
        request.set_chunk(std::string(document.substr(at, kChunkBytes)));
        sent = writer->Write(request);
      }
      writer->WritesDone();
      if (grpc::Status s = writer->Finish(); !s.ok()) return FromGrpc(s);
      std::string().swap(document);  // the coordinator holds its tokens now
      result.job_id = response.job_id();
    }
    grpc::ClientContext context;
    v1::WatchJobRequest watch;
    watch.set_job_id(result.job_id);
    auto reader = stub->WatchJob(&context, watch);
    v1::JobEvent event;
    absl::Status failed;
    bool done = false;
    while (!done && reader->Read(&event)) {
      switch (event.kind_case()) {
        case v1::JobEvent::kProgress:
          if (callbacks.progress) {
            callbacks.progress(event.progress().tokens_read(), event.progress().total_tokens());
          }
          break;
        case v1::JobEvent::kAnswer:
          if (callbacks.answer_text) callbacks.answer_text(event.answer().text());
          break;
        case v1::JobEvent::kError:
          failed = absl::Status(static_cast<absl::StatusCode>(event.error().code()),
                                event.error().message());
          break;
        case v1::JobEvent::kDocumentDone:
          result.answer = event.document_done().answer();
          result.stats = event.document_done().stats();
          if (event.document_done().state() != v1::DOCUMENT_STATE_SUCCEEDED && failed.ok()) {
            failed = absl::InternalError(
                absl::StrCat("the document did not finish: ", event.document_done().error()));
          }
          break;
        case v1::JobEvent::kJobDone:
          done = true;
          break;
        default:
          break;
      }
    }
    if (!done) {
      context.TryCancel();
      reader->Finish().IgnoreError();
      return absl::InternalError("the job's event stream ended before the job");
    }
    context.TryCancel();
    reader->Finish().IgnoreError();
    if (!failed.ok()) return failed;
    return result;
  }();

  // The worker has ended the document (its archive written, then deleted) before the caller
  // closes the run's archive.
  coordinator.Stop();
  pool->Stop();
  coordinator_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(10));
  worker_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(10));
  (*worker)->WaitIdle(absl::Now() + absl::Seconds(10));
  return outcome;
}

}  // namespace longread::services
