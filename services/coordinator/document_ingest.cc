#include "services/coordinator/document_ingest.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "engine/tokenizer/streaming_encoder.h"

namespace longread::coordinator {
namespace fs = std::filesystem;
namespace {

constexpr size_t kReadSlice = 1 << 20;

}  // namespace

DocumentIngest::DocumentIngest(const engine::Tokenizer& tokenizer, JobStore* store,
                               std::string job_id, int32_t doc_index, std::string name,
                               IngestLimits limits)
    : store_(store),
      job_id_(std::move(job_id)),
      doc_index_(doc_index),
      name_(std::move(name)),
      limits_(limits),
      encoder_(tokenizer) {}

absl::Status DocumentIngest::Append(std::string_view bytes) {
  if (bytes.empty()) return absl::OkStatus();
  bytes_ += static_cast<int64_t>(bytes.size());
  if (bytes_ > limits_.max_document_bytes) {
    return absl::OutOfRangeError(absl::StrCat("document \"", name_, "\" is over the limit of ",
                                              limits_.max_document_bytes, " bytes"));
  }
  if (limits_.job_bytes_left != nullptr) {
    *limits_.job_bytes_left -= static_cast<int64_t>(bytes.size());
    if (*limits_.job_bytes_left < 0) {
      return absl::OutOfRangeError("the job is over the limit of --max-job-bytes");
    }
  }
  if (!limits_.accept_binary && std::memchr(bytes.data(), 0, bytes.size()) != nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("document \"", name_, "\" is a binary file (NUL bytes)"));
  }
  encoder_.Push(bytes, &pending_);
  return Flush(false);
}

absl::Status DocumentIngest::Finish() {
  if (bytes_ == 0) {
    return absl::InvalidArgumentError(absl::StrCat("document \"", name_, "\" is empty"));
  }
  encoder_.Finish(&pending_);
  // More than 1% invalid UTF-8 is not text that was damaged a little but a binary file.
  if (!limits_.accept_binary && invalid_utf8() * 100 > bytes_) {
    return absl::InvalidArgumentError(absl::StrCat("document \"", name_, "\" is a binary file (",
                                                   invalid_utf8(), " invalid UTF-8 sequences in ",
                                                   bytes_, " bytes)"));
  }
  if (absl::Status s = Flush(true); !s.ok()) return s;
  if (tokens_written_ == 0) {
    return absl::InvalidArgumentError(absl::StrCat("document \"", name_, "\" has no tokens"));
  }
  return absl::OkStatus();
}

absl::Status DocumentIngest::Flush(bool final) {
  size_t at = 0;
  while (pending_.size() - at >= static_cast<size_t>(kTokensPerChunk) ||
         (final && at < pending_.size())) {
    const size_t n = std::min<size_t>(kTokensPerChunk, pending_.size() - at);
    if (absl::Status s = store_->PutTokenChunk(job_id_, doc_index_, chunks_written_++,
                                               std::span<const int32_t>(pending_.data() + at, n));
        !s.ok()) {
      return s;
    }
    tokens_written_ += static_cast<int64_t>(n);
    at += n;
  }
  pending_.erase(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(at));
  return absl::OkStatus();
}

absl::StatusOr<fs::path> ResolveServerPath(const std::string& path,
                                           const std::vector<std::string>& roots) {
  if (roots.empty()) {
    return absl::PermissionDeniedError(
        "server-side paths are off (the coordinator has no --path-root)");
  }
  fs::path p(path);
  for (const fs::path& part : p) {
    if (part == "..") return absl::PermissionDeniedError("a server path may not contain \"..\"");
  }
  if (p.is_relative()) p = fs::path(roots.front()) / p;
  std::error_code ec;
  const fs::path real = fs::canonical(p, ec);
  if (ec) return absl::NotFoundError(absl::StrCat("no such server path: ", path));
  for (const std::string& root : roots) {
    const fs::path real_root = fs::canonical(root, ec);
    if (ec) continue;
    auto [root_end, real_it] =
        std::mismatch(real_root.begin(), real_root.end(), real.begin(), real.end());
    if (root_end == real_root.end()) return real;
  }
  return absl::PermissionDeniedError(absl::StrCat("server path outside the allowed roots: ", path));
}

absl::Status StreamFile(const fs::path& file, const ByteSink& sink) {
  std::ifstream in(file, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", file.string()));
  std::string buf(kReadSlice, '\0');
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    const std::streamsize n = in.gcount();
    if (n <= 0) break;
    if (absl::Status s = sink(std::string_view(buf.data(), static_cast<size_t>(n))); !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

namespace {

bool LooksBinary(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  char buf[8192];
  in.read(buf, sizeof(buf));
  return std::memchr(buf, 0, static_cast<size_t>(in.gcount())) != nullptr;
}

absl::Status EmitHeader(const std::string& path, const ByteSink& sink) {
  return sink(absl::StrCat("=== ", path, " ===\n"));
}

}  // namespace

absl::StatusOr<RepositoryStats> StreamDirectory(const fs::path& dir, const fs::path& root,
                                                const ByteSink& sink) {
  RepositoryStats stats;
  std::vector<std::pair<std::string, fs::path>> files;
  std::error_code ec;
  const fs::path real_root = fs::canonical(root, ec);
  fs::recursive_directory_iterator it(dir, fs::directory_options::skip_permission_denied, ec);
  if (ec) return absl::NotFoundError(absl::StrCat("cannot list ", dir.string()));
  for (; it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (ec) return absl::UnavailableError(absl::StrCat("cannot list ", dir.string()));
    const fs::directory_entry& e = *it;
    if (e.is_directory() && !e.is_symlink() && e.path().filename() == ".git") {
      it.disable_recursion_pending();
      continue;
    }
    fs::path target = e.path();
    if (e.is_symlink()) {
      const fs::path real = fs::canonical(e.path(), ec);
      auto [root_end, real_it] =
          std::mismatch(real_root.begin(), real_root.end(), real.begin(), real.end());
      if (ec || root_end != real_root.end() || !fs::is_regular_file(real)) {
        ++stats.skipped_links;  // never followed out of the root (nor into directories)
        ec.clear();
        continue;
      }
      target = real;
    } else if (!e.is_regular_file()) {
      continue;
    }
    files.emplace_back(fs::relative(e.path(), dir).generic_string(), target);
  }
  std::sort(files.begin(), files.end());
  for (const auto& [rel, path] : files) {
    if (LooksBinary(path)) {
      ++stats.skipped_binary;
      continue;
    }
    if (absl::Status s = EmitHeader(rel, sink); !s.ok()) return s;
    bool ends_with_newline = true;
    absl::Status s = StreamFile(path, [&](std::string_view bytes) {
      ends_with_newline = bytes.back() == '\n';
      return sink(bytes);
    });
    if (!s.ok()) return s;
    if (!ends_with_newline) {
      if (absl::Status n = sink("\n"); !n.ok()) return n;
    }
    ++stats.files;
  }
  return stats;
}

namespace {

// Parses a NUL/space-terminated octal field strictly.
bool ParseOctal(const char* field, size_t width, uint64_t* out) {
  uint64_t v = 0;
  size_t i = 0;
  while (i < width && field[i] == ' ') ++i;
  size_t digits = 0;
  for (; i < width && field[i] >= '0' && field[i] <= '7'; ++i, ++digits) {
    if (v > (UINT64_MAX >> 3)) return false;
    v = (v << 3) | static_cast<uint64_t>(field[i] - '0');
  }
  for (; i < width; ++i) {
    if (field[i] != '\0' && field[i] != ' ') return false;
  }
  if (digits == 0) return false;
  *out = v;
  return true;
}

std::string FieldString(const char* field, size_t width) {
  return std::string(field, strnlen(field, width));
}

bool SafeMemberName(const std::string& name) {
  if (name.empty() || name.front() == '/') return false;
  for (const fs::path& part : fs::path(name)) {
    if (part == "..") return false;
  }
  return name.find('\0') == std::string::npos;
}

}  // namespace

absl::StatusOr<RepositoryStats> StreamTar(const fs::path& tar, const ByteSink& sink) {
  const int fd = ::open(tar.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::NotFoundError(absl::StrCat("cannot open ", tar.string()));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  const off_t size = ::lseek(fd, 0, SEEK_END);
  auto bad = [](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("not a valid tar archive: ", what));
  };
  struct Member {
    std::string name;
    uint64_t offset, size;
  };
  std::vector<Member> members;
  std::string long_name;
  uint64_t offset = 0;
  bool ended = false;
  char h[512];
  while (offset + 512 <= static_cast<uint64_t>(size)) {
    if (::pread(fd, h, 512, static_cast<off_t>(offset)) != 512) return bad("short read");
    if (std::all_of(h, h + 512, [](char c) { return c == 0; })) {
      ended = true;
      break;
    }
    uint64_t checksum = 0, member_size = 0;
    if (!ParseOctal(h + 148, 8, &checksum)) return bad("header checksum field");
    uint64_t sum = 0;
    for (int i = 0; i < 512; ++i) {
      sum += (i >= 148 && i < 156) ? ' ' : static_cast<unsigned char>(h[i]);
    }
    if (sum != checksum) return bad(absl::StrCat("header checksum at byte ", offset));
    if (std::memcmp(h + 257, "ustar", 5) != 0) return bad("not ustar");
    if (!ParseOctal(h + 124, 12, &member_size)) return bad("size field");
    const uint64_t data = offset + 512;
    if (member_size > static_cast<uint64_t>(size) - data) {
      return bad(absl::StrCat("member size ", member_size, " past the end"));
    }
    const char type = h[156];
    std::string name = FieldString(h, 100);
    const std::string prefix = FieldString(h + 345, 155);
    if (!prefix.empty()) name = prefix + "/" + name;
    if (!long_name.empty()) {
      name = long_name;
      long_name.clear();
    }
    if (type == 'L') {
      if (member_size > 4096) return bad("long name over 4096 bytes");
      long_name.resize(member_size);
      if (::pread(fd, long_name.data(), member_size, static_cast<off_t>(data)) !=
          static_cast<ssize_t>(member_size)) {
        return bad("short read");
      }
      long_name.resize(strnlen(long_name.data(), long_name.size()));
    } else if (type == '0' || type == '\0') {
      if (!SafeMemberName(name)) return bad(absl::StrCat("unsafe member name \"", name, "\""));
      members.push_back({name, data, member_size});
    }
    // Directories, links (never followed), pax headers and the rest carry no file content.
    offset = data + (member_size + 511) / 512 * 512;
  }
  if (!ended && offset != static_cast<uint64_t>(size)) return bad("truncated");
  std::sort(members.begin(), members.end(),
            [](const Member& a, const Member& b) { return a.name < b.name; });
  RepositoryStats stats;
  std::string buf;
  for (const Member& m : members) {
    buf.resize(std::min<uint64_t>(m.size, 8192));
    if (::pread(fd, buf.data(), buf.size(), static_cast<off_t>(m.offset)) !=
        static_cast<ssize_t>(buf.size())) {
      return bad("short read");
    }
    if (std::memchr(buf.data(), 0, buf.size()) != nullptr) {
      ++stats.skipped_binary;
      continue;
    }
    if (absl::Status s = EmitHeader(m.name, sink); !s.ok()) return s;
    char last = '\n';
    for (uint64_t at = 0; at < m.size;) {
      const uint64_t n = std::min<uint64_t>(kReadSlice, m.size - at);
      buf.resize(n);
      if (::pread(fd, buf.data(), n, static_cast<off_t>(m.offset + at)) !=
          static_cast<ssize_t>(n)) {
        return bad("short read");
      }
      if (absl::Status s = sink(buf); !s.ok()) return s;
      last = buf.back();
      at += n;
    }
    if (last != '\n') {
      if (absl::Status s = sink("\n"); !s.ok()) return s;
    }
    ++stats.files;
  }
  return stats;
}

}  // namespace longread::coordinator
