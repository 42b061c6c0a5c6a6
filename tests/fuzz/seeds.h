// Seed inputs for the fuzzers, built in memory from the test builders (no binaries committed).
#pragma once

#include <string>
#include <vector>

#include "tests/engine/model_files/gguf_builder.h"
#include "tests/engine/model_files/hf_fixtures.h"

namespace longread::fuzz {

inline std::vector<std::string> GgufSeeds() {
  using engine::testing::GgufBuilder;
  engine::testing::TinyModelOptions qwen;
  qwen.arch = "qwen2";
  qwen.qkv_bias = true;
  qwen.tie_embeddings = false;
  qwen.vocab = 8;
  qwen.d_model = 32;
  std::string nested = GgufBuilder::ArrayHeader(GgufBuilder::kArray, 1) +
                       GgufBuilder::ArrayHeader(GgufBuilder::kF64, 1) +
                       GgufBuilder::Pod<double>(1.0);
  return {
      engine::testing::TinyModel().Build(),
      engine::testing::TinyModel(qwen).Version(2).Build(),
      GgufBuilder()
          .U32("general.alignment", 64)
          .Alignment(64)
          .Kv("i8", GgufBuilder::kI8, GgufBuilder::Pod<int8_t>(-3))
          .Kv("nested", GgufBuilder::kArray, nested)
          .String("s", "text")
          .Tensor("a", {256}, 12, 144)
          .Tensor("b", {32, 2}, 8, 68)
          .Build(),
  };
}

inline std::vector<std::string> SafetensorsSeeds() {
  using engine::testing::StTensor;
  return {
      engine::testing::SafetensorsBytes({{"w", "F32", {2, 3}, 4}, {"b", "BF16", {3}, 2}},
                                        {{"format", "pt"}}),
      engine::testing::SafetensorsBytes(
          {{"model.layers.0.self_attn.q_proj.weight", "F16", {4, 4}, 2}, {"x", "I64", {}, 8}}),
  };
}

inline std::vector<std::string> HfJsonSeeds() {
  std::string tokenizer = engine::testing::TinyTokenizer().dump();
  engine::testing::TinyHf qwen;
  qwen.model_type = "qwen2";
  return {
      std::string(1, '\0') + engine::testing::TinyHfConfig().dump(),
      std::string(1, '\0') + engine::testing::TinyHfConfig(qwen).dump(),
      std::string(1, '\1') + tokenizer,
      std::string(1, '\2') + tokenizer + std::string(1, '\0') +
          R"({"add_bos_token": true, "bos_token": "<|im_start|>", "chat_template": "x"})",
  };
}

}  // namespace longread::fuzz
