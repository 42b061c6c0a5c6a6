// Reader for Hugging Face safetensors files: an 8-byte little-endian header length, a JSON
// header {name: {dtype, shape, data_offsets}, "__metadata__": {str: str}}, then the data.
// Every offset is checked (inside the data section, size matching dtype x shape, no overlaps)
// before any tensor is exposed. Tensor data points into the mapped file.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "engine/model_files/mapped_file.h"
#include "kernels/dtype.h"

namespace longread::engine {

// The header may not exceed this (nor the file).
constexpr uint64_t kMaxSafetensorsHeaderBytes = uint64_t{100} << 20;

// Bytes per element of a safetensors dtype name ("F32", "BF16", "I64", ...); 0 if unknown.
int64_t SafetensorsElementSize(std::string_view dtype);

// The compute type of a dtype name: F32, F16 and BF16; anything else is an error naming it.
absl::StatusOr<kernels::DType> SafetensorsComputeType(std::string_view dtype);

// The GGUF name of a Llama-family Hugging Face tensor name
// ("model.layers.3.self_attn.q_proj.weight"
// -> "blk.3.attn_q.weight"), or nullopt for names outside the mapping.
std::optional<std::string> GgufNameFromHf(std::string_view hf_name);

struct SafetensorsTensor {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;  // as stored, row-major: shape.back() is the row length
  uint64_t begin = 0;          // data_offsets, relative to the data section
  uint64_t end = 0;
  const uint8_t* data = nullptr;

  uint64_t bytes() const { return end - begin; }
};

class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  // Parses bytes that the caller keeps alive for the life of the returned object.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Parse(std::string_view bytes);

  std::string_view bytes() const { return bytes_; }
  uint64_t data_offset() const { return data_offset_; }
  // Sorted by name.
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }
  const SafetensorsTensor* Find(std::string_view name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  absl::Status ParseHeader();

  std::unique_ptr<MappedFile> mapping_;
  std::string_view bytes_;
  uint64_t data_offset_ = 0;
  std::vector<SafetensorsTensor> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace longread::engine
