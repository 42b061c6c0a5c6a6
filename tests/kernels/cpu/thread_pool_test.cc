#include "kernels/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <thread>
#include <vector>

namespace longread::kernels {
namespace {

TEST(ThreadPoolTest, CoversRangeExactlyOnceWithDeterministicChunks) {
  for (int threads : {1, 2, 3, 5}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.size(), threads);
    for (int64_t n : {1, 2, 3, 4, 7, 100, 1001}) {
      std::vector<std::atomic<int>> hits(n);
      std::vector<std::pair<int64_t, int64_t>> chunks(threads, {-1, -1});
      std::atomic<int> calls{0};
      pool.ParallelFor(n, [&](int64_t begin, int64_t end) {
        ASSERT_LT(begin, end);
        for (int64_t i = begin; i < end; ++i) hits[i].fetch_add(1);
        for (int c = 0; c < threads; ++c) {
          if (begin == n * c / threads) chunks[c] = {begin, end};
        }
        calls.fetch_add(1);
      });
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << threads << " " << n;
      int expected_calls = 0;
      for (int c = 0; c < threads; ++c) {
        const int64_t begin = n * c / threads, end = n * (c + 1) / threads;
        if (begin < end) {
          ++expected_calls;
          EXPECT_EQ(chunks[c], std::make_pair(begin, end));
        }
      }
      EXPECT_EQ(calls.load(), n == 1 ? 1 : expected_calls);
    }
  }
}

TEST(ThreadPoolTest, ManyBackToBackCallsAndZeroLength) {
  ThreadPool pool(2);
  std::atomic<int64_t> total{0};
  for (int round = 0; round < 2000; ++round) {
    pool.ParallelFor(round % 7, [&](int64_t begin, int64_t end) { total.fetch_add(end - begin); });
  }
  int64_t expected = 0;
  for (int round = 0; round < 2000; ++round) expected += round % 7;
  EXPECT_EQ(total.load(), expected);
}

// Chunks are claimed by whoever runs: a chunk that blocks its thread (as a descheduled worker
// would) does not stop the other chunks, and every chunk still runs exactly once with the
// documented split.
TEST(ThreadPoolTest, ChunksAreClaimedByWhoeverRuns) {
  for (int threads : {2, 3, 4}) {
    ThreadPool pool(threads);
    for (int round = 0; round < 200; ++round) {
      const int64_t n = 7 + round % 5;
      std::vector<std::atomic<int>> hits(n);
      std::atomic<int> finished{0};
      const std::thread::id caller = std::this_thread::get_id();
      pool.ParallelFor(n, [&](int64_t begin, int64_t end) {
        if (std::this_thread::get_id() != caller && round % 3 == 0) {
          // A slow worker: the other chunks must be taken by the caller or other workers.
          std::this_thread::sleep_for(std::chrono::microseconds(200));
        }
        for (int64_t i = begin; i < end; ++i) hits[i].fetch_add(1);
        finished.fetch_add(1);
      });
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << threads << " " << round;
      ASSERT_EQ(finished.load(), threads);
    }
  }
}

// A chunk that waits for another chunk: two threads must run at once, so workers do take
// chunks (the pool is not just the caller running everything).
TEST(ThreadPoolTest, WorkersRunChunksConcurrently) {
  ThreadPool pool(2);
  for (int round = 0; round < 50; ++round) {
    std::atomic<bool> second_started{false};
    pool.ParallelFor(2, [&](int64_t begin, int64_t) {
      if (begin == 1) {
        second_started.store(true);
      } else {
        while (!second_started.load()) std::this_thread::yield();
      }
    });
  }
  EXPECT_GT(pool.chunks_run_by_workers(), 0);
}

// Several pools driven at once from several threads: more threads than cores, as on a shared
// machine; every call must still complete and cover its range once.
TEST(ThreadPoolTest, OversubscribedPoolsComplete) {
  std::vector<std::thread> drivers;
  std::atomic<int64_t> total{0};
  for (int d = 0; d < 3; ++d) {
    drivers.emplace_back([&total] {
      ThreadPool pool(3);
      for (int round = 0; round < 3000; ++round) {
        pool.ParallelFor(1 + round % 9,
                         [&](int64_t begin, int64_t end) { total.fetch_add(end - begin); });
      }
    });
  }
  for (auto& t : drivers) t.join();
  int64_t expected = 0;
  for (int round = 0; round < 3000; ++round) expected += 1 + round % 9;
  EXPECT_EQ(total.load(), 3 * expected);
}

TEST(ThreadPoolTest, NonPositiveSizeMeansOneThread) {
  ThreadPool pool(0);
  EXPECT_EQ(pool.size(), 1);
  int64_t seen = 0;
  pool.ParallelFor(10, [&](int64_t begin, int64_t end) { seen += end - begin; });
  EXPECT_EQ(seen, 10);
}

TEST(ThreadPoolTest, DefaultThreadCountHonoursEnv) {
  setenv("LONGREAD_THREADS", "3", 1);
  EXPECT_EQ(DefaultThreadCount(), 3);
  setenv("LONGREAD_THREADS", "zero", 1);
  EXPECT_GE(DefaultThreadCount(), 1);
  unsetenv("LONGREAD_THREADS");
  EXPECT_GE(DefaultThreadCount(), 1);
}

}  // namespace
}  // namespace longread::kernels
