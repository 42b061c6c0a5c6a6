// Little-endian append/parse helpers for the on-disk records. The reader checks every length
// against the bytes that remain before anything is allocated, and its errors name the field and
// the byte offset.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace longread::cache {

// Debian's Abseil has its own absl::string_view (not std::string_view); StrCat needs that one.
inline absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

static_assert(std::endian::native == std::endian::little,
              "records are little-endian and written with memcpy");

class ByteWriter {
 public:
  explicit ByteWriter(std::string* out) : out_(out) {}

  template <typename T>
  void Put(T value) {
    static_assert(std::is_trivially_copyable_v<T>);
    out_->append(reinterpret_cast<const char*>(&value), sizeof(T));
  }
  template <typename T>
  void PutArray(const T* data, size_t n) {
    static_assert(std::is_trivially_copyable_v<T>);
    out_->append(reinterpret_cast<const char*>(data), n * sizeof(T));
  }
  // u32 length, the bytes, zero padding to a multiple of 4 (keeps the payload word-aligned, which
  // the byte-plane shuffle relies on).
  void PutBytes(std::string_view bytes) {
    Put<uint32_t>(static_cast<uint32_t>(bytes.size()));
    out_->append(bytes);
    PadTo4();
  }
  void PadTo4() { out_->append((4 - out_->size() % 4) % 4, '\0'); }
  size_t size() const { return out_->size(); }

 private:
  std::string* out_;
};

class ByteReader {
 public:
  ByteReader(std::string_view data, std::string_view what) : data_(data), what_(what) {}

  size_t offset() const { return pos_; }
  size_t remaining() const { return data_.size() - pos_; }

  template <typename T>
  absl::Status Get(std::string_view field, T* value) {
    static_assert(std::is_trivially_copyable_v<T>);
    if (remaining() < sizeof(T)) return Truncated(field, sizeof(T));
    std::memcpy(value, data_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return absl::OkStatus();
  }
  // Reads n elements; n comes from the file, so it is checked against what remains first.
  template <typename T>
  absl::Status GetArray(std::string_view field, uint64_t n, std::vector<T>* out) {
    static_assert(std::is_trivially_copyable_v<T>);
    if (n > remaining() / sizeof(T)) return Truncated(field, n * sizeof(T));
    out->resize(n);
    if (n > 0) std::memcpy(out->data(), data_.data() + pos_, n * sizeof(T));  // data() may be null
    pos_ += n * sizeof(T);
    return absl::OkStatus();
  }
  absl::Status GetBytes(std::string_view field, std::string* out) {
    uint32_t n = 0;
    if (absl::Status s = Get(field, &n); !s.ok()) return s;
    uint64_t padded = (uint64_t{n} + 3) / 4 * 4;
    if (padded > remaining()) return Truncated(field, padded);
    out->assign(data_.data() + pos_, n);
    pos_ += padded;
    return absl::OkStatus();
  }
  absl::Status Error(std::string_view field, std::string_view problem) const {
    return absl::DataLossError(
        absl::StrCat(Sv(what_), ": field '", Sv(field), "' at byte ", pos_, ": ", Sv(problem)));
  }

 private:
  absl::Status Truncated(std::string_view field, uint64_t need) const {
    return Error(field, absl::StrCat("needs ", need, " bytes but only ", remaining(), " remain"));
  }

  std::string_view data_;
  std::string_view what_;
  size_t pos_ = 0;
};

}  // namespace longread::cache
