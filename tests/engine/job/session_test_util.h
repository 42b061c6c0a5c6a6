// Shared by the DocumentSession tests (tests/engine/job/ with the in-RAM archive, tests/cache/
// with the RocksDB one): a ~1,500-token document with a planted fact, a small memory that evicts
// it, and the interrupt / resume halves of a failover.
#pragma once

#include <algorithm>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/job/document_session.h"
#include "engine/memory/recording_archive.h"
#include "gtest/gtest.h"

namespace longread::engine::testing {

// A keeper's ledger, one entry a year; the pass key is written once, about a quarter in, so the
// memory (64 + 64 slots per head) has evicted it long before the question.
inline std::string LedgerDocument() {
  static const char* const kWeather[] = {"calm", "stormy", "foggy", "bright", "wet", "windy"};
  static const char* const kCargo[] = {"timber", "salt cod", "coal", "wool", "iron", "grain"};
  std::string text = "The ledger of the lighthouse at Varrow Point.\n\n";
  for (int i = 0; i < 40; ++i) {
    const int year = 1790 + i;
    absl::StrAppend(&text, "In ", year, " the keeper logged ", 40 + (i * 37) % 200,
                    " ships, most of them carrying ", kCargo[i % 6], ". The season was ",
                    kWeather[(i * 5) % 6], " and the lamp burned ", 300 + (i * 53) % 400,
                    " gallons of oil.");
    if (i == 10) absl::StrAppend(&text, " That year the pass key to the lamp room was 40817.");
    absl::StrAppend(&text, "\n");
  }
  return text;
}

// --memory-k 64, window 64, segment 128, block 16, recall 2, at most 24 new tokens.
inline DocumentJobOptions SmallSessionOptions() {
  DocumentJobOptions options;
  options.task = Task::kQuestion;
  options.question = "What was the pass key to the lamp room?";
  options.runner.memory.sinks = 4;
  options.runner.memory.top_k = 64;
  options.runner.memory.window = 64;
  options.runner.memory.block_tokens = 16;
  options.runner.segment_tokens = 128;
  options.recall.blocks = 2;
  options.generate.max_new_tokens = 24;
  return options;
}

// Reads `tokens` through `session` in slices of `slice` tokens, starting where it stands, until
// `segments` segments are read (or reading is done).
inline void ReadUntil(DocumentSession& session, std::span<const int32_t> tokens, int64_t slice,
                      int64_t segments) {
  while (!session.reading_done() && session.segments_read() < segments) {
    const int64_t at = session.document_tokens_consumed();
    const int64_t n = std::min<int64_t>(slice, static_cast<int64_t>(tokens.size()) - at);
    const bool end = at + n == static_cast<int64_t>(tokens.size());
    auto consumed = session.ReadStep(tokens.subspan(at, n), end);
    ASSERT_TRUE(consumed.ok()) << consumed.status();
  }
}

// Reads the rest and generates the answer token by token; the streamed text must be the answer.
inline DocumentJobResult FinishSession(DocumentSession& session, std::span<const int32_t> tokens,
                                       int64_t slice) {
  ReadUntil(session, tokens, slice, int64_t{1} << 40);
  EXPECT_TRUE(session.reading_done());
  const absl::Status begun = session.BeginAnswer();
  EXPECT_TRUE(begun.ok()) << begun;
  std::string streamed;
  while (begun.ok() && !session.answer_done()) {
    auto step = session.NextToken();
    EXPECT_TRUE(step.ok()) << step.status();
    if (!step.ok()) break;
    streamed += step->text;
  }
  EXPECT_EQ(streamed, session.result().answer);
  return session.result();
}

// The first half of a failover: a session whose archive is recorded reads `segments` segments,
// then `extra` more document tokens (less than a segment: they stay pending), then checkpoints;
// the checkpoint and the archive blocks put up to it are what a worker ships.
struct Interrupted {
  SessionCheckpoint checkpoint;
  std::vector<ArchivedBlock> blocks;
};

inline Interrupted InterruptAfter(LlamaModel& model, const Tokenizer& tokenizer,
                                  std::span<const int32_t> tokens, DocumentJobOptions options,
                                  BlockArchive* archive, kernels::ThreadPool* pool,
                                  int64_t segments, int64_t slice, int64_t extra = 0) {
  RecordingBlockArchive recording(archive);
  options.archive = &recording;
  Interrupted out;
  auto session = DocumentSession::Create(model, tokenizer, options, nullptr, pool,
                                         static_cast<int64_t>(tokens.size()));
  EXPECT_TRUE(session.ok()) << session.status();
  if (!session.ok()) return out;
  ReadUntil(**session, tokens, slice, segments);
  if (extra > 0) {
    const int64_t at = (*session)->document_tokens_consumed();
    auto consumed = (*session)->ReadStep(tokens.subspan(at, extra), false);
    EXPECT_TRUE(consumed.ok()) << consumed.status();
    EXPECT_EQ(consumed.value_or(0), extra);
    EXPECT_EQ((*session)->segments_read(), segments);
  }
  auto checkpoint = (*session)->Checkpoint();
  EXPECT_TRUE(checkpoint.ok()) << checkpoint.status();
  if (checkpoint.ok()) out.checkpoint = std::move(*checkpoint);
  out.blocks = recording.TakeRecorded();
  // What the dying worker reads after its checkpoint is lost with it.
  ReadUntil(**session, tokens, slice, segments + 1);
  return out;
}

// The second half: a new session on `archive` (into which the blocks were replayed) resumes from
// the checkpoint and finishes. Restore derives where reading resumes from the MemorySnapshot
// alone: it must be `expected_consumed` (the interrupted session's document_tokens_consumed).
inline DocumentJobResult ResumeAndFinish(LlamaModel& model, const Tokenizer& tokenizer,
                                         std::span<const int32_t> tokens,
                                         DocumentJobOptions options, BlockArchive* archive,
                                         kernels::ThreadPool* pool,
                                         const SessionCheckpoint& checkpoint,
                                         int64_t expected_consumed, int64_t slice) {
  options.archive = archive;
  auto session = DocumentSession::Create(model, tokenizer, options, nullptr, pool,
                                         static_cast<int64_t>(tokens.size()));
  EXPECT_TRUE(session.ok()) << session.status();
  if (!session.ok()) return {};
  const absl::Status restored = (*session)->Restore(checkpoint);
  EXPECT_TRUE(restored.ok()) << restored;
  EXPECT_EQ((*session)->document_tokens_consumed(), expected_consumed);
  return FinishSession(**session, tokens, slice);
}

}  // namespace longread::engine::testing
