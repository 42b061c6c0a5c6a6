// Test-only GGUF writer: builds valid files and, through its overrides, hostile ones, in memory.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

namespace longread::engine::testing {

class GgufBuilder {
 public:
  enum Type : uint32_t {
    kU8 = 0,
    kI8 = 1,
    kU16 = 2,
    kI16 = 3,
    kU32 = 4,
    kI32 = 5,
    kF32 = 6,
    kBool = 7,
    kString = 8,
    kArray = 9,
    kU64 = 10,
    kI64 = 11,
    kF64 = 12,
  };

  // Encodings of single values, for composing Kv() and nested arrays by hand.
  template <typename T>
  static std::string Pod(T v) {
    std::string s(sizeof(T), '\0');
    std::memcpy(s.data(), &v, sizeof(T));
    return s;
  }
  static std::string Str(const std::string& s) { return Pod<uint64_t>(s.size()) + s; }
  static std::string ArrayHeader(Type elem, uint64_t count) {
    return Pod<uint32_t>(elem) + Pod<uint64_t>(count);
  }

  GgufBuilder& Version(uint32_t v) {
    version_ = v;
    return *this;
  }
  GgufBuilder& Alignment(uint64_t a) {
    alignment_ = a;
    return *this;
  }
  // Counts written in the header instead of the real ones.
  GgufBuilder& TensorCountOverride(uint64_t n) {
    tensor_count_ = n;
    return *this;
  }
  GgufBuilder& KvCountOverride(uint64_t n) {
    kv_count_ = n;
    return *this;
  }

  // A metadata entry with an already-encoded value.
  GgufBuilder& Kv(const std::string& key, Type type, const std::string& value) {
    kvs_ += Str(key) + Pod<uint32_t>(type) + value;
    ++n_kv_;
    return *this;
  }
  GgufBuilder& U32(const std::string& k, uint32_t v) { return Kv(k, kU32, Pod(v)); }
  GgufBuilder& I32(const std::string& k, int32_t v) { return Kv(k, kI32, Pod(v)); }
  GgufBuilder& U64(const std::string& k, uint64_t v) { return Kv(k, kU64, Pod(v)); }
  GgufBuilder& F32(const std::string& k, float v) { return Kv(k, kF32, Pod(v)); }
  GgufBuilder& Bool(const std::string& k, bool v) { return Kv(k, kBool, Pod<uint8_t>(v)); }
  GgufBuilder& String(const std::string& k, const std::string& v) { return Kv(k, kString, Str(v)); }
  GgufBuilder& Strings(const std::string& k, const std::vector<std::string>& v) {
    std::string enc = ArrayHeader(kString, v.size());
    for (const std::string& s : v) enc += Str(s);
    return Kv(k, kArray, enc);
  }
  GgufBuilder& I32s(const std::string& k, const std::vector<int32_t>& v) {
    std::string enc = ArrayHeader(kI32, v.size());
    for (int32_t x : v) enc += Pod(x);
    return Kv(k, kArray, enc);
  }

  // A tensor of `bytes` bytes, placed after the previous one (aligned) unless `offset` is given.
  // The data section is filled with a deterministic byte pattern.
  GgufBuilder& Tensor(const std::string& name, const std::vector<uint64_t>& dims, uint32_t type,
                      uint64_t bytes, std::optional<uint64_t> offset = std::nullopt) {
    TensorSpec t{name, dims, type, bytes, offset.value_or(0), offset.has_value()};
    tensors_.push_back(t);
    return *this;
  }

  std::string Build() const {
    std::string out = "GGUF" + Pod<uint32_t>(version_);
    out += Pod<uint64_t>(tensor_count_.value_or(tensors_.size()));
    out += Pod<uint64_t>(kv_count_.value_or(n_kv_));
    out += kvs_;
    uint64_t next = 0, data_size = 0;
    for (const TensorSpec& t : tensors_) {
      uint64_t offset = t.has_offset ? t.offset : next;
      out += Str(t.name) + Pod<uint32_t>(t.dims.size());
      for (uint64_t d : t.dims) out += Pod<uint64_t>(d);
      out += Pod<uint32_t>(t.type) + Pod<uint64_t>(offset);
      next = (offset + t.bytes + alignment_ - 1) / alignment_ * alignment_;
      if (offset + t.bytes > data_size && offset < (uint64_t{1} << 24)) {
        data_size = offset + t.bytes;
      }
    }
    out.resize((out.size() + alignment_ - 1) / alignment_ * alignment_, '\0');
    for (uint64_t i = 0; i < data_size; ++i) out.push_back(static_cast<char>(i * 7 + 3));
    return out;
  }

 private:
  struct TensorSpec {
    std::string name;
    std::vector<uint64_t> dims;
    uint32_t type;
    uint64_t bytes;
    uint64_t offset;
    bool has_offset;
  };

  uint32_t version_ = 3;
  uint64_t alignment_ = 32;
  std::optional<uint64_t> tensor_count_, kv_count_;
  std::string kvs_;
  uint64_t n_kv_ = 0;
  std::vector<TensorSpec> tensors_;
};

// Shape of a tiny llama-style model whose file stays a few KiB (Q4_0 matrices, F32 norms).
struct TinyModelOptions {
  std::string arch = "llama";
  uint32_t n_layers = 1;
  uint32_t d_model = 32;
  uint32_t n_heads = 2;
  uint32_t n_kv_heads = 1;
  uint32_t d_ff = 64;
  uint32_t vocab = 32;
  bool tie_embeddings = true;
  bool qkv_bias = false;
  // Values written to the metadata instead of the real ones (0: the real one), to make the
  // tensors disagree with the config.
  uint32_t declared_layers = 0;
  uint32_t declared_d_ff = 0;
};

inline GgufBuilder TinyModel(const TinyModelOptions& o = {}) {
  GgufBuilder b;
  const std::string& a = o.arch;
  b.String("general.architecture", a)
      .U32(a + ".block_count", o.declared_layers ? o.declared_layers : o.n_layers)
      .U32(a + ".context_length", 256)
      .U32(a + ".embedding_length", o.d_model)
      .U32(a + ".feed_forward_length", o.declared_d_ff ? o.declared_d_ff : o.d_ff)
      .U32(a + ".attention.head_count", o.n_heads)
      .U32(a + ".attention.head_count_kv", o.n_kv_heads)
      .F32(a + ".rope.freq_base", 100000.0f)
      .F32(a + ".attention.layer_norm_rms_epsilon", 1e-5f)
      .String("tokenizer.ggml.model", "gpt2")
      .String("tokenizer.ggml.pre", "smollm");
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  for (uint32_t i = 0; i < o.vocab; ++i) {
    tokens.push_back(i == 0 ? "<|endoftext|>"
                            : std::string(1, static_cast<char>('a' + i % 26)) + std::to_string(i));
    types.push_back(i == 0 ? 3 : 1);
  }
  b.Strings("tokenizer.ggml.tokens", tokens)
      .I32s("tokenizer.ggml.token_type", types)
      .Strings("tokenizer.ggml.merges", {"a 1", "b 2"})
      .U32("tokenizer.ggml.bos_token_id", 0)
      .U32("tokenizer.ggml.eos_token_id", 0)
      .Bool("tokenizer.ggml.add_bos_token", false)
      .String("tokenizer.chat_template", "{{ messages }}");
  const uint64_t d = o.d_model, hd = o.d_model / o.n_heads, q = o.n_heads * hd,
                 kv = o.n_kv_heads * hd;
  auto q40 = [&](const std::string& name, uint64_t cols, uint64_t rows) {
    b.Tensor(name, {cols, rows}, 2, cols / 32 * 18 * rows);
  };
  auto f32 = [&](const std::string& name, uint64_t n) { b.Tensor(name, {n}, 0, n * 4); };
  q40("token_embd.weight", d, o.vocab);
  f32("output_norm.weight", d);
  if (!o.tie_embeddings) q40("output.weight", d, o.vocab);
  for (uint32_t l = 0; l < o.n_layers; ++l) {
    std::string p = "blk." + std::to_string(l) + ".";
    f32(p + "attn_norm.weight", d);
    q40(p + "attn_q.weight", d, q);
    q40(p + "attn_k.weight", d, kv);
    q40(p + "attn_v.weight", d, kv);
    q40(p + "attn_output.weight", q, d);
    if (o.qkv_bias) {
      f32(p + "attn_q.bias", q);
      f32(p + "attn_k.bias", kv);
      f32(p + "attn_v.bias", kv);
    }
    f32(p + "ffn_norm.weight", d);
    q40(p + "ffn_gate.weight", d, o.d_ff);
    q40(p + "ffn_up.weight", d, o.d_ff);
    q40(p + "ffn_down.weight", o.d_ff, d);
  }
  return b;
}

}  // namespace longread::engine::testing
