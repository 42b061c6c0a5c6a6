// Turning submitted bytes into a stored, tokenized document without ever holding the whole
// document: inline chunks, server-side files, directories and tar archives (a code repository
// becomes one document: its files in path order, each after a "=== path ===" line).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/tokenizer/streaming_encoder.h"
#include "engine/tokenizer/tokenizer.h"
#include "services/coordinator/job_store.h"

namespace longread::coordinator {

struct IngestLimits {
  int64_t max_document_bytes = int64_t{1} << 30;
  int64_t* job_bytes_left = nullptr;  // shared by a job's documents
  // Embedded mode: `longread run` reads any bytes (invalid UTF-8 replaced and counted), so
  // NUL bytes and mostly-invalid UTF-8 are not refused as binary.
  bool accept_binary = false;
};

// One document: bytes -> checks (NUL, size, invalid UTF-8 ratio) -> tokens -> token chunks in
// the store. Errors carry the gRPC-facing code: OUT_OF_RANGE over a limit, INVALID_ARGUMENT for
// an empty or binary document.
class DocumentIngest {
 public:
  DocumentIngest(const engine::Tokenizer& tokenizer, JobStore* store, std::string job_id,
                 int32_t doc_index, std::string name, IngestLimits limits);

  absl::Status Append(std::string_view bytes);
  absl::Status Finish();

  int64_t bytes() const { return bytes_; }
  int64_t tokens() const { return tokens_written_; }
  // Counted by the streaming tokenizer exactly as engine::CountInvalidUtf8 counts the whole text.
  int64_t invalid_utf8() const { return encoder_.invalid_utf8_sequences(); }
  const std::string& name() const { return name_; }

 private:
  absl::Status Flush(bool final);

  JobStore* store_;
  std::string job_id_;
  int32_t doc_index_;
  std::string name_;
  IngestLimits limits_;
  // Text slices in, tokens out, equal to tokenizing the whole text at once, holding ~1 MiB at
  // most whatever the document's size.
  engine::StreamingEncoder encoder_;
  std::vector<int32_t> pending_;
  int64_t chunks_written_ = 0;
  int64_t tokens_written_ = 0;
  int64_t bytes_ = 0;
};

// A server-side path confined to `roots`: no ".." component, and its real path (symlinks
// resolved) inside a root's real path. PERMISSION_DENIED otherwise (also with no roots at all),
// NOT_FOUND when it does not exist. A relative path is taken under the first root.
absl::StatusOr<std::filesystem::path> ResolveServerPath(const std::string& path,
                                                        const std::vector<std::string>& roots);

// Feeds a repository to `sink` (header lines + file contents): a directory's regular files
// (symlinks only when their target stays under `root`; .git skipped; files with NUL bytes
// skipped as binary), or a tar file's regular members, each in path order.
struct RepositoryStats {
  int64_t files = 0;
  int64_t skipped_binary = 0;
  int64_t skipped_links = 0;
};
using ByteSink = std::function<absl::Status(std::string_view)>;
absl::StatusOr<RepositoryStats> StreamDirectory(const std::filesystem::path& dir,
                                                const std::filesystem::path& root,
                                                const ByteSink& sink);
// Validates every header (checksum, octal fields, sizes within the file, safe names) before
// reading a byte of content. INVALID_ARGUMENT naming the problem.
absl::StatusOr<RepositoryStats> StreamTar(const std::filesystem::path& tar, const ByteSink& sink);
// Feeds one plain file in slices.
absl::Status StreamFile(const std::filesystem::path& file, const ByteSink& sink);

}  // namespace longread::coordinator
