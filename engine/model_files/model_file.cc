#include "engine/model_files/model_file.h"

#include <sys/stat.h>
#include <xxhash.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>

#include "absl/strings/str_join.h"
#include "engine/model_files/gguf_metadata.h"
#include "engine/model_files/hf_json.h"
#include "engine/model_files/internal.h"
#include "engine/model_files/json_util.h"
#include "engine/model_files/safetensors.h"

namespace longread::engine {
namespace {

constexpr int64_t kMaxDim = int64_t{1} << 20;
constexpr int64_t kMaxLayers = 4096;
constexpr int64_t kMaxContext = int64_t{1} << 24;

std::string HashHex(XXH128_hash_t h) {
  char buf[33];
  std::snprintf(buf, sizeof(buf), "%016llx%016llx", static_cast<unsigned long long>(h.high64),
                static_cast<unsigned long long>(h.low64));
  return buf;
}

absl::Status CheckRange(std::string_view field, int64_t v, int64_t lo, int64_t hi) {
  if (v < lo || v > hi) {
    return absl::InvalidArgumentError(
        mf::Cat("model config: ", field, " = ", v, " is not in [", lo, ", ", hi, "]"));
  }
  return absl::OkStatus();
}

constexpr std::string_view kIndexName = "model.safetensors.index.json";

// weight_map of model.safetensors.index.json: tensor -> shard file in the same directory.
absl::StatusOr<std::map<std::string, std::string>> ParseShardIndex(std::string_view text) {
  constexpr std::string_view kWhat = "model.safetensors.index.json";
  MF_ASSIGN_OR_RETURN(nlohmann::json index, mf::ParseJson(text, kWhat, kMaxTokenizerJsonBytes));
  auto map = index.is_object() ? index.find("weight_map") : index.end();
  if (map == index.end() || !map->is_object() || map->empty()) {
    return absl::InvalidArgumentError(mf::Cat(kWhat, ": no weight_map object"));
  }
  std::map<std::string, std::string> out;
  for (auto it = map->begin(); it != map->end(); ++it) {
    if (!it->is_string()) {
      return absl::InvalidArgumentError(mf::Cat(kWhat, ": entry '", it.key(), "' is not a string"));
    }
    std::string shard = it->get<std::string>();
    // Shards must be plain names in the model directory, never paths that lead out of it.
    if (shard.empty() || shard.find('/') != std::string::npos || shard[0] == '.' ||
        !shard.ends_with(".safetensors")) {
      return absl::InvalidArgumentError(
          mf::Cat(kWhat, ": shard name '", shard, "' is not a .safetensors file name"));
    }
    out[it.key()] = std::move(shard);
  }
  return out;
}

}  // namespace

int64_t TensorView::elements() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

kernels::MatrixView TensorView::matrix() const {
  kernels::MatrixView m;
  m.type = type;
  m.cols = dims.empty() ? 0 : dims[0];
  m.rows = dims.empty() ? 0 : elements() / dims[0];
  m.data = data;
  return m;
}

absl::Status ValidateModelConfig(const ModelConfig& c) {
  MF_RETURN_IF_ERROR(CheckRange("n_layers", c.n_layers, 1, kMaxLayers));
  MF_RETURN_IF_ERROR(CheckRange("d_model", c.d_model, 1, kMaxDim));
  MF_RETURN_IF_ERROR(CheckRange("n_heads", c.n_heads, 1, kMaxDim));
  MF_RETURN_IF_ERROR(CheckRange("n_kv_heads", c.n_kv_heads, 1, c.n_heads));
  MF_RETURN_IF_ERROR(CheckRange("head_dim", c.head_dim, 1, kMaxDim));
  MF_RETURN_IF_ERROR(CheckRange("n_heads * head_dim", int64_t{c.n_heads} * c.head_dim, 1, kMaxDim));
  MF_RETURN_IF_ERROR(CheckRange("d_ff", c.d_ff, 1, kMaxDim));
  MF_RETURN_IF_ERROR(CheckRange("vocab_size", c.vocab_size, 1, kMaxDim));
  MF_RETURN_IF_ERROR(CheckRange("context_length", c.context_length, 1, kMaxContext));
  if (c.n_heads % c.n_kv_heads != 0) {
    return absl::InvalidArgumentError(mf::Cat("model config: n_heads ", c.n_heads,
                                              " is not a multiple of n_kv_heads ", c.n_kv_heads));
  }
  if (c.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        mf::Cat("model config: head_dim ", c.head_dim, " is odd (RoPE rotates pairs)"));
  }
  if (!std::isfinite(c.rope_theta) || c.rope_theta <= 1.0f) {
    return absl::InvalidArgumentError(
        mf::Cat("model config: rope_theta ", c.rope_theta, " is not a finite number > 1"));
  }
  if (!std::isfinite(c.rms_eps) || c.rms_eps <= 0.0f || c.rms_eps >= 1.0f) {
    return absl::InvalidArgumentError(
        mf::Cat("model config: rms_eps ", c.rms_eps, " is not in (0, 1)"));
  }
  return absl::OkStatus();
}

ModelFile::~ModelFile() = default;

absl::StatusOr<std::unique_ptr<ModelFile>> ModelFile::Open(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return absl::NotFoundError(mf::Cat("model file '", path, "' does not exist"));
  }
  std::unique_ptr<ModelFile> model(new ModelFile());
  if (S_ISDIR(st.st_mode)) {
    MF_RETURN_IF_ERROR(model->LoadHfDirectory(path));
  } else {
    MF_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> gguf, GgufFile::Open(path));
    absl::Status s = model->LoadGguf(std::move(gguf));
    if (!s.ok()) return mf::Annotate(s, mf::Cat("'", path, "': "));
  }
  return model;
}

absl::StatusOr<std::unique_ptr<ModelFile>> ModelFile::ParseGguf(std::string_view bytes) {
  MF_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> gguf, GgufFile::Parse(bytes));
  std::unique_ptr<ModelFile> model(new ModelFile());
  MF_RETURN_IF_ERROR(model->LoadGguf(std::move(gguf)));
  return model;
}

absl::Status ModelFile::LoadGguf(std::unique_ptr<GgufFile> gguf) {
  format_ = "gguf";
  detail_ = mf::Cat("gguf v", gguf->version());
  MF_ASSIGN_OR_RETURN(config_, ModelConfigFromGguf(*gguf));
  MF_ASSIGN_OR_RETURN(tokenizer_, TokenizerSpecFromGguf(*gguf));
  for (const GgufTensorInfo& t : gguf->tensors()) {
    StoredTensor& s = tensors_[t.name];
    s.type_name = GgmlTypeName(t.type);
    if (kernels::IsSupportedDType(t.type)) s.type = static_cast<kernels::DType>(t.type);
    s.dims = t.dims;
    s.data = t.data;
    s.bytes = t.bytes;
  }
  std::string_view bytes = gguf->bytes();
  fingerprint_ = HashHex(XXH3_128bits(bytes.data(), bytes.size()));
  gguf_ = std::move(gguf);
  return Validate();
}

absl::Status ModelFile::Validate() {
  MF_RETURN_IF_ERROR(ValidateModelConfig(config_));
  const ModelConfig& c = config_;
  if (tokenizer_.tokens.size() > static_cast<size_t>(c.vocab_size)) {
    return absl::InvalidArgumentError(mf::Cat("model file: tokenizer has ",
                                              tokenizer_.tokens.size(),
                                              " tokens but vocab_size is ", c.vocab_size));
  }
  const int64_t d = c.d_model, q = int64_t{c.n_heads} * c.head_dim,
                kv = int64_t{c.n_kv_heads} * c.head_dim;
  auto expect = [&](const std::string& name, std::vector<int64_t> dims,
                    bool required) -> absl::Status {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) {
      if (!required) return absl::OkStatus();
      return absl::NotFoundError(mf::Cat("model file: required tensor '", name, "' is missing"));
    }
    if (it->second.dims != dims) {
      return absl::InvalidArgumentError(mf::Cat(
          "model file: tensor '", name, "' has dims {", absl::StrJoin(it->second.dims, ", "),
          "}, expected {", absl::StrJoin(dims, ", "), "} (ggml order, row length first)"));
    }
    return absl::OkStatus();
  };
  MF_RETURN_IF_ERROR(expect("token_embd.weight", {d, c.vocab_size}, true));
  MF_RETURN_IF_ERROR(expect("output_norm.weight", {d}, true));
  MF_RETURN_IF_ERROR(expect("output.weight", {d, c.vocab_size}, !c.tie_embeddings));
  for (int32_t layer = 0; layer < c.n_layers; ++layer) {
    std::string blk = mf::Cat("blk.", layer, ".");
    MF_RETURN_IF_ERROR(expect(blk + "attn_norm.weight", {d}, true));
    MF_RETURN_IF_ERROR(expect(blk + "attn_q.weight", {d, q}, true));
    MF_RETURN_IF_ERROR(expect(blk + "attn_k.weight", {d, kv}, true));
    MF_RETURN_IF_ERROR(expect(blk + "attn_v.weight", {d, kv}, true));
    MF_RETURN_IF_ERROR(expect(blk + "attn_output.weight", {q, d}, true));
    MF_RETURN_IF_ERROR(expect(blk + "attn_q.bias", {q}, c.attn_qkv_bias));
    MF_RETURN_IF_ERROR(expect(blk + "attn_k.bias", {kv}, c.attn_qkv_bias));
    MF_RETURN_IF_ERROR(expect(blk + "attn_v.bias", {kv}, c.attn_qkv_bias));
    MF_RETURN_IF_ERROR(expect(blk + "ffn_norm.weight", {d}, true));
    MF_RETURN_IF_ERROR(expect(blk + "ffn_gate.weight", {d, c.d_ff}, true));
    MF_RETURN_IF_ERROR(expect(blk + "ffn_up.weight", {d, c.d_ff}, true));
    MF_RETURN_IF_ERROR(expect(blk + "ffn_down.weight", {c.d_ff, d}, true));
  }
  return absl::OkStatus();
}

absl::StatusOr<TensorView> ModelFile::Tensor(std::string_view gguf_name) const {
  auto it = tensors_.find(gguf_name);
  if (it == tensors_.end()) {
    return absl::NotFoundError(mf::Cat("model file: no tensor '", gguf_name, "'"));
  }
  const StoredTensor& s = it->second;
  if (!s.type) {
    return absl::UnimplementedError(
        mf::Cat("model file: tensor '", gguf_name, "' has type ", s.type_name,
                ", which this build cannot compute (F32, F16, BF16, Q4_0, Q4_1, Q8_0)"));
  }
  // Float elements are read in place, so they must sit at their natural alignment.
  int64_t align = *s.type == kernels::DType::kF32 ? 4 : 2;
  if (reinterpret_cast<uintptr_t>(s.data) % align != 0) {
    return absl::InvalidArgumentError(
        mf::Cat("model file: tensor '", gguf_name, "' data is not ", align, "-byte aligned"));
  }
  return TensorView{std::string(gguf_name), *s.type, s.dims, s.data, s.bytes};
}

bool ModelFile::HasTensor(std::string_view gguf_name) const {
  return tensors_.find(gguf_name) != tensors_.end();
}

std::vector<std::string> ModelFile::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, t] : tensors_) names.push_back(name);
  return names;
}

std::string ModelFile::Describe() const {
  std::map<std::string, int> types;
  for (const auto& [name, t] : tensors_) ++types[t.type_name];
  std::vector<std::string> parts;
  for (const auto& [type, n] : types) parts.push_back(mf::Cat(type, " x", n));
  const ModelConfig& c = config_;
  return mf::Cat(c.architecture, ": ", c.n_layers, " layers, d_model ", c.d_model, ", heads ",
                 c.n_heads, "/", c.n_kv_heads, " (head_dim ", c.head_dim, "), d_ff ", c.d_ff,
                 ", vocab ", c.vocab_size, ", ctx ", c.context_length,
                 c.tie_embeddings ? ", tied embeddings" : "", "; ", detail_, ", ", tensors_.size(),
                 " tensors: ", absl::StrJoin(parts, ", "));
}

absl::Status ModelFile::LoadHfDirectory(const std::string& dir) {
  format_ = "safetensors";
  auto file = [&](std::string_view name) { return mf::Cat(dir, "/", name); };
  MF_ASSIGN_OR_RETURN(std::string config_text,
                      mf::ReadSmallFile(file("config.json"), kMaxConfigJsonBytes));
  MF_ASSIGN_OR_RETURN(std::string tokenizer_text,
                      mf::ReadSmallFile(file("tokenizer.json"), kMaxTokenizerJsonBytes));
  std::string tokenizer_config_text, index_text;
  struct stat st;
  if (::stat(file("tokenizer_config.json").c_str(), &st) == 0) {
    MF_ASSIGN_OR_RETURN(tokenizer_config_text,
                        mf::ReadSmallFile(file("tokenizer_config.json"), kMaxTokenizerJsonBytes));
  }
  MF_ASSIGN_OR_RETURN(HfConfig hf, ParseHfConfig(config_text));
  config_ = hf.model;
  MF_ASSIGN_OR_RETURN(tokenizer_, ParseHfTokenizer(tokenizer_text, tokenizer_config_text));
  if (tokenizer_.bos_id < 0 && hf.bos_id < static_cast<int64_t>(tokenizer_.tokens.size())) {
    tokenizer_.bos_id = hf.bos_id;
  }
  if (tokenizer_.eos_id < 0 && hf.eos_id < static_cast<int64_t>(tokenizer_.tokens.size())) {
    tokenizer_.eos_id = hf.eos_id;
  }

  // Which shard holds which tensor: the index when sharded, else the single model.safetensors.
  std::map<std::string, std::string> shard_of;  // tensor -> shard file name
  std::vector<std::string> shard_names;
  if (::stat(file(kIndexName).c_str(), &st) == 0) {
    MF_ASSIGN_OR_RETURN(index_text, mf::ReadSmallFile(file(kIndexName), kMaxTokenizerJsonBytes));
    MF_ASSIGN_OR_RETURN(shard_of, ParseShardIndex(index_text));
    for (const auto& [tensor, shard] : shard_of) shard_names.push_back(shard);
    std::sort(shard_names.begin(), shard_names.end());
    shard_names.erase(std::unique(shard_names.begin(), shard_names.end()), shard_names.end());
  } else {
    shard_names.push_back("model.safetensors");
  }

  XXH3_state_t* hash = XXH3_createState();
  XXH3_128bits_reset(hash);
  auto hash_file = [&](std::string_view name, std::string_view bytes) {
    uint64_t size = bytes.size();
    XXH3_128bits_update(hash, name.data(), name.size());
    XXH3_128bits_update(hash, &size, sizeof(size));
    XXH3_128bits_update(hash, bytes.data(), bytes.size());
  };
  hash_file("config.json", config_text);
  hash_file("tokenizer.json", tokenizer_text);
  hash_file("tokenizer_config.json", tokenizer_config_text);
  hash_file(kIndexName, index_text);
  absl::Status status;
  for (const std::string& shard_name : shard_names) {
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> shard =
        SafetensorsFile::Open(file(shard_name));
    if (!shard.ok()) {
      status = shard.status();
      break;
    }
    hash_file(shard_name, (*shard)->bytes());
    for (const SafetensorsTensor& t : (*shard)->tensors()) {
      if (!shard_of.empty()) {
        auto it = shard_of.find(t.name);
        if (it == shard_of.end() || it->second != shard_name) continue;  // not listed here
      }
      std::string name = GgufNameFromHf(t.name).value_or(t.name);
      if (tensors_.count(name) != 0) {
        status = absl::InvalidArgumentError(
            mf::Cat("model file: tensor '", t.name, "' appears in more than one shard"));
        break;
      }
      StoredTensor& s = tensors_[name];
      s.type_name = t.dtype;
      if (absl::StatusOr<kernels::DType> type = SafetensorsComputeType(t.dtype); type.ok()) {
        s.type = *type;
      }
      s.dims.assign(t.shape.rbegin(), t.shape.rend());  // ggml order: row length first
      if (s.dims.empty()) s.dims.push_back(1);
      s.data = t.data;
      s.bytes = t.bytes();
    }
    shards_.push_back(*std::move(shard));
  }
  fingerprint_ = HashHex(XXH3_128bits_digest(hash));
  XXH3_freeState(hash);
  MF_RETURN_IF_ERROR(status);
  for (const auto& [tensor, shard] : shard_of) {
    if (!HasTensor(GgufNameFromHf(tensor).value_or(tensor))) {
      return absl::DataLossError(mf::Cat("model file: the index puts tensor '", tensor, "' in '",
                                         shard, "', which does not hold it"));
    }
  }
  if (HasTensor("blk.0.attn_q.bias")) config_.attn_qkv_bias = true;
  detail_ = mf::Cat("safetensors, ", shards_.size(), shards_.size() == 1 ? " file" : " shards");
  absl::Status valid = Validate();
  if (!valid.ok()) return mf::Annotate(valid, mf::Cat("'", dir, "': "));
  return absl::OkStatus();
}

}  // namespace longread::engine
