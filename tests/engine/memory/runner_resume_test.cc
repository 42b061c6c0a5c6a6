// A document resumed from a snapshot after any segment reads and answers bit-identically to an
// uninterrupted run (CPU, greedy).
#include <cstring>
#include <vector>

#include "engine/memory/runner.h"
#include "gtest/gtest.h"
#include "tests/engine/test_model.h"

namespace longread::engine {
namespace {

struct Outcome {
  std::vector<int32_t> answer;
  MemorySnapshot final_state;
};

RunnerConfig SmallMemory() {
  RunnerConfig config;
  config.memory.sinks = 4;
  config.memory.top_k = 24;
  config.memory.window = 16;
  config.segment_tokens = 32;
  return config;
}

Outcome Finish(RecurrentRunner& runner, std::span<const int32_t> rest) {
  Outcome o;
  EXPECT_TRUE(runner.Feed(rest).ok());
  EXPECT_TRUE(runner.Flush().ok());
  o.final_state = runner.Snapshot();
  const std::vector<int32_t> prompt = {1, 9690, 198};
  GenerateOptions options;
  options.max_new_tokens = 6;
  auto answer = runner.Generate(prompt, options);
  EXPECT_TRUE(answer.ok());
  if (answer.ok()) o.answer = *answer;
  return o;
}

void ExpectBitIdentical(const MemorySnapshot& a, const MemorySnapshot& b) {
  ASSERT_EQ(a.heads.size(), b.heads.size());
  EXPECT_EQ(a.token_offset, b.token_offset);
  EXPECT_EQ(a.segment_index, b.segment_index);
  for (size_t h = 0; h < a.heads.size(); ++h) {
    EXPECT_EQ(a.heads[h].positions, b.heads[h].positions);
    ASSERT_EQ(a.heads[h].keys.size(), b.heads[h].keys.size());
    EXPECT_EQ(0, std::memcmp(a.heads[h].keys.data(), b.heads[h].keys.data(),
                             a.heads[h].keys.size() * sizeof(float)));
    EXPECT_EQ(0, std::memcmp(a.heads[h].values.data(), b.heads[h].values.data(),
                             a.heads[h].values.size() * sizeof(float)));
  }
}

TEST(RunnerResumeTest, ResumeAfterEverySegmentIsBitIdentical) {
  REQUIRE_DEFAULT_MODEL(model);
  kernels::ThreadPool pool(2);
  const std::vector<int32_t> tokens =
      testing::RandomTokens(150, 42);  // 4 full segments and a partial one
  RecurrentRunner whole(model, SmallMemory(), nullptr, &pool);
  const Outcome expected = Finish(whole, tokens);
  ASSERT_EQ(expected.answer.size(), 6u);

  const size_t L = SmallMemory().segment_tokens;
  for (size_t s = 1; s * L <= tokens.size(); ++s) {
    RecurrentRunner first(model, SmallMemory(), nullptr, &pool);
    // Feed a little past the boundary: the snapshot must carry the pending tokens too.
    const size_t fed = std::min(tokens.size(), s * L + 5);
    ASSERT_TRUE(first.Feed(std::span(tokens).first(fed)).ok());
    const MemorySnapshot snapshot = first.Snapshot();
    EXPECT_EQ(snapshot.segment_index, static_cast<int64_t>(s));

    RecurrentRunner resumed(model, SmallMemory(), nullptr, &pool);
    ASSERT_TRUE(resumed.Restore(snapshot).ok());
    const Outcome got = Finish(resumed, std::span(tokens).subspan(fed));
    EXPECT_EQ(got.answer, expected.answer) << "resumed after segment " << s;
    ExpectBitIdentical(got.final_state, expected.final_state);
  }
}

TEST(RunnerResumeTest, RefusesSnapshotOfAnotherConfigOrModel) {
  REQUIRE_DEFAULT_MODEL(model);
  kernels::ThreadPool pool(2);
  RecurrentRunner runner(model, SmallMemory(), nullptr, &pool);
  ASSERT_TRUE(runner.Feed(testing::RandomTokens(40, 42)).ok());
  MemorySnapshot snapshot = runner.Snapshot();

  RunnerConfig other = SmallMemory();
  other.memory.top_k = 25;
  RecurrentRunner different(model, other, nullptr, &pool);
  EXPECT_EQ(different.Restore(snapshot).code(), absl::StatusCode::kFailedPrecondition);

  // A task-aware run resumes only with the same task.
  RecurrentRunner with_task(model, SmallMemory(), nullptr, &pool);
  ASSERT_TRUE(with_task.SetTask(std::vector<int32_t>{5, 6, 7}).ok());
  ASSERT_TRUE(with_task.Feed(testing::RandomTokens(40, 42)).ok());
  const MemorySnapshot task_snapshot = with_task.Snapshot();
  RecurrentRunner same_task(model, SmallMemory(), nullptr, &pool);
  ASSERT_TRUE(same_task.SetTask(std::vector<int32_t>{5, 6, 7}).ok());
  EXPECT_TRUE(same_task.Restore(task_snapshot).ok());
  RecurrentRunner no_task(model, SmallMemory(), nullptr, &pool);
  EXPECT_EQ(no_task.Restore(task_snapshot).code(), absl::StatusCode::kFailedPrecondition);

  snapshot.model_fingerprint = "another-model";
  RecurrentRunner same(model, SmallMemory(), nullptr, &pool);
  EXPECT_EQ(same.Restore(snapshot).code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace longread::engine
