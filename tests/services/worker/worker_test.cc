// longread-worker as the coordinator meets it: a real process, the generated stub, tiny settings.
#include <signal.h>

#include <atomic>
#include <mutex>
#include <thread>

#include "gtest/gtest.h"
#include "tests/services/worker/worker_harness.h"

namespace longread::worker::testing {
namespace {

constexpr char kQuestion[] = "What is the code of the east storeroom?";

TEST(WorkerTest, AnswerEqualsTheEngineInProcess) {
  REQUIRE_REFERENCE(ref);
  TempDir dir;
  WorkerProcess worker(dir.path() + "/w");
  ASSERT_TRUE(worker.serving()) << worker.log();
  const std::string document = services::testing::SmallDocument();
  const std::vector<int32_t> tokens = Tokenize(*ref, document);
  const v1::DocumentAssignment assignment =
      TinyAssignment(*ref, kQuestion, static_cast<int64_t>(tokens.size()), 30);
  auto stub = worker.Stub();
  DocumentCall call(stub.get());
  ASSERT_TRUE(call.SendAssignment(assignment));
  ASSERT_TRUE(call.SendTokens(tokens, 0, tokens.size()));
  call.WritesDone();
  const grpc::Status status = call.Finish();
  ASSERT_TRUE(status.ok()) << status.error_message() << "\n" << worker.log();
  ASSERT_TRUE(call.finished.has_value());
  const std::string expected = ReferenceAnswer(*ref, document, assignment);
  EXPECT_FALSE(expected.empty());
  EXPECT_EQ(call.finished->answer(), expected);
  EXPECT_EQ(call.answer_text, expected);  // streamed as generated, nothing lost or repeated
  EXPECT_EQ(call.finished->stats().document_tokens(), static_cast<int64_t>(tokens.size()));
  EXPECT_GT(call.finished->stats().recalled_slots(), 0);
  EXPECT_GE(call.progress_messages, static_cast<int>(tokens.size() / 128));
  EXPECT_TRUE(call.checkpoint_parts.empty());  // 30 s of reading never passed

  // An attempt after one interrupted while answering streams only what the coordinator lacks
  // (whole characters: the first attempt's first piece of text).
  v1::DocumentAssignment again = assignment;
  again.set_attempt(2);
  again.set_answer_bytes_streamed(static_cast<int64_t>(call.first_answer_text.size()));
  ASSERT_FALSE(call.first_answer_text.empty());
  DocumentCall second(stub.get());
  ASSERT_TRUE(second.SendAssignment(again));
  ASSERT_TRUE(second.SendTokens(tokens, 0, tokens.size()));
  second.WritesDone();
  ASSERT_TRUE(second.Finish().ok());
  ASSERT_TRUE(second.finished.has_value());
  EXPECT_EQ(second.finished->answer(), expected);
  EXPECT_EQ(call.first_answer_text + second.answer_text, expected);

  v1::WorkerLoad load;
  grpc::ClientContext context;
  ASSERT_TRUE(stub->GetLoad(&context, v1::GetLoadRequest(), &load).ok());
  EXPECT_EQ(load.capacity(), 4);
  EXPECT_EQ(load.in_flight(), 0);
  EXPECT_FALSE(load.draining());
  EXPECT_EQ(load.model_fingerprint(), ref->model->fingerprint());
  EXPECT_EQ(load.device(), "cpu");
  EXPECT_GT(load.tokens_per_second(), 0);

  // The names docs/SERVICE.md promises (deploy/ dashboards and alerts use them).
  const std::string metrics = worker.ScrapeMetrics();
  for (const char* name :
       {"longread_build_info{", "longread_grpc_server_handled_total{",
        "longread_rocksdb_size_bytes", "longread_tokens_read_total",
        "longread_tokens_generated_total", "longread_worker_documents_in_flight",
        "longread_worker_capacity_documents", "longread_segment_seconds_bucket",
        "longread_generation_seconds_bucket", "longread_decode_token_seconds_bucket",
        "longread_checkpoint_seconds_bucket", "longread_checkpoint_bytes_total",
        "longread_archive_bytes", "longread_device_memory_bytes{device=\"cpu\"}"}) {
    EXPECT_NE(metrics.find(name), std::string::npos) << name << " missing from\n" << metrics;
  }
  EXPECT_NE(metrics.find("grpc_method=\"RunDocument\""), std::string::npos);
  EXPECT_NE(metrics.find(absl::StrCat("longread_tokens_read_total ", 2 * tokens.size())),
            std::string::npos);
}

// The failover primitive: a checkpoint taken mid-document, then the document resumed on a second
// worker process from it (snapshot + archive blocks), gives the undisturbed answer.
TEST(WorkerTest, CheckpointResumedOnASecondWorkerGivesTheSameAnswer) {
  REQUIRE_REFERENCE(ref);
  TempDir dir;
  WorkerProcess first(dir.path() + "/a");
  WorkerProcess second(dir.path() + "/b");
  ASSERT_TRUE(first.serving()) << first.log();
  ASSERT_TRUE(second.serving()) << second.log();
  const std::string document = services::testing::SmallDocument();
  const std::vector<int32_t> tokens = Tokenize(*ref, document);
  v1::DocumentAssignment assignment =
      TinyAssignment(*ref, kQuestion, static_cast<int64_t>(tokens.size()), 0);

  // The first worker checkpoints after every segment; it is killed after its third checkpoint
  // (parts of later ones may have arrived: a coordinator ignores checkpoints it has not seen
  // whole, and so does ResumeParts).
  constexpr int64_t kResumeSequence = 3;
  auto stub_a = first.Stub();
  DocumentCall lost(stub_a.get());
  ASSERT_TRUE(lost.SendAssignment(assignment));
  ASSERT_TRUE(lost.SendTokens(tokens, 0, tokens.size()));
  ASSERT_TRUE(lost.ReadUntil([&](const v1::RunDocumentOutput& out) {
    return out.has_checkpoint() && out.checkpoint().last() &&
           out.checkpoint().sequence() == kResumeSequence;
  })) << first.log();
  first.Signal(SIGKILL);  // the worker is lost: its stream breaks
  EXPECT_FALSE(lost.Finish().ok());
  EXPECT_EQ(first.WaitExit(), -1);
  int64_t blocks = 0, resume_tokens = 0;
  for (const v1::CheckpointPart& part : lost.checkpoint_parts) {
    EXPECT_LE(static_cast<int64_t>(part.ByteSizeLong()), int64_t{4} << 20);
    if (part.sequence() <= kResumeSequence) blocks += part.archive_blocks_size();
    if (part.sequence() == kResumeSequence) resume_tokens = part.document_tokens();
  }
  EXPECT_GT(blocks, 0) << "the memory evicted nothing by then: the archive is not exercised";
  ASSERT_GT(resume_tokens, 0);
  ASSERT_LT(resume_tokens, static_cast<int64_t>(tokens.size()));

  assignment.set_attempt(2);
  assignment.set_resume_from_tokens(resume_tokens);
  auto stub_b = second.Stub();
  {
    // A damaged snapshot is DATA_LOSS: the coordinator drops the checkpoint.
    std::vector<v1::CheckpointPart> damaged = ResumeParts(lost.checkpoint_parts, kResumeSequence);
    std::string* snapshot = damaged.back().mutable_snapshot();
    ASSERT_FALSE(snapshot->empty());
    (*snapshot)[snapshot->size() / 2] ^= 0x5a;
    DocumentCall refused(stub_b.get());
    ASSERT_TRUE(refused.SendAssignment(assignment));
    refused.SendResume(damaged);
    refused.WritesDone();
    EXPECT_EQ(refused.Finish().error_code(), grpc::StatusCode::DATA_LOSS);
  }
  DocumentCall resumed(stub_b.get());
  ASSERT_TRUE(resumed.SendAssignment(assignment));
  ASSERT_TRUE(resumed.SendResume(ResumeParts(lost.checkpoint_parts, kResumeSequence)));
  ASSERT_TRUE(resumed.SendTokens(tokens, static_cast<size_t>(resume_tokens), tokens.size()));
  resumed.WritesDone();
  const grpc::Status status = resumed.Finish();
  ASSERT_TRUE(status.ok()) << status.error_message() << "\n" << second.log();
  ASSERT_TRUE(resumed.finished.has_value());
  EXPECT_EQ(resumed.finished->answer(), ReferenceAnswer(*ref, document, assignment));
  // It goes on numbering checkpoints after the one it resumed from.
  ASSERT_FALSE(resumed.checkpoint_parts.empty());
  EXPECT_EQ(resumed.checkpoint_parts.front().sequence(), kResumeSequence + 1);
}

TEST(WorkerTest, CancelStopsTheDocumentWithinOneSegment) {
  REQUIRE_REFERENCE(ref);
  TempDir dir;
  WorkerProcess worker(dir.path() + "/w");
  ASSERT_TRUE(worker.serving()) << worker.log();
  const std::vector<int32_t> tokens = Tokenize(*ref, LongDocument());
  auto stub = worker.Stub();
  DocumentCall call(stub.get());
  ASSERT_TRUE(call.SendAssignment(
      TinyAssignment(*ref, kQuestion, static_cast<int64_t>(tokens.size()), 30)));
  // Enough tokens for a few segments; the worker then waits for more.
  ASSERT_TRUE(call.SendTokens(tokens, 0, 400));
  ASSERT_TRUE(call.ReadUntil([](const v1::RunDocumentOutput& out) { return out.has_progress(); }));
  // Cancel, then the rest of the document: the worker sees the cancel first and reads at most
  // the segment it may have started.
  ASSERT_TRUE(call.SendCancel());
  call.SendTokens(tokens, 400, tokens.size());
  call.WritesDone();
  const grpc::Status status = call.Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED) << status.error_message();
  // At most the one segment that the tokens after the cancel could complete.
  EXPECT_LE(call.max_tokens_read, 400 + 128);
  EXPECT_FALSE(call.finished.has_value());
  EXPECT_TRUE(call.answer_text.empty());
}

TEST(WorkerTest, OverCapacityIsResourceExhaustedAndWrongModelIsFailedPrecondition) {
  REQUIRE_REFERENCE(ref);
  TempDir dir;
  WorkerProcess worker(dir.path() + "/w", {"--capacity", "1"});
  ASSERT_TRUE(worker.serving()) << worker.log();
  const std::vector<int32_t> tokens = Tokenize(*ref, LongDocument());
  const v1::DocumentAssignment assignment =
      TinyAssignment(*ref, kQuestion, static_cast<int64_t>(tokens.size()), 30);
  auto stub = worker.Stub();

  v1::DocumentAssignment wrong_model = assignment;
  wrong_model.set_model_fingerprint("0123456789abcdef0123456789abcdef");
  DocumentCall mismatched(stub.get());
  ASSERT_TRUE(mismatched.SendAssignment(wrong_model));
  mismatched.WritesDone();
  const grpc::Status refused = mismatched.Finish();
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(refused.error_message().find(ref->model->fingerprint()), std::string::npos);

  // One document in flight (waiting for the rest of its tokens) fills the worker.
  DocumentCall running(stub.get());
  ASSERT_TRUE(running.SendAssignment(assignment));
  ASSERT_TRUE(running.SendTokens(tokens, 0, 300));
  ASSERT_TRUE(
      running.ReadUntil([](const v1::RunDocumentOutput& out) { return out.has_progress(); }));
  DocumentCall second(stub.get());
  ASSERT_TRUE(second.SendAssignment(assignment));
  second.WritesDone();
  const grpc::Status full = second.Finish();
  EXPECT_EQ(full.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << full.error_message();

  v1::WorkerLoad load;
  grpc::ClientContext context;
  ASSERT_TRUE(stub->GetLoad(&context, v1::GetLoadRequest(), &load).ok());
  EXPECT_EQ(load.capacity(), 1);
  EXPECT_EQ(load.in_flight(), 1);

  running.TryCancel();
  EXPECT_EQ(running.Finish().error_code(), grpc::StatusCode::CANCELLED);
}

// Two documents on one worker at once take turns on the model, and each answer is its own
// in-process answer.
TEST(WorkerTest, TwoDocumentsAtOnceInterleaveAndBothAnswerCorrectly) {
  REQUIRE_REFERENCE(ref);
  TempDir dir;
  WorkerProcess worker(dir.path() + "/w", {"--capacity", "2"});
  ASSERT_TRUE(worker.serving()) << worker.log();
  // The same text asked two things: the task-aware memories, and so the answers, differ.
  const std::string documents[2] = {services::testing::SmallDocument(),
                                    services::testing::SmallDocument()};
  const std::string questions[2] = {kQuestion, "What does the town of Kessel sell?"};
  std::vector<int32_t> tokens[2];
  v1::DocumentAssignment assignments[2];
  for (int d = 0; d < 2; ++d) {
    tokens[d] = Tokenize(*ref, documents[d]);
    assignments[d] = TinyAssignment(*ref, questions[d], static_cast<int64_t>(tokens[d].size()), 30);
    assignments[d].set_document_index(d);
  }
  auto stub = worker.Stub();
  std::mutex mu;
  std::vector<std::pair<int, char>> events;  // (document, 'p'rogress or 'f'inished)
  std::unique_ptr<DocumentCall> calls[2];
  for (int d = 0; d < 2; ++d) {
    calls[d] = std::make_unique<DocumentCall>(stub.get());
    ASSERT_TRUE(calls[d]->SendAssignment(assignments[d]));
  }
  grpc::Status statuses[2];
  std::thread threads[2];
  for (int d = 0; d < 2; ++d) {
    threads[d] = std::thread([&, d] {
      calls[d]->SendTokens(tokens[d], 0, tokens[d].size());
      calls[d]->WritesDone();
      calls[d]->ReadUntil([&](const v1::RunDocumentOutput& out) {
        std::lock_guard<std::mutex> lock(mu);
        if (out.has_progress()) events.emplace_back(d, 'p');
        if (out.has_finished()) events.emplace_back(d, 'f');
        return false;
      });
      statuses[d] = calls[d]->Finish();
    });
  }
  for (std::thread& t : threads) t.join();
  for (int d = 0; d < 2; ++d) {
    ASSERT_TRUE(statuses[d].ok()) << statuses[d].error_message() << "\n" << worker.log();
    ASSERT_TRUE(calls[d]->finished.has_value());
    EXPECT_EQ(calls[d]->finished->answer(), ReferenceAnswer(*ref, documents[d], assignments[d]))
        << "document " << d;
  }
  // Interleaved: each document made progress before the other finished.
  auto first_of = [&](int d, char kind) {
    for (size_t i = 0; i < events.size(); ++i) {
      if (events[i] == std::make_pair(d, kind)) return i;
    }
    return events.size();
  };
  EXPECT_LT(first_of(0, 'p'), first_of(1, 'f'));
  EXPECT_LT(first_of(1, 'p'), first_of(0, 'f'));
}

// --batch-documents: the two documents' segments share forward passes (one SegmentBatcher, the
// pass under the model lock), and each answers as it does read alone.
TEST(WorkerTest, TwoDocumentsShareReadingPassesAndBothAnswerCorrectly) {
  REQUIRE_REFERENCE(ref);
  TempDir dir;
  WorkerProcess worker(dir.path() + "/w", {"--capacity", "2", "--batch-documents", "2"});
  ASSERT_TRUE(worker.serving()) << worker.log();
  const std::string documents[2] = {services::testing::SmallDocument(),
                                    services::testing::SmallDocument()};
  const std::string questions[2] = {kQuestion, "What does the town of Kessel sell?"};
  std::vector<int32_t> tokens[2];
  v1::DocumentAssignment assignments[2];
  for (int d = 0; d < 2; ++d) {
    tokens[d] = Tokenize(*ref, documents[d]);
    assignments[d] = TinyAssignment(*ref, questions[d], static_cast<int64_t>(tokens[d].size()), 30);
    assignments[d].set_document_index(d);
  }
  auto stub = worker.Stub();
  std::unique_ptr<DocumentCall> calls[2];
  for (int d = 0; d < 2; ++d) {
    calls[d] = std::make_unique<DocumentCall>(stub.get());
    ASSERT_TRUE(calls[d]->SendAssignment(assignments[d]));
  }
  grpc::Status statuses[2];
  std::thread threads[2];
  for (int d = 0; d < 2; ++d) {
    threads[d] = std::thread([&, d] {
      calls[d]->SendTokens(tokens[d], 0, tokens[d].size());
      calls[d]->WritesDone();
      calls[d]->ReadUntil([](const v1::RunDocumentOutput&) { return false; });
      statuses[d] = calls[d]->Finish();
    });
  }
  for (std::thread& t : threads) t.join();
  for (int d = 0; d < 2; ++d) {
    ASSERT_TRUE(statuses[d].ok()) << statuses[d].error_message() << "\n" << worker.log();
    ASSERT_TRUE(calls[d]->finished.has_value());
    EXPECT_EQ(calls[d]->finished->answer(), ReferenceAnswer(*ref, documents[d], assignments[d]))
        << "document " << d;
  }
  const std::string metrics = worker.ScrapeMetrics();
  auto value = [&](const std::string& name) {
    const size_t at = metrics.find("\n" + name + " ");
    return at == std::string::npos ? -1.0 : std::atof(metrics.c_str() + at + name.size() + 2);
  };
  const double passes = value("longread_read_passes_total");
  const double segments = value("longread_read_pass_segments_total");
  EXPECT_GT(passes, 0) << metrics;
  // Some pass read both documents.
  EXPECT_GT(segments, passes) << metrics;
}

TEST(WorkerTest, ExitCodesAreThoseOfLongreadRun) {
  TempDir dir;
  // An unusable model: 4, before anything listens.
  WorkerProcess bad_model(dir.path() + "/m", {"--model", dir.path() + "/no-such-model.gguf"});
  EXPECT_FALSE(bad_model.serving());
  EXPECT_EQ(bad_model.WaitExit(), 4) << bad_model.log();
  // A misspelt flag: 2.
  WorkerProcess bad_flag(dir.path() + "/f", {"--capacty", "3"});
  EXPECT_FALSE(bad_flag.serving());
  EXPECT_EQ(bad_flag.WaitExit(), 2) << bad_flag.log();
  EXPECT_NE(bad_flag.log().find("--capacty"), std::string::npos);
}

// A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl.
bool MakeCertificates(const std::string& dir) {
  const std::string command = absl::StrCat(
      "cd '", dir, "' && ",
      "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 "
      "-subj /CN=test-ca && ",
      "openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=worker && ",
      "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > san.ext && ",
      "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem "
      "-days 1 -extfile san.ext && ",
      "openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr "
      "-subj /CN=coordinator && ",
      "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem "
      "-days 1) >/dev/null 2>&1");
  return std::system(("(" + command).c_str()) == 0;
}

TEST(WorkerTest, MutualTlsServesOnlyClientsWithACertificate) {
  REQUIRE_REFERENCE(ref);
  TempDir dir;
  if (!MakeCertificates(dir.path())) GTEST_SKIP() << "openssl could not make test certificates";
  const std::string d = dir.path() + "/";
  WorkerProcess worker(dir.path() + "/w", {"--tls-cert", d + "server.pem", "--tls-key",
                                           d + "server.key", "--tls-client-ca", d + "ca.pem"});
  ASSERT_TRUE(worker.serving()) << worker.log();
  auto get_load = [&](std::shared_ptr<grpc::ChannelCredentials> credentials) {
    v1::WorkerLoad load;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    return worker.Stub(credentials)->GetLoad(&context, v1::GetLoadRequest(), &load);
  };
  grpc::SslCredentialsOptions with_cert;
  with_cert.pem_root_certs = ReadFile(d + "ca.pem");
  with_cert.pem_cert_chain = ReadFile(d + "client.pem");
  with_cert.pem_private_key = ReadFile(d + "client.key");
  const grpc::Status ok = get_load(grpc::SslCredentials(with_cert));
  EXPECT_TRUE(ok.ok()) << ok.error_message() << "\n" << worker.log();

  grpc::SslCredentialsOptions without_cert;
  without_cert.pem_root_certs = with_cert.pem_root_certs;
  EXPECT_FALSE(get_load(grpc::SslCredentials(without_cert)).ok());
  EXPECT_FALSE(get_load(grpc::InsecureChannelCredentials()).ok());
}

}  // namespace
}  // namespace longread::worker::testing
