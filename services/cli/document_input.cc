#include "services/cli/document_input.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace longread::services {
namespace {

absl::Status TooLarge(const std::string& size, int64_t max_bytes) {
  return absl::ResourceExhaustedError(
      absl::StrCat(size, " bytes, more than the limit of ", max_bytes, " (--max-bytes)"));
}

// Reads `fd` to its end, but never more than max_bytes + 1 bytes: a stream has no size to check
// up front, and /dev/zero has no end.
absl::StatusOr<std::string> ReadStream(int fd, int64_t max_bytes, int64_t size_hint = 0) {
  std::string text;
  text.reserve(static_cast<size_t>(size_hint));
  char buffer[1 << 16];
  while (true) {
    const int64_t want =
        std::min<int64_t>(sizeof(buffer), max_bytes + 1 - static_cast<int64_t>(text.size()));
    if (want <= 0) return TooLarge(absl::StrCat("more than ", max_bytes), max_bytes);
    const ssize_t got = ::read(fd, buffer, static_cast<size_t>(want));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return absl::UnavailableError(absl::StrCat("read failed: ", std::strerror(errno)));
    if (got == 0) return text;
    text.append(buffer, static_cast<size_t>(got));
  }
}

absl::StatusOr<std::string> ReadOpened(int fd, int64_t max_bytes) {
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    return absl::UnavailableError(absl::StrCat("stat failed: ", std::strerror(errno)));
  }
  if (S_ISDIR(st.st_mode)) return absl::FailedPreconditionError("is a directory");
  if (S_ISFIFO(st.st_mode) || S_ISCHR(st.st_mode) || S_ISSOCK(st.st_mode)) {
    return ReadStream(fd, max_bytes);
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError("is not a regular file, a pipe or a character device");
  }
  if (st.st_size > max_bytes) return TooLarge(absl::StrCat(st.st_size), max_bytes);
  // A file that grows while it is read is read up to the limit, like a stream.
  return ReadStream(fd, max_bytes, st.st_size);
}

}  // namespace

absl::StatusOr<std::string> ReadDocumentInput(const std::string& path, int64_t max_bytes) {
  if (path == "-") return ReadOpened(STDIN_FILENO, max_bytes);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int error = errno;
    const std::string message = std::strerror(error);
    if (error == ENOENT) return absl::NotFoundError(message);
    if (error == EACCES) return absl::PermissionDeniedError(message);
    return absl::UnavailableError(message);
  }
  auto text = ReadOpened(fd, max_bytes);
  ::close(fd);
  return text;
}

}  // namespace longread::services
