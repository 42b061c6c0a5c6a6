#include "cache/job_state_store.h"

#include <rocksdb/db.h>

#include <memory>

#include "gtest/gtest.h"
#include "tests/cache/test_util.h"

namespace longread::cache {
namespace {

class JobStateStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<CacheDb>> db = CacheDb::Open(dir_.db());
    ASSERT_TRUE(db.ok()) << db.status();
    db_ = *std::move(db);
    jobs_ = std::make_unique<JobStateStore>(db_.get());
  }
  TempDir dir_;
  std::unique_ptr<CacheDb> db_;
  std::unique_ptr<JobStateStore> jobs_;
};

TEST_F(JobStateStoreTest, PutGetListDelete) {
  ASSERT_TRUE(jobs_->Put("j1", "status", "running").ok());
  ASSERT_TRUE(jobs_->Put("j1", "doc/7", std::string("\0bin", 4)).ok());
  ASSERT_TRUE(jobs_->Put("j10", "status", "done").ok());
  EXPECT_EQ(*jobs_->Get("j1", "status"), "running");
  EXPECT_EQ(*jobs_->Get("j1", "doc/7"), std::string("\0bin", 4));
  EXPECT_EQ(jobs_->Get("j1", "absent").status().code(), absl::StatusCode::kNotFound);

  auto list = jobs_->List("j1");
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 2u);  // j10's keys are not j1's
  EXPECT_EQ((*list)[0].first, "doc/7");
  EXPECT_EQ((*list)[1].second, "running");
  EXPECT_EQ(*jobs_->ListJobs(), (std::vector<std::string>{"j1", "j10"}));

  ASSERT_TRUE(jobs_->Delete("j1", "doc/7").ok());
  EXPECT_EQ(jobs_->List("j1")->size(), 1u);
  ASSERT_TRUE(jobs_->DeleteJob("j1").ok());
  EXPECT_TRUE(jobs_->List("j1")->empty());
  EXPECT_EQ(*jobs_->Get("j10", "status"), "done");
}

TEST_F(JobStateStoreTest, DamagedValueIsDataLoss) {
  ASSERT_TRUE(jobs_->Put("j1", "status", "running").ok());
  std::string raw;
  ASSERT_TRUE(db_->db()->Get({}, db_->job_state(), "job/j1/status", &raw).ok());
  raw.back() ^= 1;
  ASSERT_TRUE(db_->db()->Put({}, db_->job_state(), "job/j1/status", raw).ok());
  EXPECT_EQ(jobs_->Get("j1", "status").status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(jobs_->List("j1").status().code(), absl::StatusCode::kDataLoss);
}

TEST_F(JobStateStoreTest, BadJobIdsAreRejected) {
  EXPECT_EQ(jobs_->Put("", "k", "v").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(jobs_->Put("a/b", "k", "v").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(jobs_->Put("a", "", "v").code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace longread::cache
