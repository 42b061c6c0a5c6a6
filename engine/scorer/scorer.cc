#include "engine/scorer/scorer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace longread::engine {
namespace {

constexpr char kMagic[8] = {'L', 'R', 'S', 'C', 'O', 'R', 'E', 'R'};
constexpr uint32_t kFormatVersion = 1;
constexpr uint32_t kMaxFingerprintBytes = 4096;
constexpr uint32_t kMaxProvenanceBytes = 1 << 20;
// Far above any real model (the default has 30 × 3 × 576); bounds the allocation a file asks for.
constexpr int64_t kMaxLayers = 4096, kMaxKvHeads = 1024, kMaxDModel = 1 << 16;
constexpr int64_t kMaxFileBytes = int64_t{1} << 31;

class Writer {
 public:
  void Bytes(std::string_view s) { out_.append(s); }
  void U32(uint32_t v) {
    for (int i = 0; i < 4; ++i) out_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  void U64(uint64_t v) {
    for (int i = 0; i < 8; ++i) out_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  void F32s(const std::vector<float>& v) {
    for (float x : v) U32(std::bit_cast<uint32_t>(x));
  }
  std::string& data() { return out_; }

 private:
  std::string out_;
};

// Bounds-checked little-endian reads; every failure names the field and its byte offset.
class Reader {
 public:
  Reader(std::string_view data, const std::string& path) : data_(data), path_(path) {}

  absl::Status Need(uint64_t bytes, const char* field) const {
    if (bytes > data_.size() - pos_) {
      return absl::DataLossError(absl::StrCat("scorer file ", path_, ": field ", field, " at byte ",
                                              pos_, " needs ", bytes, " bytes, only ",
                                              data_.size() - pos_, " remain"));
    }
    return absl::OkStatus();
  }
  absl::StatusOr<uint32_t> U32(const char* field) {
    if (absl::Status s = Need(4, field); !s.ok()) return s;
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= uint32_t{static_cast<uint8_t>(data_[pos_ + i])} << (8 * i);
    pos_ += 4;
    return v;
  }
  absl::StatusOr<std::string> String(uint32_t max_bytes, const char* field) {
    const size_t at = pos_;
    absl::StatusOr<uint32_t> len = U32(field);
    if (!len.ok()) return len.status();
    if (*len > max_bytes) {
      return absl::DataLossError(absl::StrCat("scorer file ", path_, ": field ", field, " at byte ",
                                              at, " has length ", *len, " (max ", max_bytes, ")"));
    }
    if (absl::Status s = Need(*len, field); !s.ok()) return s;
    std::string out(data_.substr(pos_, *len));
    pos_ += *len;
    return out;
  }
  absl::Status F32s(int64_t count, const char* field, std::vector<float>& out) {
    if (absl::Status s = Need(static_cast<uint64_t>(count) * 4, field); !s.ok()) return s;
    out.resize(count);
    for (int64_t i = 0; i < count; ++i) {
      uint32_t bits = 0;
      for (int j = 0; j < 4; ++j) {
        bits |= uint32_t{static_cast<uint8_t>(data_[pos_ + 4 * i + j])} << (8 * j);
      }
      out[i] = std::bit_cast<float>(bits);
    }
    pos_ += count * 4;
    return absl::OkStatus();
  }
  void Skip(size_t bytes) { pos_ += bytes; }  // Only over bytes already checked.
  size_t pos() const { return pos_; }

 private:
  std::string_view data_;
  const std::string& path_;
  size_t pos_ = 0;
};

absl::Status CheckFinite(const std::vector<float>& v, const char* field, int32_t d) {
  for (size_t i = 0; i < v.size(); ++i) {
    if (!std::isfinite(v[i])) {
      return absl::InvalidArgumentError(absl::StrCat("scorer weights: ", field, "[layer ", i / d,
                                                     "...] entry ", i, " is not finite"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) {
      return absl::NotFoundError(absl::StrCat("scorer file ", path, " not found"));
    }
    return absl::UnavailableError(absl::StrCat("scorer file ", path, ": ", std::strerror(errno)));
  }
  if (st.st_size > kMaxFileBytes) {
    return absl::DataLossError(
        absl::StrCat("scorer file ", path, ": ", st.st_size, " bytes is too large"));
  }
  std::ifstream in(path, std::ios::binary);
  std::string data(static_cast<size_t>(st.st_size), '\0');
  if (!in.read(data.data(), st.st_size)) {
    return absl::UnavailableError(absl::StrCat("scorer file ", path, ": read failed"));
  }
  return data;
}

}  // namespace

ScorerWeights ZeroScorerWeights(std::string model_fingerprint, int32_t n_layers, int32_t n_kv_heads,
                                int32_t d_model) {
  ScorerWeights s;
  s.model_fingerprint = std::move(model_fingerprint);
  s.n_layers = n_layers;
  s.n_kv_heads = n_kv_heads;
  s.d_model = d_model;
  const int64_t heads = int64_t{n_layers} * n_kv_heads;
  s.w.assign(heads * d_model, 0.0f);
  s.b.assign(heads, 0.0f);
  s.slope.assign(heads, 0.0f);
  return s;
}

absl::Status ValidateScorerWeights(const ScorerWeights& s) {
  if (s.n_layers < 1 || s.n_layers > kMaxLayers || s.n_kv_heads < 1 || s.n_kv_heads > kMaxKvHeads ||
      s.d_model < 1 || s.d_model > kMaxDModel) {
    return absl::InvalidArgumentError(
        absl::StrCat("scorer weights: dimensions out of range: n_layers ", s.n_layers,
                     ", n_kv_heads ", s.n_kv_heads, ", d_model ", s.d_model));
  }
  if (s.model_fingerprint.size() > kMaxFingerprintBytes ||
      s.provenance.size() > kMaxProvenanceBytes) {
    return absl::InvalidArgumentError("scorer weights: fingerprint or provenance too long");
  }
  const size_t heads = static_cast<size_t>(s.n_layers) * s.n_kv_heads;
  if (s.w.size() != heads * s.d_model || s.b.size() != heads || s.slope.size() != heads) {
    return absl::InvalidArgumentError(absl::StrCat(
        "scorer weights: sizes w ", s.w.size(), ", b ", s.b.size(), ", slope ", s.slope.size(),
        " do not match ", s.n_layers, " x ", s.n_kv_heads, " x ", s.d_model));
  }
  const int32_t per_layer = s.n_kv_heads;
  if (absl::Status st = CheckFinite(s.w, "w", per_layer * s.d_model); !st.ok()) return st;
  if (absl::Status st = CheckFinite(s.b, "b", per_layer); !st.ok()) return st;
  return CheckFinite(s.slope, "slope", per_layer);
}

absl::StatusOr<ScorerWeights> LoadScorerWeights(const std::string& path,
                                                std::string_view expected_fingerprint,
                                                int32_t n_layers, int32_t n_kv_heads,
                                                int32_t d_model) {
  absl::StatusOr<std::string> file = ReadWholeFile(path);
  if (!file.ok()) return file.status();
  const std::string_view data = *file;
  // Magic first (is this a scorer file at all?), then the checksum over everything, then fields.
  if (data.size() < sizeof(kMagic) + 4 + 8) {
    return absl::DataLossError(absl::StrCat("scorer file ", path, ": truncated, ", data.size(),
                                            " bytes is shorter than magic + version + checksum"));
  }
  if (std::memcmp(data.data(), kMagic, sizeof(kMagic)) != 0) {
    return absl::DataLossError(
        absl::StrCat("scorer file ", path, ": no LRSCORER magic at byte 0: not a scorer file"));
  }
  const std::string_view body = data.substr(0, data.size() - 8);
  uint64_t stored = 0;
  for (int i = 0; i < 8; ++i) {
    stored |= uint64_t{static_cast<uint8_t>(data[body.size() + i])} << (8 * i);
  }
  const uint64_t computed = XXH64(body.data(), body.size(), 0);
  if (stored != computed) {
    return absl::DataLossError(absl::StrCat(
        "scorer file ", path, ": checksum at byte ", body.size(), " is ", absl::Hex(stored),
        ", contents hash to ", absl::Hex(computed), " (truncated or corrupted)"));
  }
  Reader r(body, path);
  r.Skip(sizeof(kMagic));
  absl::StatusOr<uint32_t> version = r.U32("format_version");
  if (!version.ok()) return version.status();
  if (*version != kFormatVersion) {
    return absl::FailedPreconditionError(absl::StrCat("scorer file ", path, ": format version ",
                                                      *version, ", this build reads ",
                                                      kFormatVersion));
  }
  ScorerWeights s;
  absl::StatusOr<std::string> fingerprint = r.String(kMaxFingerprintBytes, "model_fingerprint");
  if (!fingerprint.ok()) return fingerprint.status();
  s.model_fingerprint = *std::move(fingerprint);
  absl::StatusOr<std::string> provenance = r.String(kMaxProvenanceBytes, "provenance");
  if (!provenance.ok()) return provenance.status();
  s.provenance = *std::move(provenance);
  int32_t* dims[] = {&s.n_layers, &s.n_kv_heads, &s.d_model};
  const char* dim_names[] = {"n_layers", "n_kv_heads", "d_model"};
  const int64_t dim_max[] = {kMaxLayers, kMaxKvHeads, kMaxDModel};
  for (int i = 0; i < 3; ++i) {
    const size_t at = r.pos();
    absl::StatusOr<uint32_t> v = r.U32(dim_names[i]);
    if (!v.ok()) return v.status();
    const int32_t value = static_cast<int32_t>(*v);
    if (value < 1 || value > dim_max[i]) {
      return absl::DataLossError(absl::StrCat("scorer file ", path, ": field ", dim_names[i],
                                              " at byte ", at, " is ", value, " (allowed 1..",
                                              dim_max[i], ")"));
    }
    *dims[i] = value;
  }
  if (s.model_fingerprint != expected_fingerprint) {
    return absl::FailedPreconditionError(absl::StrCat(
        "scorer file ", path, " was made for model fingerprint \"", s.model_fingerprint,
        "\", the loaded model's fingerprint is \"", std::string(expected_fingerprint), "\""));
  }
  if (s.n_layers != n_layers || s.n_kv_heads != n_kv_heads || s.d_model != d_model) {
    return absl::FailedPreconditionError(absl::StrCat(
        "scorer file ", path, " has n_layers ", s.n_layers, ", n_kv_heads ", s.n_kv_heads,
        ", d_model ", s.d_model, "; the model has ", n_layers, ", ", n_kv_heads, ", ", d_model));
  }
  const int64_t heads = int64_t{s.n_layers} * s.n_kv_heads;
  const int64_t expected_end = static_cast<int64_t>(r.pos()) + 4 * (heads * s.d_model + 2 * heads);
  if (expected_end != static_cast<int64_t>(body.size())) {
    return absl::DataLossError(absl::StrCat(
        "scorer file ", path, ": weights for ", s.n_layers, " x ", s.n_kv_heads, " x ", s.d_model,
        " end at byte ", expected_end, ", the checksum is at byte ", body.size()));
  }
  if (absl::Status st = r.F32s(heads * s.d_model, "w", s.w); !st.ok()) return st;
  if (absl::Status st = r.F32s(heads, "b", s.b); !st.ok()) return st;
  if (absl::Status st = r.F32s(heads, "slope", s.slope); !st.ok()) return st;
  if (absl::Status st = ValidateScorerWeights(s); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("scorer file ", path, ": ", st.message()));
  }
  return s;
}

absl::Status SaveScorerWeights(const std::string& path, const ScorerWeights& s) {
  if (absl::Status st = ValidateScorerWeights(s); !st.ok()) return st;
  Writer w;
  w.Bytes(std::string_view(kMagic, sizeof(kMagic)));
  w.U32(kFormatVersion);
  w.U32(static_cast<uint32_t>(s.model_fingerprint.size()));
  w.Bytes(s.model_fingerprint);
  w.U32(static_cast<uint32_t>(s.provenance.size()));
  w.Bytes(s.provenance);
  w.U32(static_cast<uint32_t>(s.n_layers));
  w.U32(static_cast<uint32_t>(s.n_kv_heads));
  w.U32(static_cast<uint32_t>(s.d_model));
  w.F32s(s.w);
  w.F32s(s.b);
  w.F32s(s.slope);
  w.U64(XXH64(w.data().data(), w.data().size(), 0));

  const std::string tmp = absl::StrCat(path, ".tmp.", getpid());
  const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::UnavailableError(absl::StrCat("scorer file ", tmp, ": ", std::strerror(errno)));
  }
  const std::string& bytes = w.data();
  size_t written = 0;
  while (written < bytes.size()) {
    const ssize_t n = write(fd, bytes.data() + written, bytes.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    written += static_cast<size_t>(n);
  }
  const bool ok = written == bytes.size() && fsync(fd) == 0;
  const int saved_errno = errno;
  close(fd);
  if (!ok || rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = ok ? errno : saved_errno;
    unlink(tmp.c_str());
    return absl::UnavailableError(
        absl::StrCat("scorer file ", path, ": write failed: ", std::strerror(err)));
  }
  return absl::OkStatus();
}

void ScoreTokens(const ScorerWeights& s, int32_t layer, const float* x_norm, int64_t n_tokens,
                 const int64_t* positions, float* out) {
  const int64_t d = s.d_model;
  const int64_t heads = s.n_kv_heads;
  for (int64_t t = 0; t < n_tokens; ++t) {
    const float* x = x_norm + t * d;
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t lh = int64_t{layer} * heads + h;
      const float* w = s.w.data() + lh * d;
      // Eight independent partial sums let the compiler vectorize without -ffast-math.
      float acc[8] = {};
      int64_t i = 0;
      for (; i + 8 <= d; i += 8) {
        for (int j = 0; j < 8; ++j) acc[j] += w[i + j] * x[i + j];
      }
      for (; i < d; ++i) acc[i % 8] += w[i] * x[i];
      float dot = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
      dot += s.b[lh];
      if (positions != nullptr) {
        dot += static_cast<float>(static_cast<double>(s.slope[lh]) * positions[t]);
      }
      out[t * heads + h] = dot;
    }
  }
}

}  // namespace longread::engine
