// longread-coordinator as a real process: answers through coordinator + 2 real workers equal the
// engine run in-process, and every kind of bad input gets its precise status code.
#include <fstream>
#include <set>

#include "tests/services/coordinator/coordinator_harness.h"

namespace longread::coordinator::testing {
namespace {

namespace fs = std::filesystem;

constexpr char kQuestion[] = "Who was the keeper on duty?";

TEST(CoordinatorTest, TwentyDocumentsThroughTwoWorkersGiveTheEngineAnswers) {
  REQUIRE_REFERENCE(ref);
  TempDir dir;
  WorkerProcess a(dir.path() + "/a", {"--capacity", "2"});
  WorkerProcess b(dir.path() + "/b", {"--capacity", "2"});
  ASSERT_TRUE(a.serving() && b.serving()) << a.log() << b.log();
  auto coordinator = StartCoordinator(dir.path() + "/c", absl::StrCat(a.target(), ",", b.target()));
  ASSERT_TRUE(coordinator->serving()) << coordinator->log();
  auto stub = JobStub(coordinator->target());

  const v1::JobHeader header = TinyHeader(kQuestion);
  std::vector<InlineDocument> documents;
  // Five different texts, four times each: the in-process reference runs once per text.
  for (int i = 0; i < 20; ++i) {
    documents.push_back({absl::StrCat("doc-", i), NumberedDocument(i % 5)});
  }
  v1::SubmitJobResponse response;
  grpc::Status s = Submit(stub.get(), header, documents, &response);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(response.job().documents_size(), 20);

  const std::vector<v1::JobEvent> events = WatchToEnd(stub.get(), response.job_id());
  ExpectDense(events);
  ASSERT_FALSE(events.empty());
  EXPECT_TRUE(events.front().has_accepted());
  ASSERT_TRUE(events.back().has_job_done()) << coordinator->log();
  EXPECT_EQ(events.back().job_done().state(), v1::JOB_STATE_SUCCEEDED) << coordinator->log();

  std::map<int, std::string> streamed;
  std::set<std::string> workers;
  for (const v1::JobEvent& e : events) {
    if (e.has_answer()) streamed[e.answer().document_index()] += e.answer().text();
    if (e.has_assigned()) workers.insert(e.assigned().worker());
  }
  EXPECT_EQ(workers.size(), 2u) << "both workers read";

  const v1::Job job = GetJob(stub.get(), response.job_id());
  ASSERT_EQ(job.documents_size(), 20);
  const v1::DocumentAssignment assignment = ReferenceAssignment(*ref, header);
  std::map<std::string, std::string> reference;
  for (int i = 0; i < 20; ++i) {
    const v1::DocumentStatus& d = job.documents(i);
    EXPECT_EQ(d.state(), v1::DOCUMENT_STATE_SUCCEEDED) << i;
    if (!reference.count(documents[i].text)) {
      reference[documents[i].text] =
          worker::testing::ReferenceAnswer(*ref, documents[i].text, assignment);
    }
    EXPECT_EQ(d.answer(), reference[documents[i].text]) << "document " << i;
    EXPECT_EQ(streamed[i], d.answer()) << "streamed answer text of document " << i;
    EXPECT_EQ(d.total_tokens(),
              static_cast<int64_t>(worker::testing::Tokenize(*ref, documents[i].text).size()));
    EXPECT_EQ(d.stats().attempts(), 1);
  }

  // The metrics of docs/SERVICE.md count what happened.
  const long long metrics_port = LoggedInt(coordinator->log(), "serving", "metrics_port");
  ASSERT_GT(metrics_port, 0);
  const std::string metrics = ScrapeMetrics(static_cast<int>(metrics_port));
  for (const char* line :
       {"longread_jobs{state=\"succeeded\"} 1", "longread_documents{state=\"succeeded\"} 20",
        "longread_jobs_submitted_total 1", "longread_queue_depth 0",
        "longread_workers{state=\"healthy\"} 2", "longread_build_info{",
        "longread_grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"SubmitJob\","
        "grpc_service=\"longread.v1.JobService\"} 1",
        "longread_job_duration_seconds_count 1", "longread_time_to_first_event_seconds_count 1",
        "longread_rocksdb_size_bytes", "longread_tokens_generated_total",
        "longread_checkpoint_bytes_total", "longread_failovers_total{reason=\"worker_lost\"} 0",
        "longread_watchers"}) {
    EXPECT_NE(metrics.find(line), std::string::npos) << line << "\n" << metrics;
  }

  // Re-attaching from any offset replays exactly the rest.
  const int64_t middle = static_cast<int64_t>(events.size()) / 2;
  const std::vector<v1::JobEvent> rest = WatchToEnd(stub.get(), response.job_id(), middle);
  ASSERT_EQ(rest.size(), events.size() - static_cast<size_t>(middle));
  for (size_t i = 0; i < rest.size(); ++i) {
    EXPECT_EQ(rest[i].SerializeAsString(), events[middle + i].SerializeAsString());
  }
}

// Documents are placed by the tokens they have to read, not by count: a long document and three
// short ones on two idle workers put the three short ones together on the other worker (by free
// slots alone, the second short one would join the long one).
TEST(CoordinatorTest, DocumentsArePlacedByTheirTokensNotTheirCount) {
  REQUIRE_REFERENCE(ref);
  TempDir dir;
  WorkerProcess a(dir.path() + "/a", {"--capacity", "4"});
  WorkerProcess b(dir.path() + "/b", {"--capacity", "4"});
  ASSERT_TRUE(a.serving() && b.serving()) << a.log() << b.log();
  auto coordinator = StartCoordinator(dir.path() + "/c", absl::StrCat(a.target(), ",", b.target()));
  ASSERT_TRUE(coordinator->serving()) << coordinator->log();
  // Both workers known healthy before the job, so that the placement is the policy's alone.
  const int metrics_port =
      static_cast<int>(LoggedInt(coordinator->log(), "serving", "metrics_port"));
  for (int i = 0; i < 200; ++i) {
    if (ScrapeMetrics(metrics_port).find("longread_workers{state=\"healthy\"} 2") !=
        std::string::npos) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  auto stub = JobStub(coordinator->target());
  v1::JobHeader header = TinyHeader(kQuestion);
  header.mutable_options()->set_max_new_tokens(4);
  const std::vector<InlineDocument> documents = {{"long", worker::testing::LongDocument()},
                                                 {"short-1", NumberedDocument(1)},
                                                 {"short-2", NumberedDocument(2)},
                                                 {"short-3", NumberedDocument(3)}};
  v1::SubmitJobResponse response;
  ASSERT_TRUE(Submit(stub.get(), header, documents, &response).ok());
  const std::vector<v1::JobEvent> events = WatchToEnd(stub.get(), response.job_id());
  ASSERT_TRUE(events.back().has_job_done()) << coordinator->log();
  EXPECT_EQ(events.back().job_done().state(), v1::JOB_STATE_SUCCEEDED);
  std::map<int, std::string> placed;
  for (const v1::JobEvent& e : events) {
    if (e.has_assigned()) placed[e.assigned().document_index()] = e.assigned().worker();
  }
  ASSERT_EQ(placed.size(), 4u);
  for (int i = 1; i <= 3; ++i) {
    EXPECT_NE(placed[i], placed[0]) << "short document " << i << " joined the long one";
  }
}

// One coordinator with authentication, a path root and small limits; its worker does not exist,
// so accepted jobs stay queued (nothing here needs reading).
class CoordinatorInputTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    const std::string d = dir_->path();
    std::ofstream(d + "/tokens") << "# test tokens\nwriter-secret write\nreader-secret read\n";
    fs::create_directories(d + "/root/repo/src");
    fs::create_directories(d + "/outside");
    std::ofstream(d + "/root/notes.txt") << services::testing::SmallDocument();
    std::ofstream(d + "/root/repo/README.md") << "# Harbor\n\nA tool that counts ships.\n";
    std::ofstream(d + "/root/repo/src/main.cc") << "int main() { return 0; }\n";
    std::ofstream(d + "/root/repo/src/util.h") << "#pragma once\nint Count();";
    std::ofstream(d + "/root/repo/logo.bin", std::ios::binary) << std::string("PNG\0\1\2", 6);
    std::ofstream(d + "/outside/secret.txt") << "the launch codes\n";
    fs::create_symlink(d + "/outside/secret.txt", d + "/root/escape.txt");
    fs::create_symlink(d + "/outside/secret.txt", d + "/root/repo/escape.txt");
    coordinator_ = StartCoordinator(d + "/c", "127.0.0.1:1",
                                    {"--auth-tokens", d + "/tokens", "--path-root", d + "/root",
                                     "--max-document-bytes", "200000"})
                       .release();
  }
  static void TearDownTestSuite() {
    delete coordinator_;
    delete dir_;
  }
  void SetUp() override {
    ASSERT_TRUE(coordinator_->serving()) << coordinator_->log();
    stub_ = JobStub(coordinator_->target());
  }

  grpc::Status SubmitText(const std::string& text, v1::SubmitJobResponse* response = nullptr,
                          const std::string& token = "writer-secret") {
    v1::SubmitJobResponse ignored;
    return Submit(stub_.get(), TinyHeader(kQuestion), {{"doc", text}},
                  response != nullptr ? response : &ignored, token);
  }
  grpc::Status SubmitPath(const std::string& path, v1::DocumentFormat format,
                          v1::SubmitJobResponse* response = nullptr) {
    v1::SubmitJobRequest header, start;
    *header.mutable_header() = TinyHeader(kQuestion);
    start.mutable_document()->set_server_path(path);
    start.mutable_document()->set_format(format);
    grpc::ClientContext context;
    context.AddMetadata("authorization", "Bearer writer-secret");
    v1::SubmitJobResponse ignored;
    auto writer = stub_->SubmitJob(&context, response != nullptr ? response : &ignored);
    writer->Write(header);
    writer->Write(start);
    writer->WritesDone();
    return writer->Finish();
  }
  int CountJobs() {
    int n = 0;
    std::string token;
    do {
      grpc::ClientContext context;
      context.AddMetadata("authorization", "Bearer reader-secret");
      v1::ListJobsRequest request;
      request.set_page_size(2);
      request.set_page_token(token);
      v1::ListJobsResponse response;
      EXPECT_TRUE(stub_->ListJobs(&context, request, &response).ok());
      n += response.jobs_size();
      token = response.next_page_token();
    } while (!token.empty());
    return n;
  }

  static TempDir* dir_;
  static Process* coordinator_;
  std::unique_ptr<v1::JobService::Stub> stub_;
};
TempDir* CoordinatorInputTest::dir_ = nullptr;
Process* CoordinatorInputTest::coordinator_ = nullptr;

TEST_F(CoordinatorInputTest, CredentialsAreRequiredAndRolesEnforced) {
  EXPECT_EQ(SubmitText("hello", nullptr, "").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(SubmitText("hello", nullptr, "wrong-secret").error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(SubmitText("hello", nullptr, "reader-secret").error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  {
    grpc::ClientContext context;
    v1::GetJobRequest request;
    request.set_job_id("nope");
    v1::Job job;
    EXPECT_EQ(stub_->GetJob(&context, request, &job).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    grpc::ClientContext context;
    context.AddMetadata("authorization", "Bearer reader-secret");
    v1::CancelJobRequest request;
    request.set_job_id("nope");
    v1::Job job;
    EXPECT_EQ(stub_->CancelJob(&context, request, &job).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
  }
  grpc::Status watch;
  Watch(
      stub_.get(), "nope", 0, [](const v1::JobEvent&) { return false; }, &watch);
  EXPECT_EQ(watch.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  // The token never reaches the log.
  EXPECT_EQ(coordinator_->log().find("secret"), std::string::npos);
}

TEST_F(CoordinatorInputTest, UnknownJobIdsAreNotFound) {
  grpc::Status status;
  GetJob(stub_.get(), "0000000000000000000000", &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);  // no token
  for (const char* id : {"0000000000000000000000", "", "../../etc"}) {
    grpc::ClientContext get, cancel;
    get.AddMetadata("authorization", "Bearer reader-secret");
    cancel.AddMetadata("authorization", "Bearer writer-secret");
    v1::GetJobRequest g;
    g.set_job_id(id);
    v1::CancelJobRequest c;
    c.set_job_id(id);
    v1::Job job;
    EXPECT_EQ(stub_->GetJob(&get, g, &job).error_code(), grpc::StatusCode::NOT_FOUND) << id;
    EXPECT_EQ(stub_->CancelJob(&cancel, c, &job).error_code(), grpc::StatusCode::NOT_FOUND) << id;
    Watch(
        stub_.get(), id, 0, [](const v1::JobEvent&) { return false; }, &status, "reader-secret");
    EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND) << id;
  }
}

TEST_F(CoordinatorInputTest, InvalidUtf8IsAcceptedAndCounted) {
  std::string text = services::testing::SmallDocument();
  text.insert(100, "\xff");
  text.insert(500, "\xc3");  // a lead byte without its continuation
  v1::SubmitJobResponse response;
  grpc::Status s = SubmitText(text, &response);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(response.job().documents(0).stats().invalid_utf8_sequences(), 2);
  EXPECT_GT(response.job().documents(0).total_tokens(), 100);
}

TEST_F(CoordinatorInputTest, BinaryEmptyAndOversizedDocumentsAreRefused) {
  grpc::Status s = SubmitText(std::string("text\0more", 9));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("doc"), std::string::npos) << s.error_message();
  std::string noise;
  for (int i = 0; i < 4000; ++i) noise.push_back(static_cast<char>(0x80 + (i * 37) % 64));
  EXPECT_EQ(SubmitText(noise).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(SubmitText("").error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(SubmitText(std::string(250000, 'a')).error_code(), grpc::StatusCode::OUT_OF_RANGE);
}

TEST_F(CoordinatorInputTest, MalformedStreamsAreInvalidArguments) {
  v1::SubmitJobRequest header, start, chunk;
  *header.mutable_header() = TinyHeader(kQuestion);
  start.mutable_document()->set_name("doc");
  chunk.set_chunk("some text");
  const std::string w = "writer-secret";
  EXPECT_EQ(SubmitRaw(stub_.get(), {}, w).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(SubmitRaw(stub_.get(), {start, chunk}, w).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(SubmitRaw(stub_.get(), {header, header, start, chunk}, w).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(SubmitRaw(stub_.get(), {header, chunk}, w).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(SubmitRaw(stub_.get(), {header}, w).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::SubmitJobRequest no_question = header;
  no_question.mutable_header()->mutable_task()->clear_question();
  EXPECT_EQ(SubmitRaw(stub_.get(), {no_question, start, chunk}, w).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  v1::SubmitJobRequest negative = header;
  negative.mutable_header()->mutable_options()->set_window(-1);
  EXPECT_EQ(SubmitRaw(stub_.get(), {negative, start, chunk}, w).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(SubmitRaw(stub_.get(), {header, start, chunk}, w).ok());
}

TEST_F(CoordinatorInputTest, ServerPathsStayUnderTheRoots) {
  const std::string root = dir_->path() + "/root";
  v1::SubmitJobResponse response;
  grpc::Status s = SubmitPath(root + "/notes.txt", v1::DOCUMENT_FORMAT_TEXT, &response);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_GT(response.job().documents(0).total_tokens(), 100);
  EXPECT_TRUE(SubmitPath("notes.txt", v1::DOCUMENT_FORMAT_TEXT).ok());  // relative to the root
  for (const std::string& bad :
       {dir_->path() + "/outside/secret.txt", root + "/../outside/secret.txt", root + "/escape.txt",
        std::string("../outside/secret.txt"), std::string("/etc/passwd")}) {
    EXPECT_EQ(SubmitPath(bad, v1::DOCUMENT_FORMAT_TEXT).error_code(),
              grpc::StatusCode::PERMISSION_DENIED)
        << bad;
  }
  EXPECT_EQ(SubmitPath(root + "/missing.txt", v1::DOCUMENT_FORMAT_TEXT).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_F(CoordinatorInputTest, RepositoryAsDirectoryEqualsTheSameRepositoryAsTar) {
  const std::string root = dir_->path() + "/root";
  v1::SubmitJobResponse from_dir;
  grpc::Status s = SubmitPath(root + "/repo", v1::DOCUMENT_FORMAT_REPOSITORY, &from_dir);
  ASSERT_TRUE(s.ok()) << s.error_message();
  // The tar holds the same files (the binary one and the escaping link are skipped in both).
  const std::string tar = dir_->path() + "/repo.tar";
  ASSERT_EQ(std::system(absl::StrCat("tar -C ", root, "/repo --exclude=escape.txt -cf ", tar,
                                     " README.md src logo.bin")
                            .c_str()),
            0);
  const std::string bytes = services::testing::ReadFile(tar);
  v1::SubmitJobRequest header, start, chunk;
  *header.mutable_header() = TinyHeader(kQuestion);
  start.mutable_document()->set_name("repo.tar");
  start.mutable_document()->set_format(v1::DOCUMENT_FORMAT_REPOSITORY);
  std::vector<v1::SubmitJobRequest> messages = {header, start};
  for (size_t at = 0; at < bytes.size(); at += 1000) {
    chunk.set_chunk(bytes.substr(at, 1000));
    messages.push_back(chunk);
  }
  {
    grpc::ClientContext context;
    context.AddMetadata("authorization", "Bearer writer-secret");
    v1::SubmitJobResponse from_tar;
    auto writer = stub_->SubmitJob(&context, &from_tar);
    for (const auto& m : messages) writer->Write(m);
    writer->WritesDone();
    s = writer->Finish();
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(from_tar.job().documents(0).total_tokens(),
              from_dir.job().documents(0).total_tokens());
  }
  // A damaged header (checksum) is refused before any content is trusted.
  std::string damaged = bytes;
  damaged[10] ^= 0x55;
  messages.resize(2);
  chunk.set_chunk(damaged);
  messages.push_back(chunk);
  s = SubmitRaw(stub_.get(), messages, "writer-secret");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // A size field that points past the end.
  std::string lying = bytes;
  std::memcpy(lying.data() + 124, "77777777777", 11);
  messages.back().set_chunk(lying);
  EXPECT_EQ(SubmitRaw(stub_.get(), messages, "writer-secret").error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(CoordinatorInputTest, IdempotencyKeyReturnsTheFirstJob) {
  v1::JobHeader header = TinyHeader(kQuestion);
  header.set_idempotency_key("nightly-42");
  v1::SubmitJobResponse first, second;
  ASSERT_TRUE(Submit(stub_.get(), header, {{"doc", "one document"}}, &first, "writer-secret").ok());
  ASSERT_TRUE(
      Submit(stub_.get(), header, {{"doc", "one document"}}, &second, "writer-secret").ok());
  EXPECT_FALSE(first.deduplicated());
  EXPECT_TRUE(second.deduplicated());
  EXPECT_EQ(first.job_id(), second.job_id());
}

TEST_F(CoordinatorInputTest, AClientThatDisconnectsMidStreamLeavesNoJob) {
  const int before = CountJobs();
  {
    grpc::ClientContext context;
    context.AddMetadata("authorization", "Bearer writer-secret");
    v1::SubmitJobResponse response;
    auto writer = stub_->SubmitJob(&context, &response);
    v1::SubmitJobRequest header, start, chunk;
    *header.mutable_header() = TinyHeader(kQuestion);
    start.mutable_document()->set_name("doc");
    chunk.set_chunk(services::testing::SmallDocument());
    ASSERT_TRUE(writer->Write(header) && writer->Write(start) && writer->Write(chunk));
    context.TryCancel();
    EXPECT_EQ(writer->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  // A job is only created once the stream ended cleanly; a later submission still works.
  v1::SubmitJobResponse response;
  ASSERT_TRUE(SubmitText("after the disconnect", &response).ok());
  EXPECT_EQ(CountJobs(), before + 1);
}

TEST_F(CoordinatorInputTest, CancelOfAQueuedJobEndsItAndIsIdempotent) {
  v1::SubmitJobResponse response;
  ASSERT_TRUE(SubmitText("a document nobody will read", &response).ok());
  v1::Job job;
  for (int i = 0; i < 2; ++i) {
    grpc::ClientContext context;
    context.AddMetadata("authorization", "Bearer writer-secret");
    v1::CancelJobRequest request;
    request.set_job_id(response.job_id());
    ASSERT_TRUE(stub_->CancelJob(&context, request, &job).ok());
    EXPECT_EQ(job.state(), v1::JOB_STATE_CANCELLED);
  }
  grpc::Status status;
  auto events = Watch(
      stub_.get(), response.job_id(), 0, [](const v1::JobEvent&) { return false; }, &status,
      "reader-secret");
  EXPECT_TRUE(status.ok()) << status.error_message();
  ExpectDense(events);
  ASSERT_FALSE(events.empty());
  ASSERT_TRUE(events.back().has_job_done());
  EXPECT_EQ(events.back().job_done().state(), v1::JOB_STATE_CANCELLED);
  Watch(
      stub_.get(), response.job_id(), static_cast<int64_t>(events.size()) + 1,
      [](const v1::JobEvent&) { return false; }, &status, "reader-secret");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::OUT_OF_RANGE);
}

// TLS with client certificates on every hop: client -> coordinator and coordinator -> worker.
TEST(CoordinatorTlsTest, MutualTlsBetweenEveryPair) {
  REQUIRE_REFERENCE(ref);
  TempDir dir;
  const std::string d = dir.path();
  const std::string make_certs =
      absl::StrCat("cd ", d, " && exec >openssl.log 2>&1 && ",
                   "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 "
                   "-subj /CN=longread-test-ca && ",
                   "openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr "
                   "-subj /CN=localhost && ",
                   "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost' > san.ext && ",
                   "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
                   "-out server.pem -days 1 -extfile san.ext && ",
                   "openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr "
                   "-subj /CN=longread-client && ",
                   "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
                   "-out client.pem -days 1");
  ASSERT_EQ(std::system(make_certs.c_str()), 0) << services::testing::ReadFile(d + "/openssl.log");
  const std::vector<std::string> server_tls = {"--tls-cert",      d + "/server.pem", "--tls-key",
                                               d + "/server.key", "--tls-client-ca", d + "/ca.pem"};
  WorkerProcess worker(d + "/w", server_tls);
  ASSERT_TRUE(worker.serving()) << worker.log();
  std::vector<std::string> flags = server_tls;
  flags.insert(flags.end(), {"--worker-tls-ca", d + "/ca.pem", "--worker-tls-cert",
                             d + "/client.pem", "--worker-tls-key", d + "/client.key"});
  auto coordinator = StartCoordinator(d + "/c", worker.target(), flags);
  ASSERT_TRUE(coordinator->serving()) << coordinator->log();

  auto channel_with = [&](bool client_cert) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = services::testing::ReadFile(d + "/ca.pem");
    if (client_cert) {
      ssl.pem_cert_chain = services::testing::ReadFile(d + "/client.pem");
      ssl.pem_private_key = services::testing::ReadFile(d + "/client.key");
    }
    return v1::JobService::NewStub(
        grpc::CreateChannel(coordinator->target(), grpc::SslCredentials(ssl)));
  };
  v1::SubmitJobResponse response;
  const v1::JobHeader header = TinyHeader(kQuestion);
  // Without a client certificate, or in plaintext, the handshake fails.
  EXPECT_EQ(Submit(channel_with(false).get(), header, {{"d", "text"}}, &response).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(
      Submit(JobStub(coordinator->target()).get(), header, {{"d", "text"}}, &response).error_code(),
      grpc::StatusCode::UNAVAILABLE);
  auto stub = channel_with(true);
  const std::string document = NumberedDocument(3);
  grpc::Status s = Submit(stub.get(), header, {{"d", document}}, &response);
  ASSERT_TRUE(s.ok()) << s.error_message();
  const auto events = WatchToEnd(stub.get(), response.job_id());
  ASSERT_FALSE(events.empty());
  ASSERT_TRUE(events.back().has_job_done()) << coordinator->log() << worker.log();
  EXPECT_EQ(events.back().job_done().state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(GetJob(stub.get(), response.job_id()).documents(0).answer(),
            worker::testing::ReferenceAnswer(*ref, document, ReferenceAssignment(*ref, header)));
}

// Workers found by resolving a DNS name (as a Kubernetes headless Service would be).
TEST(CoordinatorDnsTest, WorkersFromADnsName) {
  REQUIRE_REFERENCE(ref);
  TempDir dir;
  WorkerProcess worker(dir.path() + "/w", {"--listen", "0.0.0.0:0"});
  ASSERT_TRUE(worker.serving()) << worker.log();
  const std::string port = worker.target().substr(worker.target().rfind(':') + 1);
  auto coordinator =
      StartCoordinator(dir.path() + "/c", "dns:///localhost:" + port, {"--resolve-seconds", "1"});
  ASSERT_TRUE(coordinator->serving()) << coordinator->log();
  auto stub = JobStub(coordinator->target());
  const v1::JobHeader header = TinyHeader(kQuestion);
  const std::string document = NumberedDocument(4);
  v1::SubmitJobResponse response;
  ASSERT_TRUE(Submit(stub.get(), header, {{"d", document}}, &response).ok());
  const auto events = WatchToEnd(stub.get(), response.job_id());
  ASSERT_TRUE(events.back().has_job_done()) << coordinator->log();
  EXPECT_EQ(events.back().job_done().state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_NE(coordinator->log().find(absl::StrCat(":", port, "\"")), std::string::npos);
  EXPECT_EQ(GetJob(stub.get(), response.job_id()).documents(0).answer(),
            worker::testing::ReferenceAnswer(*ref, document, ReferenceAssignment(*ref, header)));
}

// A document streamed far past the limit is refused while streaming, and the coordinator's
// memory stays bounded all along (tokenized as it arrives, never held whole).
TEST(CoordinatorQueueTest, AHugeStreamedDocumentKeepsTheCoordinatorMemoryBounded) {
  TempDir dir;
  auto coordinator = StartCoordinator(dir.path() + "/c", "127.0.0.1:1",
                                      {"--max-document-bytes", std::to_string(int64_t{96} << 20)});
  ASSERT_TRUE(coordinator->serving()) << coordinator->log();
  auto stub = JobStub(coordinator->target());
  grpc::ClientContext context;
  v1::SubmitJobResponse response;
  auto writer = stub->SubmitJob(&context, &response);
  v1::SubmitJobRequest header, start, chunk;
  *header.mutable_header() = TinyHeader(kQuestion);
  start.mutable_document()->set_name("huge");
  ASSERT_TRUE(writer->Write(header) && writer->Write(start));
  // 2 GiB of prose in 1 MiB chunks (the same text over and over).
  std::string text;
  const std::string small = services::testing::SmallDocument();
  while (text.size() < (1u << 20)) text += small;
  text.resize(1u << 20);
  chunk.set_chunk(text);
  int64_t sent = 0;
  while (sent < (int64_t{2} << 30) && writer->Write(chunk))
    sent += static_cast<int64_t>(text.size());
  writer->WritesDone();
  const grpc::Status s = writer->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::OUT_OF_RANGE) << s.error_message();
  EXPECT_GE(sent, int64_t{96} << 20);
  const std::string status =
      services::testing::ReadFile(absl::StrCat("/proc/", coordinator->pid(), "/status"));
  const size_t at = status.find("VmHWM:");
  ASSERT_NE(at, std::string::npos);
  const long long peak_kib = std::atoll(status.c_str() + at + 6);
  std::printf("MEMORY huge_document: sent_bytes=%lld coordinator_vmhwm_kib=%lld\n",
              static_cast<long long>(sent), peak_kib);
  // The tokenizer tables, RocksDB's memtables and gRPC's buffers: well under the document.
  EXPECT_LT(peak_kib, 400 * 1024);
}

TEST(CoordinatorQueueTest, AFullQueueIsResourceExhaustedWithARetryHint) {
  TempDir dir;
  auto coordinator =
      StartCoordinator(dir.path() + "/c", "127.0.0.1:1", {"--max-queued-documents", "2"});
  ASSERT_TRUE(coordinator->serving()) << coordinator->log();
  auto stub = JobStub(coordinator->target());
  v1::SubmitJobResponse response;
  ASSERT_TRUE(
      Submit(stub.get(), TinyHeader(kQuestion), {{"a", "first"}, {"b", "second"}}, &response).ok());
  std::multimap<std::string, std::string> trailers;
  grpc::Status s =
      Submit(stub.get(), TinyHeader(kQuestion), {{"c", "third"}}, &response, "", 700, &trailers);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  ASSERT_EQ(trailers.count("retry-after-ms"), 1u);
  EXPECT_GT(std::atoi(trailers.find("retry-after-ms")->second.c_str()), 0);
}

}  // namespace
}  // namespace longread::coordinator::testing
