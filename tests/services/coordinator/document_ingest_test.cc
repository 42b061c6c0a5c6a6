#include "services/coordinator/document_ingest.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "engine/job/document_job.h"

namespace longread::coordinator {
namespace {

namespace fs = std::filesystem;

class ServerPathTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "longread-paths-XXXXXX").string();
    dir_ = mkdtemp(tmpl.data());
    fs::create_directories(dir_ + "/root/sub");
    fs::create_directories(dir_ + "/other");
    std::ofstream(dir_ + "/root/sub/a.txt") << "a";
    std::ofstream(dir_ + "/other/b.txt") << "b";
    fs::create_symlink(dir_ + "/other", dir_ + "/root/link");
    fs::create_directories(dir_ + "/rootx");  // shares the root's prefix as a string
    std::ofstream(dir_ + "/rootx/c.txt") << "c";
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string dir_;
};

TEST_F(ServerPathTest, OnlyPathsWhoseRealPathIsUnderARootResolve) {
  const std::vector<std::string> roots = {dir_ + "/root"};
  EXPECT_TRUE(ResolveServerPath(dir_ + "/root/sub/a.txt", roots).ok());
  EXPECT_TRUE(ResolveServerPath("sub/a.txt", roots).ok());
  EXPECT_TRUE(
      absl::IsPermissionDenied(ResolveServerPath(dir_ + "/root/link/b.txt", roots).status()));
  EXPECT_TRUE(absl::IsPermissionDenied(ResolveServerPath(dir_ + "/rootx/c.txt", roots).status()));
  EXPECT_TRUE(absl::IsPermissionDenied(ResolveServerPath("sub/../sub/a.txt", roots).status()));
  EXPECT_TRUE(absl::IsPermissionDenied(ResolveServerPath(dir_ + "/root/sub/a.txt", {}).status()));
  EXPECT_TRUE(absl::IsNotFound(ResolveServerPath(dir_ + "/root/missing", roots).status()));
}

TEST_F(ServerPathTest, TarMembersAreValidatedBeforeAnyContentIsRead) {
  const std::string tar = dir_ + "/t.tar";
  ASSERT_EQ(std::system(("tar -C " + dir_ + "/root -cf " + tar + " sub").c_str()), 0);
  std::string text;
  auto sink = [&](std::string_view b) {
    text.append(b);
    return absl::OkStatus();
  };
  auto stats = StreamTar(tar, sink);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->files, 1);
  EXPECT_EQ(text, "=== sub/a.txt ===\na\n");
  // A member named with "..", the checksum fixed up so that only the name is wrong.
  std::string bytes;
  {
    std::ifstream in(tar, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  for (size_t header = 0; header + 512 <= bytes.size(); header += 512) {
    if (bytes.compare(header + 257, 5, "ustar") != 0) continue;
    if (bytes.compare(header, 9, "sub/a.txt") != 0) continue;
    bytes.replace(header, 9, "../a.txtx");
    std::memset(bytes.data() + header + 148, ' ', 8);
    unsigned sum = 0;
    for (size_t i = 0; i < 512; ++i) sum += static_cast<unsigned char>(bytes[header + i]);
    std::snprintf(bytes.data() + header + 148, 8, "%06o", sum);
  }
  std::ofstream(tar, std::ios::binary | std::ios::trunc) << bytes;
  text.clear();
  auto refused = StreamTar(tar, sink);
  EXPECT_TRUE(absl::IsInvalidArgument(refused.status())) << refused.status();
  EXPECT_TRUE(text.empty());
  // Truncated in the middle of a member.
  std::ofstream(tar, std::ios::binary | std::ios::trunc) << bytes.substr(0, 700);
  EXPECT_TRUE(absl::IsInvalidArgument(StreamTar(tar, sink).status()));
}

}  // namespace
}  // namespace longread::coordinator
