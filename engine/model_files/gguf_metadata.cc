#include "engine/model_files/gguf_metadata.h"

#include <limits>
#include <string>

#include "engine/model_files/internal.h"

namespace longread::engine {
namespace {

// Reads an integer key into an int32 field; absent keys leave `out` alone when not required.
absl::Status ReadI32(const GgufFile& file, const std::string& key, bool required, int32_t* out) {
  if (file.Find(key) == nullptr) {
    if (!required) return absl::OkStatus();
    return absl::NotFoundError(mf::Cat("gguf: required key '", key, "' is missing"));
  }
  MF_ASSIGN_OR_RETURN(int64_t v, file.GetI64(key));
  if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max()) {
    return absl::OutOfRangeError(mf::Cat("gguf: key '", key, "': value ", v, " out of range"));
  }
  *out = static_cast<int32_t>(v);
  return absl::OkStatus();
}

absl::Status ReadF32(const GgufFile& file, const std::string& key, float* out) {
  if (file.Find(key) == nullptr) return absl::OkStatus();
  MF_ASSIGN_OR_RETURN(*out, file.GetF32(key));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> ModelConfigFromGguf(const GgufFile& file) {
  ModelConfig c;
  MF_ASSIGN_OR_RETURN(c.architecture, file.GetString("general.architecture"));
  const std::string& a = c.architecture;
  if (a != "llama" && a != "mistral" && a != "qwen2") {
    return absl::InvalidArgumentError(
        mf::Cat("gguf: general.architecture '", a, "' is not supported (llama, mistral, qwen2)"));
  }
  MF_RETURN_IF_ERROR(ReadI32(file, a + ".block_count", true, &c.n_layers));
  MF_RETURN_IF_ERROR(ReadI32(file, a + ".embedding_length", true, &c.d_model));
  MF_RETURN_IF_ERROR(ReadI32(file, a + ".attention.head_count", true, &c.n_heads));
  c.n_kv_heads = c.n_heads;
  MF_RETURN_IF_ERROR(ReadI32(file, a + ".attention.head_count_kv", false, &c.n_kv_heads));
  MF_RETURN_IF_ERROR(ReadI32(file, a + ".feed_forward_length", true, &c.d_ff));
  MF_RETURN_IF_ERROR(ReadI32(file, a + ".context_length", true, &c.context_length));
  c.rope_theta = 10000.0f;
  MF_RETURN_IF_ERROR(ReadF32(file, a + ".rope.freq_base", &c.rope_theta));
  MF_RETURN_IF_ERROR(ReadF32(file, a + ".attention.layer_norm_rms_epsilon", &c.rms_eps));
  if (c.n_heads > 0) c.head_dim = c.d_model / c.n_heads;
  MF_RETURN_IF_ERROR(ReadI32(file, a + ".attention.key_length", false, &c.head_dim));
  int32_t value_length = c.head_dim;
  MF_RETURN_IF_ERROR(ReadI32(file, a + ".attention.value_length", false, &value_length));
  if (value_length != c.head_dim) {
    return absl::InvalidArgumentError(mf::Cat("gguf: ", a, ".attention.value_length ", value_length,
                                              " differs from key_length ", c.head_dim,
                                              " (not supported)"));
  }
  std::string scaling_key = a + ".rope.scaling.type";
  if (file.Find(scaling_key) != nullptr) {
    MF_ASSIGN_OR_RETURN(std::string scaling, file.GetString(scaling_key));
    if (scaling != "none") {
      return absl::InvalidArgumentError(
          mf::Cat("gguf: ", scaling_key, " '", scaling, "' is not supported"));
    }
  }
  if (file.Find(a + ".vocab_size") != nullptr) {
    MF_RETURN_IF_ERROR(ReadI32(file, a + ".vocab_size", true, &c.vocab_size));
  } else if (const GgufValue* tokens = file.Find("tokenizer.ggml.tokens");
             tokens != nullptr && tokens->is_array()) {
    if (tokens->size() > static_cast<uint64_t>(std::numeric_limits<int32_t>::max())) {
      return absl::OutOfRangeError("gguf: tokenizer.ggml.tokens is too long");
    }
    c.vocab_size = static_cast<int32_t>(tokens->size());
  } else {
    return absl::NotFoundError(
        mf::Cat("gguf: neither ", a, ".vocab_size nor tokenizer.ggml.tokens is present"));
  }
  c.rope_style = a == "qwen2" ? RopeStyle::kHalf : RopeStyle::kInterleaved;
  c.tie_embeddings = file.FindTensor("output.weight") == nullptr;
  c.attn_qkv_bias = a == "qwen2" || file.FindTensor("blk.0.attn_q.bias") != nullptr;
  return c;
}

absl::StatusOr<TokenizerSpec> TokenizerSpecFromGguf(const GgufFile& file) {
  TokenizerSpec t;
  MF_ASSIGN_OR_RETURN(t.model, file.GetString("tokenizer.ggml.model"));
  t.pre = "default";
  if (file.Find("tokenizer.ggml.pre") != nullptr) {
    MF_ASSIGN_OR_RETURN(t.pre, file.GetString("tokenizer.ggml.pre"));
  }
  MF_ASSIGN_OR_RETURN(t.tokens, file.GetStringArray("tokenizer.ggml.tokens"));
  if (file.Find("tokenizer.ggml.token_type") != nullptr) {
    MF_ASSIGN_OR_RETURN(std::vector<int64_t> types, file.GetI64Array("tokenizer.ggml.token_type"));
    if (types.size() != t.tokens.size()) {
      return absl::InvalidArgumentError(mf::Cat("gguf: tokenizer.ggml.token_type has ",
                                                types.size(), " entries but there are ",
                                                t.tokens.size(), " tokens"));
    }
    t.token_types.reserve(types.size());
    for (size_t i = 0; i < types.size(); ++i) {
      if (types[i] < 0 || types[i] > 6) {
        return absl::InvalidArgumentError(
            mf::Cat("gguf: tokenizer.ggml.token_type[", i, "] = ", types[i], " not in [0, 6]"));
      }
      t.token_types.push_back(static_cast<int32_t>(types[i]));
    }
  } else {
    t.token_types.assign(t.tokens.size(), 1);
  }
  if (file.Find("tokenizer.ggml.merges") != nullptr) {
    MF_ASSIGN_OR_RETURN(t.merges, file.GetStringArray("tokenizer.ggml.merges"));
  }
  struct IdKey {
    const char* key;
    int32_t* out;
  } ids[] = {{"tokenizer.ggml.bos_token_id", &t.bos_id},
             {"tokenizer.ggml.eos_token_id", &t.eos_id},
             {"tokenizer.ggml.unknown_token_id", &t.unk_id},
             {"tokenizer.ggml.padding_token_id", &t.pad_id}};
  for (const IdKey& id : ids) {
    if (file.Find(id.key) == nullptr) continue;
    MF_ASSIGN_OR_RETURN(int64_t v, file.GetI64(id.key));
    if (v < -1 || v >= static_cast<int64_t>(t.tokens.size())) {
      return absl::OutOfRangeError(
          mf::Cat("gguf: ", id.key, " = ", v, " is not a token id (", t.tokens.size(), " tokens)"));
    }
    *id.out = static_cast<int32_t>(v);
  }
  if (file.Find("tokenizer.ggml.add_bos_token") != nullptr) {
    MF_ASSIGN_OR_RETURN(t.add_bos, file.GetBool("tokenizer.ggml.add_bos_token"));
  }
  if (file.Find("tokenizer.chat_template") != nullptr) {
    MF_ASSIGN_OR_RETURN(t.chat_template, file.GetString("tokenizer.chat_template"));
  }
  return t;
}

}  // namespace longread::engine
