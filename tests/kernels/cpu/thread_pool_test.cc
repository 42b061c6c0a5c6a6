#include "kernels/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
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
