// Test-only builders for Hugging Face files: safetensors bytes, config.json, tokenizer.json and
// a whole tiny model directory.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace longread::engine::testing {

struct StTensor {
  std::string name;
  std::string dtype = "F32";
  std::vector<uint64_t> shape;
  uint64_t elem_size = 4;
};

// Raw header text followed by `data_bytes` of pattern, for hostile headers.
inline std::string SafetensorsFromHeader(std::string header, uint64_t data_bytes) {
  while ((header.size() + 8) % 8 != 0) header.push_back(' ');
  uint64_t n = header.size();
  std::string out(reinterpret_cast<const char*>(&n), 8);
  out += header;
  for (uint64_t i = 0; i < data_bytes; ++i) out.push_back(static_cast<char>(i * 13 + 1));
  return out;
}

// A safetensors file holding `tensors` back to back (filled with a byte pattern); the header is
// padded with spaces to a multiple of 8 as the reference writer does.
inline std::string SafetensorsBytes(const std::vector<StTensor>& tensors,
                                    const nlohmann::json& metadata = nullptr) {
  nlohmann::json header = nlohmann::json::object();
  uint64_t offset = 0;
  for (const StTensor& t : tensors) {
    uint64_t n = t.elem_size;
    for (uint64_t d : t.shape) n *= d;
    header[t.name] = {
        {"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  if (!metadata.is_null()) header["__metadata__"] = metadata;
  return SafetensorsFromHeader(header.dump(), offset);
}

struct TinyHf {
  std::string model_type = "llama";
  int layers = 1, d_model = 32, heads = 2, kv_heads = 1, d_ff = 64, vocab = 8;
  bool tie = true;
  std::string dtype = "BF16";
};

inline nlohmann::json TinyHfConfig(const TinyHf& o = {}) {
  return {{"model_type", o.model_type},
          {"architectures", {"LlamaForCausalLM"}},
          {"num_hidden_layers", o.layers},
          {"hidden_size", o.d_model},
          {"num_attention_heads", o.heads},
          {"num_key_value_heads", o.kv_heads},
          {"intermediate_size", o.d_ff},
          {"vocab_size", o.vocab},
          {"max_position_embeddings", 512},
          {"rope_theta", 100000.0},
          {"rms_norm_eps", 1e-5},
          {"rope_scaling", nullptr},
          {"tie_word_embeddings", o.tie},
          {"bos_token_id", 1},
          {"eos_token_id", 2}};
}

// A SmolLM-style tokenizer: Digits(individual) then ByteLevel.
inline nlohmann::json TinyTokenizer() {
  nlohmann::json vocab = {{"<|endoftext|>", 0},
                          {"<|im_start|>", 1},
                          {"<|im_end|>", 2},
                          {"a", 3},
                          {"b", 4},
                          {"ab", 5},
                          {"Ġ", 6},
                          {"Ġab", 7}};
  return {
      {"version", "1.0"},
      {"added_tokens",
       {{{"id", 0}, {"content", "<|endoftext|>"}, {"special", true}},
        {{"id", 1}, {"content", "<|im_start|>"}, {"special", true}},
        {{"id", 2}, {"content", "<|im_end|>"}, {"special", true}}}},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Digits"}, {"individual_digits", true}},
          {{"type", "ByteLevel"},
           {"add_prefix_space", false},
           {"trim_offsets", true},
           {"use_regex", true}}}}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model",
       {{"type", "BPE"}, {"unk_token", nullptr}, {"vocab", vocab}, {"merges", {"a b", "Ġ ab"}}}}};
}

// HF tensors of a tiny model (HF names, [out, in] shapes).
inline std::vector<StTensor> TinyHfTensors(const TinyHf& o = {}) {
  uint64_t es = o.dtype == "F32" ? 4 : 2, d = o.d_model, hd = o.d_model / o.heads, q = o.heads * hd,
           kv = o.kv_heads * hd, ff = o.d_ff, v = o.vocab;
  std::vector<StTensor> t = {{"model.embed_tokens.weight", o.dtype, {v, d}, es},
                             {"model.norm.weight", o.dtype, {d}, es}};
  if (!o.tie) t.push_back({"lm_head.weight", o.dtype, {v, d}, es});
  for (int l = 0; l < o.layers; ++l) {
    std::string p = "model.layers." + std::to_string(l) + ".";
    t.push_back({p + "input_layernorm.weight", o.dtype, {d}, es});
    t.push_back({p + "self_attn.q_proj.weight", o.dtype, {q, d}, es});
    t.push_back({p + "self_attn.k_proj.weight", o.dtype, {kv, d}, es});
    t.push_back({p + "self_attn.v_proj.weight", o.dtype, {kv, d}, es});
    t.push_back({p + "self_attn.o_proj.weight", o.dtype, {d, q}, es});
    if (o.model_type == "qwen2") {
      t.push_back({p + "self_attn.q_proj.bias", o.dtype, {q}, es});
      t.push_back({p + "self_attn.k_proj.bias", o.dtype, {kv}, es});
      t.push_back({p + "self_attn.v_proj.bias", o.dtype, {kv}, es});
    }
    t.push_back({p + "post_attention_layernorm.weight", o.dtype, {d}, es});
    t.push_back({p + "mlp.gate_proj.weight", o.dtype, {ff, d}, es});
    t.push_back({p + "mlp.up_proj.weight", o.dtype, {ff, d}, es});
    t.push_back({p + "mlp.down_proj.weight", o.dtype, {d, ff}, es});
  }
  return t;
}

inline void WriteFile(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

// Writes config.json, tokenizer.json and the weights (split over `shards` files with an index
// when shards > 1) into `dir`.
inline void WriteTinyHfDir(const std::filesystem::path& dir, const TinyHf& o = {}, int shards = 1) {
  std::filesystem::create_directories(dir);
  WriteFile(dir / "config.json", TinyHfConfig(o).dump(2));
  WriteFile(dir / "tokenizer.json", TinyTokenizer().dump());
  std::vector<StTensor> all = TinyHfTensors(o);
  if (shards == 1) {
    WriteFile(dir / "model.safetensors", SafetensorsBytes(all, {{"format", "pt"}}));
    return;
  }
  nlohmann::json map = nlohmann::json::object();
  for (int s = 0; s < shards; ++s) {
    std::vector<StTensor> part;
    std::string name =
        "model-0000" + std::to_string(s + 1) + "-of-0000" + std::to_string(shards) + ".safetensors";
    for (size_t i = s; i < all.size(); i += shards) {
      part.push_back(all[i]);
      map[all[i].name] = name;
    }
    WriteFile(dir / name, SafetensorsBytes(part));
  }
  WriteFile(dir / "model.safetensors.index.json",
            nlohmann::json({{"metadata", {{"total_size", 0}}}, {"weight_map", map}}).dump());
}

}  // namespace longread::engine::testing
