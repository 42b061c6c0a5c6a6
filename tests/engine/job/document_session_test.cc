// The stepwise job a worker runs: reading in steps of any size equals the one-go runner loop
// (what RunTokenizedDocumentJob did before it ran on DocumentSession), and a session interrupted
// after a segment, resumed by a NEW session from its checkpoint and the archive blocks recorded up
// to it, answers byte-identically with the same recall (greedy, CPU).
#include "engine/job/document_session.h"

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "engine/memory/recording_archive.h"
#include "engine/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "tests/engine/job/session_test_util.h"
#include "tests/engine/test_model.h"

namespace longread::engine {
namespace {

using testing::FinishSession;
using testing::InterruptAfter;
using testing::LedgerDocument;
using testing::ResumeAndFinish;
using testing::SmallSessionOptions;

struct Fixture {
  LlamaModel* model = nullptr;
  std::unique_ptr<Tokenizer> tokenizer;
  std::vector<int32_t> tokens;
  int32_t n_layers = 0, n_kv_heads = 0;
  int64_t head_dim = 0;

  std::unique_ptr<InMemoryBlockArchive> FreshArchive() const {
    return std::make_unique<InMemoryBlockArchive>(n_layers, n_kv_heads, head_dim);
  }
};

Fixture MakeFixture(LlamaModel* model) {
  Fixture f;
  f.model = model;
  auto tokenizer = Tokenizer::Create(model->file().tokenizer());
  if (tokenizer.ok()) f.tokenizer = std::move(*tokenizer);
  if (f.tokenizer) f.tokens = f.tokenizer->Encode(LedgerDocument(), false);
  const auto& c = model->config();
  f.n_layers = c.n_layers;
  f.n_kv_heads = c.n_kv_heads;
  f.head_dim = c.head_dim;
  return f;
}

// The job as one runner loop, without DocumentSession: the whole prompt head + document fed at
// once, flushed, recalled, answered. This is RunTokenizedDocumentJob as it was written before
// the session existed (task-aware, recall, greedy).
struct Reference {
  std::string answer;
  int64_t recalled_slots = 0;
  int64_t read_tokens = 0;
};

Reference OneGo(const Fixture& f, const DocumentJobOptions& options, BlockArchive* archive,
                kernels::ThreadPool* pool) {
  Reference out;
  const Tokenizer& tokenizer = *f.tokenizer;
  auto prompt = BuildTaskPrompt(tokenizer, f.model->file().tokenizer().chat_template, options.task,
                                options.question);
  EXPECT_TRUE(prompt.ok()) << prompt.status();
  if (!prompt.ok()) return out;
  std::vector<int32_t> tokens = prompt->before_document;
  tokens.insert(tokens.end(), f.tokens.begin(), f.tokens.end());
  RecurrentRunner runner(f.model, options.runner, nullptr, pool);
  EXPECT_TRUE(
      runner.SetTask(tokenizer.Encode(TaskInstruction(options.task, options.question), false))
          .ok());
  runner.set_archive(archive);
  EXPECT_TRUE(runner.Feed(tokens).ok());
  EXPECT_TRUE(runner.Flush().ok());
  out.read_tokens = runner.tokens_read();
  auto recalled = runner.Recall(prompt->after_document, options.recall);
  EXPECT_TRUE(recalled.ok()) << recalled.status();
  out.recalled_slots = recalled.value_or(-1);
  GenerateOptions generate = options.generate;
  for (const char* stop : {"<|im_end|>", "<|endoftext|>", "<|eot_id|>"}) {
    if (const int32_t id = tokenizer.TokenId(stop); id >= 0) generate.stop_tokens.push_back(id);
  }
  if (tokenizer.eos_id() >= 0) generate.stop_tokens.push_back(tokenizer.eos_id());
  auto generated = runner.Generate(prompt->after_document, generate);
  EXPECT_TRUE(generated.ok()) << generated.status();
  if (!generated.ok()) return out;
  TokenDecoder decoder(tokenizer);
  for (int32_t t : *generated) {
    if (std::find(generate.stop_tokens.begin(), generate.stop_tokens.end(), t) ==
        generate.stop_tokens.end()) {
      out.answer += decoder.Push(t);
    }
  }
  out.answer += decoder.Flush();
  return out;
}

TEST(DocumentSessionTest, ReadingInAnyStepsEqualsTheOneGoRunnerLoop) {
  REQUIRE_DEFAULT_MODEL(model);
  const Fixture f = MakeFixture(model);
  ASSERT_NE(f.tokenizer, nullptr);
  ASSERT_GT(f.tokens.size(), 1200u);
  ASSERT_LT(f.tokens.size(), 2000u);
  kernels::ThreadPool pool(2);
  DocumentJobOptions options = SmallSessionOptions();

  auto reference_archive = f.FreshArchive();
  const Reference reference = OneGo(f, options, reference_archive.get(), &pool);
  EXPECT_FALSE(reference.answer.empty());
  EXPECT_GT(reference.recalled_slots, 0);

  auto job_archive = f.FreshArchive();
  options.archive = job_archive.get();
  auto job = RunTokenizedDocumentJob(*model, *f.tokenizer, f.tokens, options, nullptr, &pool);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->answer, reference.answer);
  EXPECT_EQ(job->recalled_slots, reference.recalled_slots);
  EXPECT_EQ(job->read_tokens, reference.read_tokens);
  EXPECT_EQ(job->document_tokens, static_cast<int64_t>(f.tokens.size()));
  EXPECT_TRUE(job->recall_error.empty()) << job->recall_error;

  // Slices that never line up with a segment: partial segments wait inside the runner.
  auto sliced_archive = f.FreshArchive();
  options.archive = sliced_archive.get();
  auto session = DocumentSession::Create(*model, *f.tokenizer, options, nullptr, &pool,
                                         static_cast<int64_t>(f.tokens.size()));
  ASSERT_TRUE(session.ok()) << session.status();
  const DocumentJobResult sliced = FinishSession(**session, f.tokens, 37);
  EXPECT_EQ(sliced.answer, reference.answer);
  EXPECT_EQ(sliced.recalled_slots, reference.recalled_slots);
  EXPECT_EQ(sliced_archive->stored_bytes(), reference_archive->stored_bytes());
}

// What a failover does: the first worker checkpoints after segment 3 and ships the archive blocks
// put so far (encoded as LRBD, as a worker sends them); a new session on another archive, into
// which they are replayed, resumes and must answer byte-identically with the same recall.
TEST(DocumentSessionTest, ResumedAfterSegment3FromReplayedArchiveAnswersIdentically) {
  REQUIRE_DEFAULT_MODEL(model);
  const Fixture f = MakeFixture(model);
  ASSERT_NE(f.tokenizer, nullptr);
  kernels::ThreadPool pool(2);
  DocumentJobOptions options = SmallSessionOptions();

  auto undisturbed_archive = f.FreshArchive();
  options.archive = undisturbed_archive.get();
  auto undisturbed =
      RunTokenizedDocumentJob(*model, *f.tokenizer, f.tokens, options, nullptr, &pool);
  ASSERT_TRUE(undisturbed.ok()) << undisturbed.status();
  ASSERT_GT(undisturbed->recalled_slots, 0);

  // Slices of 100, and 50 tokens of segment 4 read: the checkpoint holds a partial segment.
  auto first_archive = f.FreshArchive();
  const testing::Interrupted cut = InterruptAfter(*model, *f.tokenizer, f.tokens, options,
                                                  first_archive.get(), &pool, 3, 100, 50);
  EXPECT_EQ(cut.checkpoint.memory.segment_index, 3);
  EXPECT_FALSE(cut.checkpoint.memory.pending_tokens.empty());
  EXPECT_FALSE(cut.checkpoint.reading_done);
  EXPECT_GT(cut.checkpoint.document_tokens_consumed, 0);
  ASSERT_FALSE(cut.blocks.empty());

  const std::string shipped = EncodeArchivedBlocks(cut.blocks, f.head_dim);
  auto received = DecodeArchivedBlocks(shipped, f.head_dim);
  ASSERT_TRUE(received.ok()) << received.status();
  auto second_archive = f.FreshArchive();
  ASSERT_TRUE(ReplayBlocks(*received, second_archive.get()).ok());
  // Another slicing on the new worker: segment boundaries do not depend on it.
  const DocumentJobResult resumed =
      ResumeAndFinish(*model, *f.tokenizer, f.tokens, options, second_archive.get(), &pool,
                      cut.checkpoint, cut.checkpoint.document_tokens_consumed, 64);
  EXPECT_EQ(resumed.answer, undisturbed->answer);
  EXPECT_EQ(resumed.recalled_slots, undisturbed->recalled_slots);
  EXPECT_EQ(resumed.read_tokens, undisturbed->read_tokens);
  EXPECT_TRUE(resumed.recall_error.empty()) << resumed.recall_error;
  EXPECT_EQ(second_archive->stored_bytes(), undisturbed_archive->stored_bytes());
}

// A document interrupted during its answer resumes from the checkpoint taken when reading ended
// and generates the same answer again.
TEST(DocumentSessionTest, ResumedFromTheEndOfReadingAnswersIdentically) {
  REQUIRE_DEFAULT_MODEL(model);
  const Fixture f = MakeFixture(model);
  ASSERT_NE(f.tokenizer, nullptr);
  kernels::ThreadPool pool(2);
  const DocumentJobOptions options = SmallSessionOptions();

  auto first_archive = f.FreshArchive();
  const testing::Interrupted cut = InterruptAfter(*model, *f.tokenizer, f.tokens, options,
                                                  first_archive.get(), &pool, 1000, 128);
  EXPECT_TRUE(cut.checkpoint.reading_done);
  EXPECT_TRUE(cut.checkpoint.memory.pending_tokens.empty());
  EXPECT_EQ(cut.checkpoint.document_tokens_consumed, static_cast<int64_t>(f.tokens.size()));

  auto second_archive = f.FreshArchive();
  ASSERT_TRUE(ReplayBlocks(cut.blocks, second_archive.get()).ok());
  const DocumentJobResult resumed =
      ResumeAndFinish(*model, *f.tokenizer, f.tokens, options, second_archive.get(), &pool,
                      cut.checkpoint, cut.checkpoint.document_tokens_consumed, 128);
  DocumentJobOptions again = options;
  again.archive = first_archive.get();
  auto session = DocumentSession::Create(*model, *f.tokenizer, again, nullptr, &pool,
                                         static_cast<int64_t>(f.tokens.size()));
  ASSERT_TRUE(session.ok());
  ASSERT_TRUE((*session)->Restore(cut.checkpoint).ok());
  const DocumentJobResult original = FinishSession(**session, f.tokens, 128);
  EXPECT_EQ(resumed.answer, original.answer);
  EXPECT_FALSE(resumed.answer.empty());
  EXPECT_EQ(resumed.recalled_slots, original.recalled_slots);
  EXPECT_GT(resumed.recalled_slots, 0);
}

TEST(DocumentSessionTest, MisuseIsRefused) {
  REQUIRE_DEFAULT_MODEL(model);
  const Fixture f = MakeFixture(model);
  ASSERT_NE(f.tokenizer, nullptr);
  kernels::ThreadPool pool(2);
  DocumentJobOptions options = SmallSessionOptions();
  const int64_t n = static_cast<int64_t>(f.tokens.size());
  const std::span<const int32_t> all(f.tokens);
  EXPECT_EQ(
      DocumentSession::Create(*model, *f.tokenizer, options, nullptr, &pool, 0).status().code(),
      absl::StatusCode::kInvalidArgument);

  auto session = DocumentSession::Create(*model, *f.tokenizer, options, nullptr, &pool, n);
  ASSERT_TRUE(session.ok());
  DocumentSession& s = **session;
  // More tokens than the document has, or an end of document that leaves tokens unread.
  std::vector<int32_t> too_many(f.tokens);
  too_many.push_back(f.tokens[0]);
  EXPECT_EQ(s.ReadStep(too_many, true).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.ReadStep(all.first(10), true).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.BeginAnswer().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.NextToken().status().code(), absl::StatusCode::kFailedPrecondition);
  auto consumed = s.ReadStep(all.first(10), false);
  ASSERT_TRUE(consumed.ok());
  EXPECT_EQ(*consumed, 10);
  auto checkpoint = s.Checkpoint();
  ASSERT_TRUE(checkpoint.ok());
  // Only a fresh session can be restored.
  EXPECT_EQ(s.Restore(*checkpoint).code(), absl::StatusCode::kFailedPrecondition);

  // A checkpoint of another task (or config) is refused.
  DocumentJobOptions other = options;
  other.question = "Who painted the door?";
  auto elsewhere = DocumentSession::Create(*model, *f.tokenizer, other, nullptr, &pool, n);
  ASSERT_TRUE(elsewhere.ok());
  EXPECT_EQ((*elsewhere)->Restore(*checkpoint).code(), absl::StatusCode::kFailedPrecondition);
  // A checkpoint beyond a shorter document is refused.
  auto shorter = DocumentSession::Create(*model, *f.tokenizer, options, nullptr, &pool, 5);
  ASSERT_TRUE(shorter.ok());
  EXPECT_EQ((*shorter)->Restore(*checkpoint).code(), absl::StatusCode::kInvalidArgument);

  // A short document is enough for the answer phase's refusals.
  options.generate.max_new_tokens = 3;
  const std::span<const int32_t> head = all.first(200);
  auto finished = DocumentSession::Create(*model, *f.tokenizer, options, nullptr, &pool, 200);
  ASSERT_TRUE(finished.ok());
  const DocumentJobResult result = FinishSession(**finished, head, 500);
  EXPECT_EQ(result.generated_tokens, 3);
  EXPECT_EQ((*finished)->Checkpoint().status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*finished)->NextToken().status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*finished)->ReadStep({}, true).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(ArchivedBlockCodecTest, DamageIsDetected) {
  std::vector<ArchivedBlock> blocks(2);
  for (int i = 0; i < 2; ++i) {
    blocks[i].layer = i;
    blocks[i].kv_head = 1;
    blocks[i].block_id = 7 + i;
    blocks[i].positions = {112 + 16 * i, 113 + 16 * i};
    blocks[i].scores = {0.5f, -1.25f};
    blocks[i].keys = {1, 2, 3, 4, 5, 6, 7, 8};
    blocks[i].values = {-1, -2, -3, -4, -5, -6, -7, -8};
  }
  const std::string bytes = EncodeArchivedBlocks(blocks, 4);
  EXPECT_EQ(bytes.size(), 28u + 2 * (20 + 2 * (12 + 8 * 4)));
  auto decoded = DecodeArchivedBlocks(bytes, 4);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  ASSERT_EQ(decoded->size(), 2u);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ((*decoded)[i].layer, blocks[i].layer);
    EXPECT_EQ((*decoded)[i].block_id, blocks[i].block_id);
    EXPECT_EQ((*decoded)[i].positions, blocks[i].positions);
    EXPECT_EQ((*decoded)[i].scores, blocks[i].scores);
    EXPECT_EQ((*decoded)[i].keys, blocks[i].keys);
    EXPECT_EQ((*decoded)[i].values, blocks[i].values);
  }
  EXPECT_EQ(DecodeArchivedBlocks(bytes, 8).status().code(), absl::StatusCode::kInvalidArgument);
  for (size_t at : {size_t{5}, size_t{40}, bytes.size() - 1}) {
    std::string damaged = bytes;
    damaged[at] ^= 0x10;
    EXPECT_FALSE(DecodeArchivedBlocks(damaged, 4).ok()) << at;
  }
  EXPECT_FALSE(DecodeArchivedBlocks(bytes.substr(0, bytes.size() - 3), 4).ok());
  EXPECT_TRUE(DecodeArchivedBlocks(EncodeArchivedBlocks({}, 4), 4).ok());

  InMemoryBlockArchive inner(2, 2, 4);
  RecordingBlockArchive recording(&inner);
  ASSERT_TRUE(ReplayBlocks(blocks, &recording).ok());
  EXPECT_EQ(recording.recorded_blocks(), 2);
  EXPECT_EQ(recording.recorded_bytes(), 2 * ArchivedBlockBytes(blocks[0]));
  EXPECT_EQ(recording.TakeRecorded().size(), 2u);
  EXPECT_EQ(recording.recorded_blocks(), 0);
  EXPECT_TRUE(recording.TakeRecorded().empty());
  EXPECT_EQ(recording.stored_bytes(), inner.stored_bytes());
  // A block the inner archive refuses is not recorded.
  ArchivedBlock bad = blocks[0];
  bad.layer = 9;
  EXPECT_FALSE(recording.Put(bad).ok());
  EXPECT_EQ(recording.recorded_blocks(), 0);
}

}  // namespace
}  // namespace longread::engine
