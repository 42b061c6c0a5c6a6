// Known id sequences of the default model, taken from the Hugging Face reference
// (scripts/tokenizer_oracle.py). Skipped when the model file is not present.
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "engine/model_files/model_file.h"
#include "engine/tokenizer/chat_template.h"
#include "engine/tokenizer/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace longread::engine {
namespace {

using ::testing::ElementsAreArray;

class DefaultModelTokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const char* root = std::getenv("LONGREAD_SOURCE_DIR");
    const std::string path =
        std::string(root ? root : ".") + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
    if (!std::filesystem::exists(path)) return;
    auto file = ModelFile::Open(path);
    ASSERT_TRUE(file.ok()) << file.status();
    auto tok = Tokenizer::Create((*file)->tokenizer());
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = tok->release();
    spec_chat_template_ = (*file)->tokenizer().chat_template;
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    tokenizer_ = nullptr;
  }
  void SetUp() override {
    if (tokenizer_ == nullptr) GTEST_SKIP() << "default model file not present";
  }

  static Tokenizer* tokenizer_;
  static std::string spec_chat_template_;
};
Tokenizer* DefaultModelTokenizerTest::tokenizer_ = nullptr;
std::string DefaultModelTokenizerTest::spec_chat_template_;

struct Known {
  std::string text;
  std::vector<int32_t> ids;
};

TEST_F(DefaultModelTokenizerTest, DocumentTextMatchesReference) {
  const Known cases[] = {
      {"Hello world", {19556, 905}},
      // The trap: whitespace before a digit stays one piece ("\n\n   " = 1004).
      {"\n\n   1. item\n\n   2. item", {1004, 33, 30, 5033, 1004, 34, 30, 5033}},
      {"👍🏻 👨\u200d👩\u200d👧 😀",
       {10813, 235, 231, 10813, 233, 136,   15107, 235, 118,   321, 231,
        10813, 235, 119, 321,   231, 10813, 235,   117, 40303, 218}},
      {"日本語のテキスト、中文 한국어",
       {23274, 115,   40993, 179,   120, 248,   26453, 11100, 224, 10391, 251, 10391, 134, 11100,
        226,   29917, 28589, 29184, 216, 33085, 246,   181,   130, 251,   183, 240,   129}},
      {"x = 12345.678;", {104, 446, 216, 33, 34, 35, 36, 37, 30, 38, 39, 40, 43}},
      {"<|im_end|> is text here", {44, 108, 306, 79, 486, 108, 46, 314, 1694, 1535}},
  };
  for (const Known& c : cases) {
    EXPECT_THAT(tokenizer_->Encode(c.text, /*parse_special=*/false), ElementsAreArray(c.ids))
        << c.text;
    EXPECT_EQ(tokenizer_->Decode(c.ids), c.text);
  }
}

TEST_F(DefaultModelTokenizerTest, ChatPromptParsesControlTokens) {
  const std::string prompt = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n";
  EXPECT_THAT(tokenizer_->Encode(prompt, /*parse_special=*/true),
              ElementsAreArray({1, 4093, 198, 26843, 2, 198, 1, 520, 9531, 198}));
  EXPECT_EQ(tokenizer_->eos_id(), 2);
  EXPECT_EQ(tokenizer_->Decode({1, 4093, 198, 26843, 2}), "<|im_start|>user\nHi<|im_end|>");
  EXPECT_TRUE(tokenizer_->IsControl(2));
}

TEST_F(DefaultModelTokenizerTest, ChatTemplateFromTheModelFile) {
  auto t = ChatTemplate::FromSource(spec_chat_template_);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->default_system(),
            "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  auto parts = t->RenderParts({{"user", "Hello!"}}, /*add_generation_prompt=*/true);
  ASSERT_TRUE(parts.ok()) << parts.status();
  // Reference ids of the rendered prompt string, encoded with special-token parsing.
  EXPECT_THAT(EncodePrompt(*tokenizer_, *parts),
              ElementsAreArray({1,    9690,  198,   2683, 359, 253, 5356,  5646, 11173, 3365, 3511,
                                308,  34519, 28,    7018, 411, 407, 19712, 8182, 2,     198,  1,
                                4093, 198,   19556, 17,   2,   198, 1,     520,  9531,  198}));
}

}  // namespace
}  // namespace longread::engine
