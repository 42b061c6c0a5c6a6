#include "engine/model_files/model_file.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "tests/engine/model_files/gguf_builder.h"
#include "tests/engine/model_files/status_message.h"

namespace longread::engine {
namespace {

using ::testing::HasSubstr;
using testing::Message;
using testing::TinyModel;
using testing::TinyModelOptions;

TEST(ModelFileTest, TinyGgufConfigTokenizerAndTensors) {
  std::string bytes = TinyModel().Build();
  auto model = ModelFile::ParseGguf(bytes);
  ASSERT_TRUE(model.ok()) << model.status();
  const ModelConfig& c = (*model)->config();
  EXPECT_EQ(c.architecture, "llama");
  EXPECT_EQ(c.n_layers, 1);
  EXPECT_EQ(c.d_model, 32);
  EXPECT_EQ(c.n_heads, 2);
  EXPECT_EQ(c.n_kv_heads, 1);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.d_ff, 64);
  EXPECT_EQ(c.vocab_size, 32);
  EXPECT_EQ(c.context_length, 256);
  EXPECT_FLOAT_EQ(c.rope_theta, 100000.0f);
  EXPECT_FLOAT_EQ(c.rms_eps, 1e-5f);
  EXPECT_EQ(c.rope_style, RopeStyle::kInterleaved);
  EXPECT_TRUE(c.tie_embeddings);
  EXPECT_FALSE(c.attn_qkv_bias);
  const TokenizerSpec& t = (*model)->tokenizer();
  EXPECT_EQ(t.model, "gpt2");
  EXPECT_EQ(t.pre, "smollm");
  EXPECT_EQ(t.tokens.size(), 32u);
  EXPECT_EQ(t.tokens[0], "<|endoftext|>");
  EXPECT_EQ(t.token_types[0], 3);
  EXPECT_EQ(t.token_types[1], 1);
  EXPECT_EQ(t.merges, (std::vector<std::string>{"a 1", "b 2"}));
  EXPECT_EQ(t.bos_id, 0);
  EXPECT_EQ(t.eos_id, 0);
  EXPECT_EQ(t.unk_id, -1);
  EXPECT_EQ(t.chat_template, "{{ messages }}");

  auto q = (*model)->Tensor("blk.0.attn_q.weight");
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(q->type, kernels::DType::kQ4_0);
  EXPECT_EQ(q->dims, (std::vector<int64_t>{32, 32}));
  EXPECT_EQ(q->bytes, 32u * 18);
  EXPECT_EQ(q->matrix().rows, 32);
  EXPECT_EQ(q->matrix().cols, 32);
  EXPECT_EQ(q->matrix().row_bytes() * q->matrix().rows, static_cast<int64_t>(q->bytes));
  EXPECT_GE(static_cast<const char*>(q->data), bytes.data());
  EXPECT_LE(static_cast<const char*>(q->data) + q->bytes, bytes.data() + bytes.size());
  EXPECT_TRUE((*model)->HasTensor("output_norm.weight"));
  EXPECT_FALSE((*model)->HasTensor("output.weight"));
  EXPECT_EQ((*model)->Tensor("output.weight").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ((*model)->TensorNames().size(), 11u);
  EXPECT_EQ((*model)->fingerprint().size(), 32u);
  EXPECT_THAT((*model)->Describe(), HasSubstr("llama: 1 layers, d_model 32, heads 2/1"));
  EXPECT_THAT((*model)->Describe(), HasSubstr("Q4_0 x8"));
}

TEST(ModelFileTest, FingerprintFollowsTheBytes) {
  std::string a = TinyModel().Build();
  std::string b = a;
  b.back() ^= 1;  // a byte of tensor data
  auto ma = ModelFile::ParseGguf(a);
  auto mb = ModelFile::ParseGguf(b);
  ASSERT_TRUE(ma.ok() && mb.ok());
  EXPECT_NE((*ma)->fingerprint(), (*mb)->fingerprint());
  EXPECT_EQ((*ma)->fingerprint(), (*ModelFile::ParseGguf(a))->fingerprint());
}

TEST(ModelFileTest, OpensAFileByPath) {
  std::string bytes = TinyModel().Build();
  std::string path = ::testing::TempDir() + "/tiny_" + std::to_string(::getpid()) + ".gguf";
  std::ofstream(path, std::ios::binary) << bytes;
  auto model = ModelFile::Open(path);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->fingerprint(), (*ModelFile::ParseGguf(bytes))->fingerprint());
  EXPECT_EQ((*model)->format(), "gguf");
  std::filesystem::remove(path);
  EXPECT_EQ(ModelFile::Open(path).status().code(), absl::StatusCode::kNotFound);
}

TEST(ModelFileTest, QwenStyleAndUntiedHead) {
  TinyModelOptions o;
  o.arch = "qwen2";
  o.qkv_bias = true;
  o.tie_embeddings = false;
  auto model = ModelFile::ParseGguf(TinyModel(o).Build());
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_TRUE((*model)->config().attn_qkv_bias);
  EXPECT_FALSE((*model)->config().tie_embeddings);
  EXPECT_EQ((*model)->config().rope_style, RopeStyle::kHalf);
  EXPECT_TRUE((*model)->Tensor("blk.0.attn_k.bias").ok());
  o.qkv_bias = false;  // qwen2 without its biases
  EXPECT_THAT(Message(ModelFile::ParseGguf(TinyModel(o).Build()).status()),
              HasSubstr("'blk.0.attn_q.bias' is missing"));
}

TEST(ModelFileTest, ShapeMismatchNamesTheTensor) {
  TinyModelOptions o;
  o.declared_d_ff = 96;
  auto model = ModelFile::ParseGguf(TinyModel(o).Build());
  EXPECT_THAT(Message(model.status()),
              HasSubstr("tensor 'blk.0.ffn_gate.weight' has dims {32, 64}"));
  o = {};
  o.declared_layers = 2;
  EXPECT_THAT(Message(ModelFile::ParseGguf(TinyModel(o).Build()).status()),
              HasSubstr("required tensor 'blk.1.attn_norm.weight' is missing"));
}

TEST(ModelFileTest, RefusesOtherArchitecturesAndBadConfigs) {
  TinyModelOptions o;
  o.arch = "gpt2";
  EXPECT_THAT(Message(ModelFile::ParseGguf(TinyModel(o).Build()).status()),
              HasSubstr("'gpt2' is not supported"));
  o = {};
  o.n_heads = 2;
  o.n_kv_heads = 3;
  EXPECT_THAT(Message(ModelFile::ParseGguf(TinyModel(o).Build()).status()),
              HasSubstr("n_kv_heads"));
}

TEST(ModelFileTest, ValidateModelConfigBounds) {
  ModelConfig c{"llama", 2, 64, 4, 2, 16, 128, 100, 512, 10000.0f, 1e-5f};
  EXPECT_TRUE(ValidateModelConfig(c).ok());
  ModelConfig bad = c;
  bad.n_kv_heads = 3;
  EXPECT_FALSE(ValidateModelConfig(bad).ok());
  bad = c;
  bad.vocab_size = (1 << 20) + 1;
  EXPECT_THAT(Message(ValidateModelConfig(bad)), HasSubstr("vocab_size"));
  bad = c;
  bad.rms_eps = 0;
  EXPECT_FALSE(ValidateModelConfig(bad).ok());
  bad = c;
  bad.rope_theta = std::numeric_limits<float>::infinity();
  EXPECT_FALSE(ValidateModelConfig(bad).ok());
  bad = c;
  bad.n_layers = 0;
  EXPECT_FALSE(ValidateModelConfig(bad).ok());
}

TEST(ModelFileTest, UncomputableTypeIsAnErrorOnlyWhenRequested) {
  testing::GgufBuilder b = TinyModel();
  b.Tensor("extra.weight", {256}, 12, 144);  // Q4_K
  auto model = ModelFile::ParseGguf(b.Build());
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_TRUE((*model)->HasTensor("extra.weight"));
  auto t = (*model)->Tensor("extra.weight");
  EXPECT_EQ(t.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(Message(t.status()), HasSubstr("type Q4_K"));
}

// The default model, when present (scripts/setup.sh downloads it).
TEST(ModelFileTest, DefaultModel) {
  const char* root = std::getenv("LONGREAD_SOURCE_DIR");
  std::string path = std::string(root ? root : ".") + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "no " << path;
  auto model = ModelFile::Open(path);
  ASSERT_TRUE(model.ok()) << model.status();
  const ModelConfig& c = (*model)->config();
  EXPECT_EQ(c.architecture, "llama");
  EXPECT_EQ(c.n_layers, 30);
  EXPECT_EQ(c.d_model, 576);
  EXPECT_EQ(c.n_heads, 9);
  EXPECT_EQ(c.n_kv_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.d_ff, 1536);
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_EQ(c.context_length, 8192);
  EXPECT_FLOAT_EQ(c.rope_theta, 100000.0f);
  EXPECT_NEAR(c.rms_eps, 1e-5f, 1e-9f);
  EXPECT_TRUE(c.tie_embeddings);
  EXPECT_EQ(c.rope_style, RopeStyle::kInterleaved);
  EXPECT_EQ((*model)->TensorNames().size(), 272u);
  const TokenizerSpec& t = (*model)->tokenizer();
  EXPECT_EQ(t.model, "gpt2");
  EXPECT_EQ(t.pre, "smollm");
  EXPECT_EQ(t.tokens.size(), 49152u);
  EXPECT_EQ(t.token_types.size(), 49152u);
  EXPECT_EQ(t.merges.size(), 48900u);
  EXPECT_EQ(t.bos_id, 1);
  EXPECT_EQ(t.eos_id, 2);
  EXPECT_FALSE(t.chat_template.empty());
  auto embd = (*model)->Tensor("token_embd.weight");
  ASSERT_TRUE(embd.ok());
  EXPECT_EQ(embd->type, kernels::DType::kQ8_0);
  EXPECT_EQ(embd->dims, (std::vector<int64_t>{576, 49152}));
  auto q = (*model)->Tensor("blk.29.attn_q.weight");
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->type, kernels::DType::kQ4_1);
  EXPECT_EQ((*model)->Tensor("blk.0.attn_norm.weight")->type, kernels::DType::kF32);
  EXPECT_EQ((*model)->fingerprint().size(), 32u);
  std::cout << (*model)->Describe() << "\nfingerprint " << (*model)->fingerprint() << "\n";
}

}  // namespace
}  // namespace longread::engine
