// `longread submit`: streams the job's documents to the coordinator in chunks, never holding a
// whole file; a local directory given as a repository is sent as a tar stream built on the fly.
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "services/cli/client_common.h"

namespace longread::services::client {
namespace {
namespace fs = std::filesystem;

enum class InputKind { kText, kStdin, kRepositoryTar, kRepositoryDir, kServerPath, kServerRepo };

struct Input {
  InputKind kind;
  std::string path;
  std::string name;
};

// Regular files under `dir`, sorted, .git and symlinks skipped (as the coordinator reads a
// directory on its side).
std::vector<fs::path> FilesUnder(const fs::path& dir, std::string* error) {
  std::vector<fs::path> files;
  std::error_code ec;
  fs::recursive_directory_iterator it(dir, ec), end;
  for (; !ec && it != end; it.increment(ec)) {
    const fs::directory_entry& e = *it;
    if (e.is_symlink()) {
      if (e.is_directory()) it.disable_recursion_pending();
      continue;
    }
    if (e.is_directory() && e.path().filename() == ".git") {
      it.disable_recursion_pending();
      continue;
    }
    if (e.is_regular_file()) files.push_back(e.path());
  }
  if (ec) *error = absl::StrCat("cannot read directory ", dir.string(), ": ", ec.message());
  std::sort(files.begin(), files.end());
  return files;
}

// Sends bytes as chunk messages of at most `chunk_bytes`.
class ChunkWriter {
 public:
  ChunkWriter(grpc::ClientWriter<v1::SubmitJobRequest>* writer, size_t chunk_bytes)
      : writer_(writer), chunk_bytes_(chunk_bytes) {}
  bool Append(const char* data, size_t size) {
    appended_ += size;
    while (size > 0) {
      const size_t n = std::min(size, chunk_bytes_ - buffer_.size());
      buffer_.append(data, n);
      data += n;
      size -= n;
      if (buffer_.size() == chunk_bytes_ && !Flush()) return false;
    }
    return true;
  }
  bool Flush() {
    if (buffer_.empty()) return true;
    v1::SubmitJobRequest request;
    request.set_chunk(std::move(buffer_));
    buffer_.clear();
    return writer_->Write(request);
  }
  uint64_t appended() const { return appended_; }

 private:
  grpc::ClientWriter<v1::SubmitJobRequest>* writer_;
  size_t chunk_bytes_;
  std::string buffer_;
  uint64_t appended_ = 0;
};

// Copies a stream through the writer; false when the RPC broke (its status says why) or the
// file could not be read (`read_error` set).
bool SendStream(std::istream& in, ChunkWriter* out, uint64_t limit, std::string* read_error) {
  std::string buffer(1 << 16, '\0');
  uint64_t left = limit;
  while (left > 0 && in) {
    in.read(buffer.data(), static_cast<std::streamsize>(std::min<uint64_t>(buffer.size(), left)));
    const auto n = static_cast<size_t>(in.gcount());
    if (n == 0) break;
    left -= n;
    if (!out->Append(buffer.data(), n)) return false;
  }
  if (in.bad()) {
    *read_error = "read error";
    return false;
  }
  return true;
}

void PutOctal(char* field, size_t width, uint64_t value) {
  // width - 1 digits and a NUL, as ustar writes them.
  std::snprintf(field, width, "%0*llo", static_cast<int>(width - 1),
                static_cast<unsigned long long>(value));
}

void TarHeader(char* h, const std::string& name, char type, uint64_t size) {
  std::memset(h, 0, 512);
  std::memcpy(h, name.data(), std::min<size_t>(name.size(), 100));
  PutOctal(h + 100, 8, 0644);
  PutOctal(h + 108, 8, 0);
  PutOctal(h + 116, 8, 0);
  PutOctal(h + 124, 12, size);
  PutOctal(h + 136, 12, 0);
  h[156] = type;
  std::memcpy(h + 257, "ustar", 6);
  std::memcpy(h + 263, "00", 2);
  std::memset(h + 148, ' ', 8);
  unsigned sum = 0;
  for (int i = 0; i < 512; ++i) sum += static_cast<unsigned char>(h[i]);
  std::snprintf(h + 148, 8, "%06o", sum);
  h[155] = ' ';
}

// A directory as a ustar stream (GNU 'L' records for names over 100 bytes).
bool SendDirectoryAsTar(const fs::path& dir, ChunkWriter* out, std::string* read_error) {
  std::string error;
  const std::vector<fs::path> files = FilesUnder(dir, &error);
  if (!error.empty()) {
    *read_error = error;
    return false;
  }
  char h[512];
  static const char kZeros[512] = {};
  for (const fs::path& file : files) {
    const std::string name = fs::relative(file, dir).generic_string();
    std::error_code ec;
    const uint64_t size = fs::file_size(file, ec);
    if (ec) continue;  // vanished since the listing
    if (name.size() > 100) {
      TarHeader(h, "././@LongLink", 'L', name.size() + 1);
      if (!out->Append(h, 512) || !out->Append(name.c_str(), name.size() + 1) ||
          !out->Append(kZeros, (512 - (name.size() + 1) % 512) % 512)) {
        return false;
      }
    }
    TarHeader(h, name, '0', size);
    if (!out->Append(h, 512)) return false;
    const uint64_t before = out->appended();
    std::ifstream in(file, std::ios::binary);
    if (!in) {
      *read_error = absl::StrCat("cannot read ", file.string());
      return false;
    }
    if (!SendStream(in, out, size, read_error)) return false;
    // A file that shrank meanwhile is padded to the size its header announced.
    for (uint64_t got = out->appended() - before; got < size;) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(512, size - got));
      if (!out->Append(kZeros, n)) return false;
      got += n;
    }
    if (!out->Append(kZeros, (512 - size % 512) % 512)) return false;
  }
  return out->Append(kZeros, 512) && out->Append(kZeros, 512);
}

int BuildInputs(const Flags& flags, std::vector<Input>* inputs) {
  for (const auto& [name, value] : flags.items) {
    if (name.empty()) {
      if (value == "-") {
        inputs->push_back({InputKind::kStdin, value, "stdin"});
        continue;
      }
      std::error_code ec;
      if (fs::is_directory(value, ec)) {
        std::string error;
        const auto files = FilesUnder(value, &error);
        if (!error.empty() || files.empty()) {
          std::fprintf(stderr, "longread: %s\n",
                       error.empty() ? absl::StrCat(value, ": no files").c_str() : error.c_str());
          return kRefused;
        }
        for (const fs::path& f : files) inputs->push_back({InputKind::kText, f, f.string()});
      } else if (fs::is_regular_file(value, ec)) {
        inputs->push_back({InputKind::kText, value, value});
      } else {
        std::fprintf(stderr, "longread: cannot read %s\n", value.c_str());
        return kRefused;
      }
    } else if (name == "repository") {
      std::error_code ec;
      if (fs::is_directory(value, ec)) {
        inputs->push_back({InputKind::kRepositoryDir, value, value});
      } else if (fs::is_regular_file(value, ec)) {
        inputs->push_back({InputKind::kRepositoryTar, value, value});
      } else {
        std::fprintf(stderr, "longread: cannot read repository %s\n", value.c_str());
        return kRefused;
      }
    } else if (name == "server-path") {
      inputs->push_back({InputKind::kServerPath, value, value});
    } else if (name == "server-repository") {
      inputs->push_back({InputKind::kServerRepo, value, value});
    }
  }
  if (inputs->empty()) return Usage("submit needs at least one input (FILE, DIR, - or --...)");
  return kOk;
}

int BuildHeader(const Flags& flags, v1::JobHeader* header) {
  std::string error;
  v1::Task* task = header->mutable_task();
  std::string kind = flags.Get("task");
  if (kind.empty()) {
    kind = flags.Has("question") ? "question" : flags.Has("instruction") ? "custom" : "summarize";
  }
  if (kind == "summarize") {
    task->set_kind(v1::TASK_KIND_SUMMARIZE);
  } else if (kind == "analyze_code") {
    task->set_kind(v1::TASK_KIND_ANALYZE_CODE);
  } else if (kind == "question") {
    task->set_kind(v1::TASK_KIND_QUESTION);
    if (flags.Get("question").empty()) return Usage("--task question needs --question TEXT");
  } else if (kind == "custom") {
    task->set_kind(v1::TASK_KIND_CUSTOM);
    if (flags.Get("instruction").empty()) return Usage("--task custom needs --instruction TEXT");
  } else {
    return Usage("--task must be summarize, analyze_code, question or custom");
  }
  task->set_question(flags.Get("question"));
  task->set_instruction(flags.Get("instruction"));
  v1::JobOptions* o = header->mutable_options();
  int64_t v = 0;
  const std::pair<const char*, void (v1::JobOptions::*)(int64_t)> ints[] = {
      {"memory-k", &v1::JobOptions::set_memory_k},
      {"window", &v1::JobOptions::set_window},
      {"sinks", &v1::JobOptions::set_sinks},
      {"segment-tokens", &v1::JobOptions::set_segment_tokens},
      {"block-tokens", &v1::JobOptions::set_block_tokens},
      {"recall-blocks", &v1::JobOptions::set_recall_blocks},
      {"max-tokens", &v1::JobOptions::set_max_new_tokens}};
  for (const auto& [name, setter] : ints) {
    if (!flags.Has(name)) continue;
    const int64_t min = std::string(name) == "recall-blocks" ? 0 : 1;
    if (!ParseInt(flags, name, min, &v, &error)) return Usage(error);
    (o->*setter)(v);
  }
  double d = 0;
  if (flags.Has("temperature")) {
    if (!ParseDouble(flags, "temperature", 0, 100, &d, &error)) return Usage(error);
    o->set_temperature(static_cast<float>(d));
  }
  if (flags.Has("top-p")) {
    if (!ParseDouble(flags, "top-p", 0, 1, &d, &error)) return Usage(error);
    o->set_top_p(static_cast<float>(d));
  }
  if (flags.Has("seed")) {
    if (!ParseInt(flags, "seed", 0, &v, &error)) return Usage(error);
    o->set_seed(static_cast<uint64_t>(v));
  }
  if (flags.Has("deadline")) {
    absl::Duration timeout;
    if (!absl::ParseDuration(flags.Get("deadline"), &timeout) || timeout <= absl::ZeroDuration()) {
      return Usage("--deadline must be a positive duration such as 90s, 10m or 2h");
    }
    const int64_t seconds = absl::IDivDuration(timeout, absl::Seconds(1), &timeout);
    header->mutable_timeout()->set_seconds(seconds);
    header->mutable_timeout()->set_nanos(static_cast<int32_t>(absl::ToInt64Nanoseconds(timeout)));
  }
  header->set_idempotency_key(flags.Get("idempotency-key"));
  header->set_name(flags.Get("name"));
  return kOk;
}

}  // namespace

int SubmitCommand(const Flags& flags) {
  v1::JobHeader header;
  if (int rc = BuildHeader(flags, &header); rc != kOk) return rc;
  std::vector<Input> inputs;
  if (int rc = BuildInputs(flags, &inputs); rc != kOk) return rc;
  int64_t chunk_bytes = 1 << 20;
  WatchOptions watch;
  std::string error;
  if (!ParseInt(flags, "chunk-bytes", 1, &chunk_bytes, &error) ||
      !ParseDouble(flags, "reattach-seconds", 0, 1e9, &watch.reattach_seconds, &error)) {
    return Usage(error);
  }
  if (chunk_bytes > (8 << 20)) return Usage("--chunk-bytes must be at most 8388608");
  Connection connection;
  if (int rc = Connect(flags, &connection); rc != kOk) return rc;

  grpc::ClientContext context;
  connection.Prepare(&context);
  v1::SubmitJobResponse response;
  auto writer = connection.stub->SubmitJob(&context, &response);
  v1::SubmitJobRequest first;
  *first.mutable_header() = header;
  bool streaming = writer->Write(first);
  std::string read_error;
  ChunkWriter chunks(writer.get(), static_cast<size_t>(chunk_bytes));
  for (const Input& input : inputs) {
    if (!streaming) break;
    v1::SubmitJobRequest start;
    start.mutable_document()->set_name(input.name);
    switch (input.kind) {
      case InputKind::kServerPath:
        start.mutable_document()->set_server_path(input.path);
        break;
      case InputKind::kServerRepo:
        start.mutable_document()->set_server_path(input.path);
        start.mutable_document()->set_format(v1::DOCUMENT_FORMAT_REPOSITORY);
        break;
      case InputKind::kRepositoryTar:
      case InputKind::kRepositoryDir:
        start.mutable_document()->set_format(v1::DOCUMENT_FORMAT_REPOSITORY);
        break;
      default:
        start.mutable_document()->set_format(v1::DOCUMENT_FORMAT_TEXT);
        break;
    }
    if (!writer->Write(start)) {
      streaming = false;
      break;
    }
    switch (input.kind) {
      case InputKind::kStdin:
        streaming = SendStream(std::cin, &chunks, UINT64_MAX, &read_error);
        break;
      case InputKind::kText:
      case InputKind::kRepositoryTar: {
        std::ifstream in(input.path, std::ios::binary);
        if (!in) {
          read_error = absl::StrCat("cannot read ", input.path);
          streaming = false;
        } else {
          streaming = SendStream(in, &chunks, UINT64_MAX, &read_error);
        }
        break;
      }
      case InputKind::kRepositoryDir:
        streaming = SendDirectoryAsTar(input.path, &chunks, &read_error);
        break;
      default:
        break;
    }
    if (streaming) streaming = chunks.Flush();
  }
  if (!read_error.empty()) {
    // Abandon the job: the coordinator drops a stream cancelled before its end.
    context.TryCancel();
    (void)writer->Finish();
    std::fprintf(stderr, "longread: %s\n", read_error.c_str());
    return kRefused;
  }
  writer->WritesDone();
  grpc::Status status = writer->Finish();
  if (!status.ok()) return ReportRpcError("submit", status, &context);

  const bool follow = flags.Has("watch");
  if (flags.Has("json") && !(follow && flags.Has("jsonl"))) {
    std::printf("%s\n", ToJson(response).c_str());
    std::fflush(stdout);
  } else if (!follow) {
    std::printf("%s\n", response.job_id().c_str());
  } else if (!flags.Has("quiet") && !flags.Has("jsonl")) {
    std::fprintf(stderr, "longread: job %s%s\n", response.job_id().c_str(),
                 response.deduplicated() ? " (an earlier submission with this key)" : "");
  }
  if (!follow) return kOk;
  watch.jsonl = flags.Has("jsonl");
  watch.quiet = flags.Has("quiet");
  return WatchJob(connection, response.job_id(), watch);
}

}  // namespace longread::services::client
