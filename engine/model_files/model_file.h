// The one front door to model weights: a GGUF file or a Hugging Face directory (config.json +
// *.safetensors + tokenizer.json). Tensors are named in GGUF convention whatever the format
// ("blk.3.attn_q.weight"), and every tensor the model needs is checked against the config at
// Open, so later code can trust shapes.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model_files/gguf.h"
#include "engine/model_files/model_config.h"
#include "engine/model_files/tokenizer_spec.h"
#include "kernels/dtype.h"

namespace longread::engine {

class SafetensorsFile;

struct TensorView {
  std::string name;
  kernels::DType type = kernels::DType::kF32;
  std::vector<int64_t> dims;  // ggml order: dims[0] is the row length (contiguous)
  const void* data = nullptr;
  uint64_t bytes = 0;

  int64_t elements() const;
  // dims {cols, rows} as a weight matrix; dims of rank 1 give rows = 1.
  kernels::MatrixView matrix() const;
};

// Range checks that keep a hostile file from driving huge allocations downstream: every size
// positive and bounded, heads dividing evenly, finite positive rope theta and epsilon.
absl::Status ValidateModelConfig(const ModelConfig& config);

class ModelFile {
 public:
  static absl::StatusOr<std::unique_ptr<ModelFile>> Open(const std::string& path);
  // GGUF bytes that the caller keeps alive as long as the result (tests and fuzzing).
  static absl::StatusOr<std::unique_ptr<ModelFile>> ParseGguf(std::string_view bytes);
  ~ModelFile();

  const ModelConfig& config() const { return config_; }
  const TokenizerSpec& tokenizer() const { return tokenizer_; }
  // "gguf" or "safetensors".
  const std::string& format() const { return format_; }

  // Fails for a missing tensor and for one whose element type this build cannot compute.
  absl::StatusOr<TensorView> Tensor(std::string_view gguf_name) const;
  bool HasTensor(std::string_view gguf_name) const;
  std::vector<std::string> TensorNames() const;

  // XXH3-128 of the file bytes (a directory: of its safetensors and JSON files), 32 hex digits.
  const std::string& fingerprint() const { return fingerprint_; }
  std::string Describe() const;

 private:
  struct StoredTensor {
    std::string type_name;               // "Q4_1", "BF16", ...
    std::optional<kernels::DType> type;  // empty: this build cannot compute it
    std::vector<int64_t> dims;
    const void* data = nullptr;
    uint64_t bytes = 0;
  };

  ModelFile() = default;
  absl::Status LoadGguf(std::unique_ptr<GgufFile> gguf);
  absl::Status LoadHfDirectory(const std::string& dir);
  absl::Status Validate();

  std::string format_;
  std::string detail_;  // for Describe: "gguf v3", "3 shards"
  ModelConfig config_;
  TokenizerSpec tokenizer_;
  std::string fingerprint_;
  std::map<std::string, StoredTensor, std::less<>> tensors_;
  std::unique_ptr<GgufFile> gguf_;
  std::vector<std::unique_ptr<SafetensorsFile>> shards_;
};

}  // namespace longread::engine
