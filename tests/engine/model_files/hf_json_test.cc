#include "engine/model_files/hf_json.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/engine/model_files/hf_fixtures.h"
#include "tests/engine/model_files/status_message.h"

namespace longread::engine {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;
using testing::Message;
using testing::TinyHfConfig;
using testing::TinyTokenizer;

TEST(HfConfigTest, ReadsLlamaFields) {
  auto hf = ParseHfConfig(TinyHfConfig().dump());
  ASSERT_TRUE(hf.ok()) << hf.status();
  const ModelConfig& c = hf->model;
  EXPECT_EQ(c.architecture, "llama");
  EXPECT_EQ(c.n_layers, 1);
  EXPECT_EQ(c.d_model, 32);
  EXPECT_EQ(c.n_heads, 2);
  EXPECT_EQ(c.n_kv_heads, 1);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.d_ff, 64);
  EXPECT_EQ(c.vocab_size, 8);
  EXPECT_EQ(c.context_length, 512);
  EXPECT_FLOAT_EQ(c.rope_theta, 100000.0f);
  EXPECT_FLOAT_EQ(c.rms_eps, 1e-5f);
  EXPECT_TRUE(c.tie_embeddings);
  EXPECT_FALSE(c.attn_qkv_bias);
  EXPECT_EQ(c.rope_style, RopeStyle::kHalf);
  EXPECT_EQ(hf->bos_id, 1);
  EXPECT_EQ(hf->eos_id, 2);
}

TEST(HfConfigTest, DefaultsAndQwen) {
  json j = TinyHfConfig();
  j.erase("num_key_value_heads");
  j.erase("rope_theta");
  j.erase("rms_norm_eps");
  j.erase("tie_word_embeddings");
  j["head_dim"] = nullptr;
  j["model_type"] = "qwen2";
  j["eos_token_id"] = {2, 0};
  auto hf = ParseHfConfig(j.dump());
  ASSERT_TRUE(hf.ok()) << hf.status();
  EXPECT_EQ(hf->model.n_kv_heads, 2);
  EXPECT_EQ(hf->model.head_dim, 16);
  EXPECT_FLOAT_EQ(hf->model.rope_theta, 10000.0f);
  EXPECT_FLOAT_EQ(hf->model.rms_eps, 1e-6f);
  EXPECT_FALSE(hf->model.tie_embeddings);
  EXPECT_TRUE(hf->model.attn_qkv_bias);
  EXPECT_EQ(hf->eos_id, 2);
  j["head_dim"] = 64;
  EXPECT_EQ(ParseHfConfig(j.dump())->model.head_dim, 64);
}

TEST(HfConfigTest, RefusesBadConfigs) {
  json j = TinyHfConfig();
  j["model_type"] = "gpt_neox";
  EXPECT_THAT(Message(ParseHfConfig(j.dump()).status()), HasSubstr("'gpt_neox' is not supported"));
  j = TinyHfConfig();
  j.erase("hidden_size");
  EXPECT_THAT(Message(ParseHfConfig(j.dump()).status()), HasSubstr("'hidden_size' is missing"));
  j = TinyHfConfig();
  j["hidden_size"] = "576";
  EXPECT_THAT(Message(ParseHfConfig(j.dump()).status()), HasSubstr("expected an integer"));
  j = TinyHfConfig();
  j["vocab_size"] = -1;
  EXPECT_THAT(Message(ParseHfConfig(j.dump()).status()), HasSubstr("vocab_size"));
  j = TinyHfConfig();
  j["num_hidden_layers"] = 1e30;
  EXPECT_FALSE(ParseHfConfig(j.dump()).ok());
  j = TinyHfConfig();
  j["rope_theta"] = 1e300;  // beyond float
  EXPECT_THAT(Message(ParseHfConfig(j.dump()).status()), HasSubstr("does not fit in a float"));
  j = TinyHfConfig();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  EXPECT_THAT(Message(ParseHfConfig(j.dump()).status()), HasSubstr("rope_scaling"));
  EXPECT_THAT(Message(ParseHfConfig("{\"a\": }").status()), HasSubstr("byte offset"));
  EXPECT_FALSE(ParseHfConfig("[]").ok());
  EXPECT_FALSE(ParseHfConfig(std::string(2u << 20, ' ')).ok());
}

TEST(HfTokenizerTest, ReadsSmolLmStyleTokenizer) {
  auto spec = ParseHfTokenizer(TinyTokenizer().dump(), "");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->model, "gpt2");
  EXPECT_EQ(spec->pre, "smollm");
  EXPECT_EQ(spec->tokens, (std::vector<std::string>{"<|endoftext|>", "<|im_start|>", "<|im_end|>",
                                                    "a", "b", "ab", "Ġ", "Ġab"}));
  EXPECT_EQ(spec->token_types, (std::vector<int32_t>{3, 3, 3, 1, 1, 1, 1, 1}));
  EXPECT_EQ(spec->merges, (std::vector<std::string>{"a b", "Ġ ab"}));
  EXPECT_EQ(spec->unk_id, -1);
  EXPECT_FALSE(spec->add_bos);
}

TEST(HfTokenizerTest, PairMergesAddedTokensGapsAndConfig) {
  json t = TinyTokenizer();
  t["model"]["merges"] = json::array({json::array({"a", "b"}), json::array({"Ġ", "ab"})});
  t["added_tokens"].push_back({{"id", 10}, {"content", "<tool>"}, {"special", false}});
  std::string config = json({{"add_bos_token", true},
                             {"bos_token", {{"content", "<|im_start|>"}}},
                             {"eos_token", "<|im_end|>"},
                             {"chat_template", "{{ x }}"}})
                           .dump();
  auto spec = ParseHfTokenizer(t.dump(), config);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->merges, (std::vector<std::string>{"a b", "Ġ ab"}));
  ASSERT_EQ(spec->tokens.size(), 11u);
  EXPECT_EQ(spec->tokens[8], "[PAD8]");
  EXPECT_EQ(spec->token_types[8], 5);
  EXPECT_EQ(spec->tokens[10], "<tool>");
  EXPECT_EQ(spec->token_types[10], 4);
  EXPECT_TRUE(spec->add_bos);
  EXPECT_EQ(spec->bos_id, 1);
  EXPECT_EQ(spec->eos_id, 2);
  EXPECT_EQ(spec->chat_template, "{{ x }}");
}

TEST(HfTokenizerTest, MapsPreTokenizers) {
  const std::string llama3 =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  const std::string qwen2 =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  auto with_pre = [](json pre) {
    json t = TinyTokenizer();
    t["pre_tokenizer"] = pre;
    return ParseHfTokenizer(t.dump(), "");
  };
  json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
  EXPECT_EQ(with_pre(byte_level)->pre, "gpt2");
  json split_digits = {{"type", "Split"},
                       {"pattern", {{"Regex", "\\p{N}"}}},
                       {"behavior", "Isolated"},
                       {"invert", false}};
  EXPECT_EQ(with_pre({{"type", "Sequence"}, {"pretokenizers", {split_digits, byte_level}}})->pre,
            "smollm");
  json no_regex = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}};
  auto split = [](const std::string& regex) {
    return json{{"type", "Split"}, {"pattern", {{"Regex", regex}}}, {"behavior", "Isolated"}};
  };
  EXPECT_EQ(with_pre({{"type", "Sequence"}, {"pretokenizers", {split(llama3), no_regex}}})->pre,
            "llama-bpe");
  EXPECT_EQ(with_pre({{"type", "Sequence"}, {"pretokenizers", {split(qwen2), no_regex}}})->pre,
            "qwen2");
  EXPECT_THAT(
      Message(
          with_pre({{"type", "Sequence"}, {"pretokenizers", {split("\\w+"), no_regex}}}).status()),
      HasSubstr("not a known byte-level layout"));
  EXPECT_THAT(Message(with_pre({{"type", "Whitespace"}}).status()),
              HasSubstr("not a known byte-level layout"));
  EXPECT_THAT(Message(with_pre(nullptr).status()), HasSubstr("no pre_tokenizer"));
  byte_level["add_prefix_space"] = true;
  EXPECT_THAT(Message(with_pre(byte_level).status()), HasSubstr("add_prefix_space"));
}

TEST(HfTokenizerTest, RefusesHostileTokenizers) {
  json t = TinyTokenizer();
  t["model"]["type"] = "Unigram";
  EXPECT_THAT(Message(ParseHfTokenizer(t.dump(), "").status()), HasSubstr("is not BPE"));
  t = TinyTokenizer();
  t["model"]["vocab"]["far"] = 1 << 30;  // would allocate a billion tokens
  EXPECT_THAT(Message(ParseHfTokenizer(t.dump(), "").status()), HasSubstr("ids must be dense"));
  t = TinyTokenizer();
  t["model"]["vocab"]["dup"] = 3;
  EXPECT_THAT(Message(ParseHfTokenizer(t.dump(), "").status()), HasSubstr("id 3 is given to both"));
  t = TinyTokenizer();
  t["model"]["merges"] = {"ab"};
  EXPECT_THAT(Message(ParseHfTokenizer(t.dump(), "").status()), HasSubstr("merge #0"));
  t = TinyTokenizer();
  t["model"]["merges"] = {{"a"}};
  EXPECT_FALSE(ParseHfTokenizer(t.dump(), "").ok());
  t = TinyTokenizer();
  t["added_tokens"] = {{{"id", "x"}, {"content", "y"}}};
  EXPECT_FALSE(ParseHfTokenizer(t.dump(), "").ok());
  EXPECT_THAT(
      Message(ParseHfTokenizer(TinyTokenizer().dump(), R"({"bos_token": "<nope>"})").status()),
      HasSubstr("not in the vocabulary"));
  EXPECT_FALSE(ParseHfTokenizer("{", "").ok());
  EXPECT_FALSE(ParseHfTokenizer("3", "").ok());
}

}  // namespace
}  // namespace longread::engine
