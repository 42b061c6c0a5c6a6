// longread-worker under SIGTERM: it stops taking documents, checkpoints the one it reads, hands it
// back and exits 0; another worker resumes it from that checkpoint to the undisturbed answer.
#include <signal.h>

#include "gtest/gtest.h"
#include "tests/services/worker/worker_harness.h"

namespace longread::worker::testing {
namespace {

constexpr char kQuestion[] = "What is the code of the east storeroom?";

TEST(WorkerFaultTest, SigtermMidDocumentCheckpointsHandsBackAndExitsZero) {
  REQUIRE_REFERENCE(ref);
  TempDir dir;
  WorkerProcess draining(dir.path() + "/a", {"--drain-seconds", "30"});
  WorkerProcess next(dir.path() + "/b");
  ASSERT_TRUE(draining.serving()) << draining.log();
  ASSERT_TRUE(next.serving()) << next.log();
  const std::string document = services::testing::SmallDocument();
  const std::vector<int32_t> tokens = Tokenize(*ref, document);
  // Checkpoints by time only (never within this test): the drain's checkpoint is the only one.
  v1::DocumentAssignment assignment =
      TinyAssignment(*ref, kQuestion, static_cast<int64_t>(tokens.size()), 3600);

  auto stub = draining.Stub();
  DocumentCall call(stub.get());
  ASSERT_TRUE(call.SendAssignment(assignment));
  // Part of the document: the worker is mid-document, waiting for the rest, when SIGTERM comes.
  ASSERT_TRUE(call.SendTokens(tokens, 0, 300));
  ASSERT_TRUE(call.ReadUntil([](const v1::RunDocumentOutput& out) { return out.has_progress(); }));
  draining.Signal(SIGTERM);
  ASSERT_TRUE(call.ReadUntil([](const v1::RunDocumentOutput& out) {
    return out.has_handed_back();
  })) << draining.log();
  call.WritesDone();
  const grpc::Status status = call.Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  ASSERT_TRUE(call.handed_back.has_value());
  EXPECT_EQ(call.handed_back->checkpoint_sequence(), 1);
  ASSERT_FALSE(call.checkpoint_parts.empty());
  EXPECT_TRUE(call.checkpoint_parts.back().last());
  const int64_t resume_tokens = call.checkpoint_parts.back().document_tokens();
  // Where it stopped: after a whole segment, or with a partial one kept in the snapshot.
  EXPECT_GT(resume_tokens, 0);
  EXPECT_LE(resume_tokens, 300);
  EXPECT_FALSE(call.finished.has_value());
  EXPECT_EQ(draining.WaitExit(), 0) << draining.log();
  const std::string log = draining.log();
  EXPECT_NE(log.find("\"drained\""), std::string::npos) << log;
  // The drain time, for sizing terminationGracePeriodSeconds (logged, not asserted).
  const size_t at = log.find("\"drained\"");
  if (at != std::string::npos) std::printf("drain log: %s\n", log.substr(at, 160).c_str());

  assignment.set_attempt(2);
  assignment.set_resume_from_tokens(resume_tokens);
  auto next_stub = next.Stub();
  DocumentCall resumed(next_stub.get());
  ASSERT_TRUE(resumed.SendAssignment(assignment));
  ASSERT_TRUE(resumed.SendResume(call.checkpoint_parts));
  ASSERT_TRUE(resumed.SendTokens(tokens, static_cast<size_t>(resume_tokens), tokens.size()));
  resumed.WritesDone();
  const grpc::Status resumed_status = resumed.Finish();
  ASSERT_TRUE(resumed_status.ok()) << resumed_status.error_message() << "\n" << next.log();
  ASSERT_TRUE(resumed.finished.has_value());
  EXPECT_EQ(resumed.finished->answer(), ReferenceAnswer(*ref, document, assignment));
}

TEST(WorkerFaultTest, DrainingWorkerRefusesNewDocuments) {
  REQUIRE_REFERENCE(ref);
  TempDir dir;
  WorkerProcess worker(dir.path() + "/w", {"--drain-seconds", "30"});
  ASSERT_TRUE(worker.serving()) << worker.log();
  const std::vector<int32_t> tokens = Tokenize(*ref, services::testing::SmallDocument());
  const v1::DocumentAssignment assignment =
      TinyAssignment(*ref, kQuestion, static_cast<int64_t>(tokens.size()), 3600);
  auto stub = worker.Stub();
  // A document waiting for tokens keeps the drain open until it hands back.
  DocumentCall running(stub.get());
  ASSERT_TRUE(running.SendAssignment(assignment));
  ASSERT_TRUE(running.SendTokens(tokens, 0, 200));
  ASSERT_TRUE(
      running.ReadUntil([](const v1::RunDocumentOutput& out) { return out.has_progress(); }));
  worker.Signal(SIGTERM);
  ASSERT_TRUE(
      running.ReadUntil([](const v1::RunDocumentOutput& out) { return out.has_handed_back(); }));
  // The server may already be shutting down: either the worker refuses (UNAVAILABLE) or the
  // connection is gone (also UNAVAILABLE); never a document accepted.
  DocumentCall late(stub.get());
  late.SendAssignment(assignment);
  late.WritesDone();
  EXPECT_EQ(late.Finish().error_code(), grpc::StatusCode::UNAVAILABLE);
  running.WritesDone();
  EXPECT_TRUE(running.Finish().ok());
  EXPECT_EQ(worker.WaitExit(), 0);
}

// A document already answering when SIGTERM comes finishes its answer (it cannot be
// checkpointed any more, and answers are short), then the worker exits 0.
TEST(WorkerFaultTest, SigtermWhileAnsweringFinishesTheAnswer) {
  REQUIRE_REFERENCE(ref);
  TempDir dir;
  WorkerProcess worker(dir.path() + "/w", {"--drain-seconds", "60"});
  ASSERT_TRUE(worker.serving()) << worker.log();
  const std::string document = services::testing::SmallDocument();
  const std::vector<int32_t> tokens = Tokenize(*ref, document);
  const v1::DocumentAssignment assignment =
      TinyAssignment(*ref, kQuestion, static_cast<int64_t>(tokens.size()), 3600);
  auto stub = worker.Stub();
  DocumentCall call(stub.get());
  ASSERT_TRUE(call.SendAssignment(assignment));
  ASSERT_TRUE(call.SendTokens(tokens, 0, tokens.size()));
  call.WritesDone();
  ASSERT_TRUE(call.ReadUntil([](const v1::RunDocumentOutput& out) { return out.has_answer(); }));
  worker.Signal(SIGTERM);
  const grpc::Status status = call.Finish();
  ASSERT_TRUE(status.ok()) << status.error_message() << "\n" << worker.log();
  ASSERT_TRUE(call.finished.has_value());
  EXPECT_FALSE(call.handed_back.has_value());
  EXPECT_EQ(call.finished->answer(), ReferenceAnswer(*ref, document, assignment));
  EXPECT_EQ(call.answer_text, call.finished->answer());
  EXPECT_EQ(worker.WaitExit(), 0) << worker.log();
}

}  // namespace
}  // namespace longread::worker::testing
