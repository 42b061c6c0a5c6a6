// Documents read on their own threads through one SegmentBatcher share passes and each ends with
// the memory it has when read alone; a document with a token outside the vocabulary fails alone.
// CPU backend (its ReadSegments reads a pass's documents one after another), so "the same" is
// exact: slots, keys and values of every head.
#include "engine/memory/segment_batcher.h"

#include <algorithm>
#include <atomic>
#include <latch>
#include <memory>
#include <thread>
#include <vector>

#include "engine/memory/cpu_backend.h"
#include "engine/memory/runner.h"
#include "engine/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "tests/engine/test_model.h"

namespace longread::engine {
namespace {

RunnerConfig SmallConfig() {
  RunnerConfig config;
  config.memory.top_k = 32;
  config.memory.window = 32;
  config.memory.block_tokens = 16;
  config.segment_tokens = 32;
  return config;
}

std::vector<int32_t> Text(const LlamaModel& model) {
  auto tokenizer = Tokenizer::Create(model.file().tokenizer());
  EXPECT_TRUE(tokenizer.ok());
  return (*tokenizer)
      ->Encode(
          "The harbor master counted the boats at dawn and wrote the number in the log. Then she "
          "walked to the lighthouse, where the keeper had left a note about the storm that was "
          "coming from the west. The fishermen pulled their nets early, tied the boats twice, and "
          "carried the catch up the hill before the first rain. By evening the wind had turned, "
          "the lamps were lit, and the log said eleven boats, all of them home.",
          false);
}

TEST(SegmentBatcherTest, DocumentsOnThreadsSharePassesAndReadAsAlone) {
  REQUIRE_DEFAULT_MODEL(model);
  std::vector<int32_t> text = Text(*model);
  const std::vector<int32_t> once = text;
  for (int i = 0; i < 2; ++i) text.insert(text.end(), once.begin(), once.end());
  kernels::ThreadPool pool(1);
  CpuReadingBackend backend(model);
  constexpr int kDocuments = 4;
  // Lengths 2.3 to ~4 segments, each from its own place in the text.
  std::vector<std::vector<int32_t>> docs(kDocuments);
  for (int i = 0; i < kDocuments; ++i) {
    const size_t n = 75 + 17 * i, at = (13 * i) % (text.size() - n);
    ASSERT_LT(at + n, text.size());
    docs[i].assign(text.begin() + at, text.begin() + at + n);
  }
  docs[kDocuments - 1].back() = model->config().vocab_size;  // outside the vocabulary

  std::atomic<int64_t> largest_pass = 0;
  SegmentBatcher batcher(&backend, 16, [&](std::span<const SegmentRead> reads) {
    int64_t seen = largest_pass.load();
    while (static_cast<int64_t>(reads.size()) > seen &&
           !largest_pass.compare_exchange_weak(seen, static_cast<int64_t>(reads.size()))) {
    }
    return backend.ReadSegments(reads);
  });
  std::vector<std::unique_ptr<RecurrentRunner>> batched(kDocuments);
  for (auto& r : batched) {
    auto created = RecurrentRunner::Create(&backend, SmallConfig(), nullptr, &pool);
    ASSERT_TRUE(created.ok());
    r = std::move(*created);
    r->set_batcher(&batcher);
  }
  std::vector<absl::Status> status(kDocuments);
  std::latch start(kDocuments);
  std::vector<std::thread> threads;
  for (int i = 0; i < kDocuments; ++i) {
    threads.emplace_back([&, i] {
      start.arrive_and_wait();
      // Fed in uneven pieces, as a stream arrives; Flush reads the last, short segment.
      const std::span<const int32_t> doc(docs[i]);
      for (size_t at = 0; at < doc.size() && status[i].ok(); at += 21) {
        status[i] = batched[i]->Feed(doc.subspan(at, std::min<size_t>(21, doc.size() - at)));
      }
      if (status[i].ok()) status[i] = batched[i]->Flush();
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_GT(largest_pass.load(), 1) << "no pass read two documents";
  EXPECT_LT(batcher.passes(), batcher.segments());
  EXPECT_EQ(status[kDocuments - 1].code(), absl::StatusCode::kInvalidArgument)
      << status[kDocuments - 1];

  for (int i = 0; i + 1 < kDocuments; ++i) {
    ASSERT_TRUE(status[i].ok()) << "document " << i << ": " << status[i];
    RecurrentRunner alone(model, SmallConfig(), nullptr, &pool);
    ASSERT_TRUE(alone.Feed(docs[i]).ok());
    ASSERT_TRUE(alone.Flush().ok());
    ASSERT_EQ(batched[i]->tokens_read(), static_cast<int64_t>(docs[i].size()));
    const MemorySnapshot want = alone.Snapshot(), got = batched[i]->Snapshot();
    ASSERT_EQ(want.heads.size(), got.heads.size());
    for (size_t h = 0; h < want.heads.size(); ++h) {
      EXPECT_EQ(want.heads[h].positions, got.heads[h].positions) << "document " << i;
      EXPECT_EQ(want.heads[h].keys, got.heads[h].keys) << "document " << i;
      EXPECT_EQ(want.heads[h].values, got.heads[h].values) << "document " << i;
    }
  }
}

}  // namespace
}  // namespace longread::engine
