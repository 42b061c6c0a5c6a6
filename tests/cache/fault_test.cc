// Crash and corruption tests (label `fault`). A child process (cache_fault_writer) writes
// snapshots in a loop and is SIGKILLed at random moments; after each kill the store must open and
// hold a complete snapshot N that equals the recomputed snapshot N, with N never going back.
// Damaged SST/WAL files must end in a clear error and a restart, never a crash or a wrong
// snapshot.
#include <fcntl.h>
#include <poll.h>
#include <rocksdb/db.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cache/snapshot_store.h"
#include "gtest/gtest.h"
#include "tests/cache/fault_shape.h"
#include "tests/cache/test_util.h"

namespace longread::cache {
namespace {

namespace fs = std::filesystem;
using engine::MemorySnapshot;

ExpectedIdentity FaultIdentity() {
  return {FaultShape().model_fingerprint, FaultShape().config_hash};
}

MemorySnapshot Expected(int64_t segment) {
  SyntheticDocument doc(FaultShape());
  doc.AdvanceTo(segment);
  return doc.Snapshot();
}

void ExpectBitIdentical(const MemorySnapshot& got, int64_t segment) {
  const MemorySnapshot want = Expected(segment);
  EXPECT_EQ(got.token_offset, want.token_offset);
  EXPECT_EQ(got.score_origin, want.score_origin);
  EXPECT_EQ(got.pending_tokens, want.pending_tokens);
  EXPECT_EQ(got.pending_utf8, want.pending_utf8);
  ASSERT_EQ(got.heads.size(), want.heads.size());
  for (size_t h = 0; h < got.heads.size(); ++h) {
    EXPECT_EQ(got.heads[h].positions, want.heads[h].positions) << "segment " << segment;
    EXPECT_EQ(got.heads[h].keys, want.heads[h].keys) << "segment " << segment;
    EXPECT_EQ(got.heads[h].values, want.heads[h].values) << "segment " << segment;
    EXPECT_EQ(got.heads[h].scores, want.heads[h].scores) << "segment " << segment;
  }
}

struct Child {
  pid_t pid = -1;
  int ready_fd = -1;  // read end of the child's stdout
};

Child Spawn(const std::vector<std::string>& args) {
  int fds[2];
  if (pipe(fds) != 0) return {};
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], STDOUT_FILENO);
    close(fds[0]);
    close(fds[1]);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(fds[1]);
  return {pid, fds[0]};
}

// Waits for the child's "database open" byte; false if it exited instead.
bool WaitReady(const Child& child) {
  pollfd p{child.ready_fd, POLLIN, 0};
  if (poll(&p, 1, 30000) != 1) return false;
  char c;
  return read(child.ready_fd, &c, 1) == 1;
}

// Returns the child's wait status.
int Reap(Child& child) {
  int status = 0;
  waitpid(child.pid, &status, 0);
  close(child.ready_fd);
  return status;
}

std::string FaultWriter() { return CACHE_FAULT_WRITER; }

// A SIGKILL loses what the process had not handed to the kernel, on any file system; tmpfs only
// takes the disk's fsync latency (RocksDB open/flush) out of the loop, halving the test's time.
std::string CrashTestBase() {
  if (std::getenv("TEST_TMPDIR") == nullptr && fs::is_directory("/dev/shm")) return "/dev/shm";
  return "";
}

TEST(SnapshotCrash, SigkillAtRandomMomentsNeverLeavesAMixedSnapshot) {
  TempDir dir(CrashTestBase());
  std::mt19937 rng(20261125);  // fixed: the same kill schedule every run
  std::uniform_int_distribution<int> sleep_us(5000, 100000);
  constexpr int kKills = 220;
  int64_t last = 0;
  int advanced = 0;
  for (int i = 0; i < kKills; ++i) {
    // Most kills land while snapshots are being written; one in four during open/recovery.
    const bool kill_during_open = i % 4 == 3;
    Child child = Spawn({FaultWriter(), dir.db(), i % 2 == 0 ? "store" : "writer"});
    ASSERT_GT(child.pid, 0);
    if (!kill_during_open) {
      const bool ready = WaitReady(child);
      if (!ready) {
        const int status = Reap(child);
        FAIL() << "iteration " << i << ": child exited before opening the store, status " << status;
      }
    }
    usleep(sleep_us(rng));
    kill(child.pid, SIGKILL);
    const int status = Reap(child);
    ASSERT_TRUE(WIFSIGNALED(status))
        << "iteration " << i << ": child ended by itself, exit code " << WEXITSTATUS(status);

    absl::StatusOr<std::unique_ptr<CacheDb>> db = CacheDb::Open(dir.db(), FaultDbOptions());
    ASSERT_TRUE(db.ok()) << "iteration " << i << ": " << db.status();
    SnapshotStore store(db->get());
    absl::StatusOr<MemorySnapshot> latest = store.GetLatest(kFaultDocId, FaultIdentity());
    if (absl::IsNotFound(latest.status())) {
      ASSERT_EQ(last, 0) << "iteration " << i << ": the snapshot disappeared";
      continue;
    }
    ASSERT_TRUE(latest.ok()) << "iteration " << i << ": " << latest.status();
    ASSERT_GE(latest->segment_index, last) << "iteration " << i << ": went back";
    ExpectBitIdentical(*latest, latest->segment_index);
    if (::testing::Test::HasFailure()) FAIL() << "iteration " << i;
    advanced += latest->segment_index > last;
    if (std::getenv("LONGREAD_FAULT_VERBOSE") != nullptr) {
      std::printf("iteration %d (%s): latest segment %lld\n", i,
                  kill_during_open ? "open" : "write",
                  static_cast<long long>(latest->segment_index));
    }
    last = latest->segment_index;
  }
  std::printf("%d kills, %d advanced the latest snapshot, final segment %lld\n", kKills, advanced,
              static_cast<long long>(last));
  EXPECT_GT(last, 0);  // the harness wrote something at all; otherwise it tested nothing
}

// Writes `count` snapshots in a child that exits without closing the database.
void WriteInChild(const std::string& db, int count) {
  Child child = Spawn({FaultWriter(), db, "store", std::to_string(count)});
  ASSERT_GT(child.pid, 0);
  const int status = Reap(child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
}

std::vector<fs::path> FilesEndingIn(const std::string& dir, std::string_view suffix) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().string().ends_with(suffix)) out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

void FlipByte(const fs::path& file, uint64_t offset) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.read(&c, 1);
  c ^= 0x5a;
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
}

// Puts `n` snapshots and flushes them into an SST file, then closes.
void WriteAndFlush(const std::string& path, int n) {
  auto db = CacheDb::Open(path);
  ASSERT_TRUE(db.ok()) << db.status();
  SnapshotStore store(db->get());
  SyntheticDocument doc(FaultShape());
  for (int seg = 1; seg <= n; ++seg) {
    doc.AdvanceTo(seg);
    ASSERT_TRUE(store.Put(kFaultDocId, doc.Snapshot()).ok());
  }
  ASSERT_TRUE((*db)->db()->Flush({}, (*db)->snapshots()).ok());
}

TEST(SnapshotCorruption, FlippedBytesInSstOrBlobFilesAreDataLossAndARestart) {
  for (std::string_view suffix : {".sst", ".blob"}) {
    SCOPED_TRACE(suffix);
    TempDir dir;
    WriteAndFlush(dir.db(), 3);
    std::vector<fs::path> files = FilesEndingIn(dir.db(), suffix);
    ASSERT_FALSE(files.empty());
    for (const fs::path& file : files) FlipByte(file, fs::file_size(file) / 3);

    auto db = CacheDb::Open(dir.db());
    ASSERT_TRUE(db.ok()) << db.status();
    SnapshotStore store(db->get());
    if (!(*db)->moved_aside_to().empty()) {
      // Open itself saw the damage: the database was set aside and this one is empty.
      EXPECT_EQ(store.GetLatest(kFaultDocId, FaultIdentity()).status().code(),
                absl::StatusCode::kNotFound);
      continue;
    }
    ResumePoint resume = GetLatestOrRestart(store, kFaultDocId, FaultIdentity());
    EXPECT_FALSE(resume.snapshot.has_value());
    EXPECT_EQ(resume.refused.code(), absl::StatusCode::kDataLoss) << resume.refused;
    std::printf("%s flipped, refused: %s\n", std::string(suffix).c_str(),
                std::string(resume.refused.message()).c_str());
    // The document was deleted; it starts over and reads back.
    ASSERT_TRUE(store.Put(kFaultDocId, Expected(1)).ok());
    auto latest = store.GetLatest(kFaultDocId, FaultIdentity());
    ASSERT_TRUE(latest.ok()) << latest.status();
    ExpectBitIdentical(*latest, 1);
  }
}

TEST(SnapshotCorruption, TruncatedSstOrBlobFileIsMovedAsideOrRefused) {
  for (std::string_view suffix : {".sst", ".blob"}) {
    SCOPED_TRACE(suffix);
    TempDir dir;
    WriteAndFlush(dir.db(), 3);
    std::vector<fs::path> files = FilesEndingIn(dir.db(), suffix);
    ASSERT_FALSE(files.empty());
    for (const fs::path& file : files) fs::resize_file(file, fs::file_size(file) / 2);

    // Without permission to move it aside, a failed open is a clear DataLoss.
    {
      auto strict = CacheDb::Open(dir.db(), {.move_aside_if_corrupt = false});
      if (!strict.ok()) {
        EXPECT_EQ(strict.status().code(), absl::StatusCode::kDataLoss) << strict.status();
        std::printf("%s truncated, open refused: %s\n", std::string(suffix).c_str(),
                    std::string(strict.status().message()).c_str());
      }
    }
    auto db = CacheDb::Open(dir.db());
    ASSERT_TRUE(db.ok()) << db.status();
    SnapshotStore store(db->get());
    ResumePoint resume = GetLatestOrRestart(store, kFaultDocId, FaultIdentity());
    EXPECT_FALSE(resume.snapshot.has_value());
    if ((*db)->moved_aside_to().empty()) {
      EXPECT_FALSE(resume.refused.ok());
      std::printf("%s truncated, read refused: %s\n", std::string(suffix).c_str(),
                  std::string(resume.refused.message()).c_str());
    } else {
      EXPECT_TRUE(resume.refused.ok());  // a fresh database: nothing stored, a clean restart
      EXPECT_TRUE(fs::exists((*db)->moved_aside_to()));
    }
    // The store keeps working: the document starts over.
    ASSERT_TRUE(store.Put(kFaultDocId, Expected(1)).ok());
    auto latest = store.GetLatest(kFaultDocId, FaultIdentity());
    ASSERT_TRUE(latest.ok()) << latest.status();
    ExpectBitIdentical(*latest, 1);
  }
}

TEST(SnapshotCorruption, TruncatedWalRecoversToAnEarlierCompleteSnapshot) {
  TempDir dir;
  WriteInChild(dir.db(), 6);  // six snapshots, only in the WAL
  std::vector<fs::path> logs = FilesEndingIn(dir.db(), ".log");
  ASSERT_FALSE(logs.empty());
  const fs::path wal = logs.back();
  const uint64_t full = fs::file_size(wal);
  ASSERT_GT(full, 1000u);
  // Cut the WAL at several points, each on a fresh copy, from the tail towards the start.
  for (double keep : {0.9, 0.6, 0.3, 0.05}) {
    TempDir copy;
    fs::copy(dir.db(), copy.db());
    const fs::path copied_wal = fs::path(copy.db()) / wal.filename();
    fs::resize_file(copied_wal, static_cast<uint64_t>(full * keep));
    auto db = CacheDb::Open(copy.db(), {.move_aside_if_corrupt = false});
    ASSERT_TRUE(db.ok()) << "keep " << keep << ": " << db.status();
    SnapshotStore store(db->get());
    absl::StatusOr<MemorySnapshot> latest = store.GetLatest(kFaultDocId, FaultIdentity());
    if (absl::IsNotFound(latest.status())) continue;  // cut before the first snapshot
    ASSERT_TRUE(latest.ok()) << "keep " << keep << ": " << latest.status();
    std::printf("WAL cut to %.0f%%: recovered segment %lld\n", keep * 100,
                static_cast<long long>(latest->segment_index));
    EXPECT_LT(latest->segment_index, 6) << "keep " << keep;
    ExpectBitIdentical(*latest, latest->segment_index);
  }
}

TEST(SnapshotCorruption, FlippedByteInTheWalNeverYieldsAWrongSnapshot) {
  TempDir dir;
  WriteInChild(dir.db(), 6);
  std::vector<fs::path> logs = FilesEndingIn(dir.db(), ".log");
  ASSERT_FALSE(logs.empty());
  const uint64_t size = fs::file_size(logs.back());
  for (double at : {0.2, 0.5, 0.8}) {
    TempDir copy;
    fs::copy(dir.db(), copy.db());
    FlipByte(fs::path(copy.db()) / logs.back().filename(), static_cast<uint64_t>(size * at));
    auto db = CacheDb::Open(copy.db());
    ASSERT_TRUE(db.ok()) << "flip at " << at << ": " << db.status();
    SnapshotStore store(db->get());
    ResumePoint resume = GetLatestOrRestart(store, kFaultDocId, FaultIdentity());
    std::printf("WAL byte flipped at %.0f%%: %s\n", at * 100,
                resume.snapshot
                    ? absl::StrCat("recovered segment ", resume.snapshot->segment_index).c_str()
                    : std::string(resume.refused.message()).c_str());
    if (resume.snapshot) {
      EXPECT_LT(resume.snapshot->segment_index, 6);
      ExpectBitIdentical(*resume.snapshot, resume.snapshot->segment_index);
    }
  }
}

TEST(SnapshotCorruption, SnapshotOfAnotherModelOrConfigIsRefused) {
  TempDir dir;
  WriteAndFlush(dir.db(), 2);
  auto db = CacheDb::Open(dir.db());
  ASSERT_TRUE(db.ok());
  SnapshotStore store(db->get());
  ResumePoint other_model =
      GetLatestOrRestart(store, kFaultDocId, {"other", FaultShape().config_hash});
  EXPECT_FALSE(other_model.snapshot.has_value());
  EXPECT_EQ(other_model.refused.code(), absl::StatusCode::kFailedPrecondition);
  ResumePoint other_config =
      GetLatestOrRestart(store, kFaultDocId, {FaultShape().model_fingerprint, 1});
  EXPECT_FALSE(other_config.snapshot.has_value());
  EXPECT_EQ(other_config.refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(other_config.refused.message().find("0x1"), std::string::npos) << other_config.refused;
}

}  // namespace
}  // namespace longread::cache
