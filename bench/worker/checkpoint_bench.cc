// What a checkpoint costs the worker: bytes on the wire and seconds, per checkpoint, for one
// document read through the real WorkerService (hosted in this process on a loopback port, the
// client acting as the coordinator), at the default memory settings or the tests' tiny ones.
//
//   build/bench/worker/worker_checkpoint_bench [--tokens 6144] [--tiny] [--threads 2]
//       [--model PATH] [--out bench/results/worker-checkpoint-<date>.json]
//       [--checkpoint-seconds S (default 0: every segment)]
//       [--drain-after-segments N: start the SIGTERM drain after N segments and time it]
//       [--drain-delay-ms D: ... D ms later, so that it meets a segment being read]
#include <chrono>
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
#include "absl/strings/str_format.h"
#include "engine/model/llama_model.h"
#include "engine/model_files/model_file.h"
#include "engine/tokenizer/tokenizer.h"
#include "grpcpp/grpcpp.h"
#include "kernels/thread_pool.h"
#include "longread/v1/worker_service.grpc.pb.h"
#include "services/common/grpc_server.h"
#include "services/common/log.h"
#include "services/common/metrics.h"
#include "services/worker/worker_metrics.h"
#include "services/worker/worker_service.h"

namespace longread {
namespace {

std::string Prose(int64_t paragraphs) {
  static const char* const kParagraphs[] = {
      "The town of Kessel lies where two rivers meet. Its market opens at dawn on Tuesdays and "
      "sells salted fish, wool, copper pots and bread baked in stone ovens.",
      "The winter of that year was long. Snow closed the mountain pass in November and the mail "
      "coach stopped running until March.",
      "To configure the network interface, edit the file and add a stanza for each device; the "
      "dhcp method asks a server on the local network for an address.",
      "The committee met on the fourth floor and discussed the budget for the new bridge, steel "
      "girders against a stone arch, until midnight.",
      "Fishing boats leave the harbor before sunrise and return in the afternoon with cod, herring "
      "and sometimes a tuna, gulls crying over the nets."};
  std::string text;
  for (int64_t i = 0; i < paragraphs; ++i) {
    absl::StrAppend(&text, "Entry ", i, ". ", kParagraphs[i % 5], " (", i * 7919 % 10007, ")\n\n");
  }
  return text;
}

double LoadAverage() {
  double load[1] = {0};
  return getloadavg(load, 1) == 1 ? load[0] : -1;
}

int Main(int argc, char** argv) {
  int64_t want_tokens = 6144, threads = 2, drain_after = 0;
  double checkpoint_seconds = 0;
  int64_t drain_delay_ms = 0;
  bool tiny = false;
  std::string model_path = "models/SmolLM2-135M-Instruct.Q4_1.gguf", out_path;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--tokens") {
      if (!absl::SimpleAtoi(next(), &want_tokens)) return 2;
    } else if (a == "--threads") {
      if (!absl::SimpleAtoi(next(), &threads)) return 2;
    } else if (a == "--drain-after-segments") {
      if (!absl::SimpleAtoi(next(), &drain_after)) return 2;
    } else if (a == "--drain-delay-ms") {
      if (!absl::SimpleAtoi(next(), &drain_delay_ms)) return 2;
    } else if (a == "--checkpoint-seconds") {
      if (!absl::SimpleAtod(next(), &checkpoint_seconds)) return 2;
    } else if (a == "--tiny") {
      tiny = true;
    } else if (a == "--model") {
      model_path = next();
    } else if (a == "--out") {
      out_path = next();
    } else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  services::SetMinLogLevel(services::LogLevel::kWarning);
  auto file = engine::ModelFile::Open(model_path);
  if (!file.ok()) {
    std::fprintf(stderr, "%s\n", file.status().ToString().c_str());
    return 4;
  }
  auto tokenizer = engine::Tokenizer::Create((*file)->tokenizer());
  auto model = engine::LlamaModel::Load(std::move(*file));
  if (!tokenizer.ok() || !model.ok()) return 4;
  kernels::ThreadPool pool(static_cast<int>(threads));
  auto metrics = services::Metrics::Start({});
  if (!metrics.ok()) return 1;
  worker::WorkerMetrics worker_metrics(metrics->get(), "cpu");
  const std::string cache_dir =
      (std::filesystem::temp_directory_path() / absl::StrCat("lr-ckpt-bench-", getpid())).string();
  worker::WorkerOptions options;
  options.cache_dir = cache_dir;
  auto service = worker::WorkerServiceImpl::Create({model->get(), tokenizer->get(), &pool, nullptr},
                                                   options, &worker_metrics);
  if (!service.ok()) return 1;
  services::GrpcServerOptions server_options;
  server_options.listen = "127.0.0.1:0";
  auto server = services::GrpcServer::Start(server_options, {service->get()});
  if (!server.ok()) return 1;

  std::vector<int32_t> tokens;
  for (int64_t paragraphs = want_tokens / 30 + 1;; paragraphs += paragraphs / 4 + 1) {
    tokens = (*tokenizer)->Encode(Prose(paragraphs), false);
    if (static_cast<int64_t>(tokens.size()) >= want_tokens) break;
  }
  tokens.resize(static_cast<size_t>(want_tokens));

  v1::DocumentAssignment a;
  a.set_job_id("bench");
  a.set_attempt(1);
  a.mutable_task()->set_kind(v1::TASK_KIND_SUMMARIZE);
  v1::JobOptions* o = a.mutable_options();
  if (tiny) {
    o->set_memory_k(64);
    o->set_window(64);
    o->set_sinks(4);
    o->set_segment_tokens(128);
    o->set_block_tokens(16);
    o->set_recall_blocks(2);
  }
  o->set_max_new_tokens(4);
  a.set_total_tokens(static_cast<int64_t>(tokens.size()));
  a.set_checkpoint_seconds(checkpoint_seconds);
  a.set_model_fingerprint((*model)->fingerprint());

  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(16 << 20);
  auto stub = v1::WorkerService::NewStub(grpc::CreateCustomChannel(
      absl::StrCat("127.0.0.1:", (*server)->port()), grpc::InsecureChannelCredentials(), args));
  grpc::ClientContext context;
  auto stream = stub->RunDocument(&context);
  v1::RunDocumentInput in;
  *in.mutable_assignment() = a;
  stream->Write(in);
  for (size_t at = 0; at < tokens.size(); at += 4096) {
    const size_t end = std::min(tokens.size(), at + 4096);
    v1::RunDocumentInput chunk;
    chunk.mutable_tokens()->set_offset(static_cast<int64_t>(at));
    chunk.mutable_tokens()->mutable_tokens()->Add(tokens.begin() + at, tokens.begin() + end);
    chunk.mutable_tokens()->set_last(end == tokens.size());
    stream->Write(chunk);
  }
  stream->WritesDone();

  struct Checkpoint {
    int64_t document_tokens = 0, bytes = 0, snapshot_bytes = 0, blocks = 0, parts = 0;
    double received_seconds = 0;  // first part to last part, as the coordinator sees it
  };
  std::map<int64_t, Checkpoint> checkpoints;
  std::map<int64_t, std::chrono::steady_clock::time_point> first_part;
  v1::RunDocumentOutput out;
  v1::DocumentFinished finished;
  const auto start = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point drain_start;
  double drain_seconds = -1;
  int64_t segments = 0;
  while (stream->Read(&out)) {
    if (out.has_progress() && ++segments == drain_after) {
      std::this_thread::sleep_for(std::chrono::milliseconds(drain_delay_ms));
      drain_start = std::chrono::steady_clock::now();
      (*service)->StartDrain(absl::Now() + absl::Seconds(60));
    }
    if (out.has_handed_back()) {
      drain_seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - drain_start).count();
    }
    if (out.has_checkpoint()) {
      const v1::CheckpointPart& p = out.checkpoint();
      const auto now = std::chrono::steady_clock::now();
      if (!first_part.count(p.sequence())) first_part[p.sequence()] = now;
      Checkpoint& c = checkpoints[p.sequence()];
      c.document_tokens = p.document_tokens();
      c.bytes += static_cast<int64_t>(p.ByteSizeLong());
      c.snapshot_bytes += static_cast<int64_t>(p.snapshot().size());
      c.blocks += p.archive_blocks_size();
      ++c.parts;
      if (p.last()) {
        c.received_seconds = std::chrono::duration<double>(now - first_part[p.sequence()]).count();
      }
    }
    if (out.has_finished()) finished = out.finished();
  }
  const grpc::Status status = stream->Finish();
  const double total =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::filesystem::remove_all(cache_dir);
  if (!status.ok()) {
    std::fprintf(stderr, "RunDocument: %s\n", status.error_message().c_str());
    return 1;
  }
  std::string json = absl::StrFormat(
      "{\"bench\":\"worker-checkpoint\",\"settings\":\"%s\",\"document_tokens\":%d,"
      "\"threads\":%d,\"read_seconds\":%.3f,\"total_seconds\":%.3f,\"checkpoints\":%d,"
      "\"checkpoint_bytes\":%d,\"checkpoint_seconds_worker\":%.4f,\"checkpoint_interval_s\":%g,"
      "\"drain_delay_ms\":%d,\"drain_seconds\":%.3f,\"load_average_1m\":%.2f,\"per_checkpoint\":[",
      tiny ? "tiny (k 64, w 64, s 4, L 128, B 16, R 2)"
           : "default (k 2048, w 1024, s 4, L 2048, B 32, R 4)",
      tokens.size(), threads, finished.stats().read_seconds(), total, finished.checkpoints(),
      finished.checkpoint_bytes(), finished.checkpoint_seconds(), checkpoint_seconds, drain_seconds,
      LoadAverage());
  if (drain_seconds >= 0) {
    std::printf("drain: handed back %.3f s after the drain began\n", drain_seconds);
  }
  std::printf("%-4s %10s %12s %14s %8s %6s %10s\n", "seq", "doc_tokens", "bytes", "snapshot_bytes",
              "blocks", "parts", "recv_s");
  bool first = true;
  for (const auto& [seq, c] : checkpoints) {
    std::printf("%-4lld %10lld %12lld %14lld %8lld %6lld %10.4f\n", static_cast<long long>(seq),
                static_cast<long long>(c.document_tokens), static_cast<long long>(c.bytes),
                static_cast<long long>(c.snapshot_bytes), static_cast<long long>(c.blocks),
                static_cast<long long>(c.parts), c.received_seconds);
    absl::StrAppendFormat(&json,
                          "%s{\"sequence\":%d,\"document_tokens\":%d,\"bytes\":%d,"
                          "\"snapshot_bytes\":%d,\"archive_blocks\":%d,\"parts\":%d,"
                          "\"received_seconds\":%.4f}",
                          first ? "" : ",", seq, c.document_tokens, c.bytes, c.snapshot_bytes,
                          c.blocks, c.parts, c.received_seconds);
    first = false;
  }
  json += "]}\n";
  std::printf("read %.2f s, %lld checkpoints, %lld bytes, worker time in checkpoints %.3f s\n",
              finished.stats().read_seconds(), static_cast<long long>(finished.checkpoints()),
              static_cast<long long>(finished.checkpoint_bytes()), finished.checkpoint_seconds());
  if (!out_path.empty()) std::ofstream(out_path) << json;
  return 0;
}

}  // namespace
}  // namespace longread

int main(int argc, char** argv) { return longread::Main(argc, argv); }
