#include "engine/model_files/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/engine/model_files/hf_fixtures.h"
#include "tests/engine/model_files/status_message.h"

namespace longread::engine {
namespace {

using ::testing::HasSubstr;
using testing::Message;
using testing::SafetensorsBytes;
using testing::SafetensorsFromHeader;

absl::Status ParseHeader(const std::string& header, uint64_t data_bytes) {
  std::string bytes = SafetensorsFromHeader(header, data_bytes);
  return SafetensorsFile::Parse(bytes).status();
}

TEST(SafetensorsTest, ParsesTensorsAndMetadata) {
  std::string bytes = SafetensorsBytes(
      {{"b.weight", "BF16", {3, 4}, 2}, {"a.weight", "F32", {5}, 4}, {"ids", "I64", {2}, 8}},
      {{"format", "pt"}});
  auto file = SafetensorsFile::Parse(bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ((*file)->tensors().size(), 3u);
  EXPECT_EQ((*file)->tensors()[0].name, "a.weight");  // sorted by name
  const SafetensorsTensor* b = (*file)->Find("b.weight");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->dtype, "BF16");
  EXPECT_EQ(b->shape, (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(b->begin, 0u);
  EXPECT_EQ(b->bytes(), 24u);
  EXPECT_EQ(b->data, reinterpret_cast<const uint8_t*>(bytes.data()) + (*file)->data_offset());
  EXPECT_EQ((*file)->data_offset() % 8, 0u);
  EXPECT_EQ((*file)->Find("a.weight")->begin, 24u);
  EXPECT_EQ((*file)->Find("missing"), nullptr);
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  EXPECT_EQ(*SafetensorsComputeType("BF16"), kernels::DType::kBF16);
  EXPECT_EQ(*SafetensorsComputeType("F16"), kernels::DType::kF16);
  EXPECT_THAT(Message(SafetensorsComputeType("I64").status()), HasSubstr("'I64'"));
}

TEST(SafetensorsTest, EveryTruncationIsAnError) {
  std::string bytes = SafetensorsBytes({{"w", "F32", {4, 4}, 4}, {"v", "F16", {3}, 2}});
  for (size_t n = 0; n < bytes.size(); ++n) {
    std::string cut = bytes.substr(0, n);
    EXPECT_FALSE(SafetensorsFile::Parse(cut).ok()) << n;
  }
}

TEST(SafetensorsTest, HeaderLengthChecked) {
  std::string bytes = SafetensorsBytes({{"w", "F32", {2}, 4}});
  std::string huge = bytes;
  uint64_t len = uint64_t{200} << 20;
  std::memcpy(huge.data(), &len, 8);
  EXPECT_THAT(Message(SafetensorsFile::Parse(huge).status()), HasSubstr("header length"));
  len = ~uint64_t{0};
  std::memcpy(huge.data(), &len, 8);
  EXPECT_EQ(SafetensorsFile::Parse(huge).status().code(), absl::StatusCode::kDataLoss);
}

TEST(SafetensorsTest, HostileHeadersRefused) {
  EXPECT_THAT(Message(ParseHeader("[1,2]", 0)), HasSubstr("not a JSON object"));
  EXPECT_THAT(Message(ParseHeader("{\"w\":", 0)), HasSubstr("invalid JSON at byte offset"));
  EXPECT_THAT(Message(ParseHeader(std::string(100, '[') + std::string(100, ']'), 0)),
              HasSubstr("nested deeper"));
  EXPECT_THAT(Message(ParseHeader(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                  R"("w":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                                  16)),
              HasSubstr("duplicate key 'w'"));
  EXPECT_THAT(Message(ParseHeader(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,80]}})", 8)),
              HasSubstr("lie outside the data section"));
  EXPECT_THAT(Message(ParseHeader(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8)),
              HasSubstr("lie outside"));
  EXPECT_THAT(Message(ParseHeader(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8)),
              HasSubstr("need 3 x 4"));
  EXPECT_THAT(Message(ParseHeader(R"({"w":{"dtype":"Q9","shape":[2],"data_offsets":[0,8]}})", 8)),
              HasSubstr("unknown dtype 'Q9'"));
  EXPECT_THAT(Message(ParseHeader(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8)),
              HasSubstr("non-negative"));
  EXPECT_THAT(Message(ParseHeader(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],)"
                                  R"("data_offsets":[0,8]}})",
                                  8)),
              HasSubstr("overflow"));
  EXPECT_THAT(Message(ParseHeader(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", 8)),
              HasSubstr("data_offsets"));
  EXPECT_THAT(Message(ParseHeader(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                  R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                  12)),
              HasSubstr("overlaps tensor 'a'"));
  EXPECT_THAT(Message(ParseHeader(R"({"__metadata__":{"k":1}})", 0)), HasSubstr("not a string"));
}

TEST(SafetensorsTest, MapsHfNamesToGguf) {
  EXPECT_EQ(GgufNameFromHf("model.embed_tokens.weight"), "token_embd.weight");
  EXPECT_EQ(GgufNameFromHf("model.norm.weight"), "output_norm.weight");
  EXPECT_EQ(GgufNameFromHf("lm_head.weight"), "output.weight");
  EXPECT_EQ(GgufNameFromHf("model.layers.12.self_attn.q_proj.weight"), "blk.12.attn_q.weight");
  EXPECT_EQ(GgufNameFromHf("model.layers.0.self_attn.k_proj.bias"), "blk.0.attn_k.bias");
  EXPECT_EQ(GgufNameFromHf("model.layers.3.self_attn.o_proj.weight"), "blk.3.attn_output.weight");
  EXPECT_EQ(GgufNameFromHf("model.layers.3.post_attention_layernorm.weight"),
            "blk.3.ffn_norm.weight");
  EXPECT_EQ(GgufNameFromHf("model.layers.3.mlp.down_proj.weight"), "blk.3.ffn_down.weight");
  EXPECT_EQ(GgufNameFromHf("model.layers.x.mlp.down_proj.weight"), std::nullopt);
  EXPECT_EQ(GgufNameFromHf("model.layers.01.mlp.down_proj.weight"), std::nullopt);
  EXPECT_EQ(GgufNameFromHf("model.layers.1.rotary_emb.inv_freq"), std::nullopt);
}

}  // namespace
}  // namespace longread::engine
