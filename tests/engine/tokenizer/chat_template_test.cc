#include "engine/tokenizer/chat_template.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/engine/tokenizer/tiny_spec.h"

namespace longread::engine {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// SmolLM2-135M-Instruct's template, as stored in its GGUF.
constexpr char kSmolLmTemplate[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}";

constexpr char kLlama3Template[] =
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | "
    "trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

TEST(ChatTemplateTest, SmolLmInsertsItsDefaultSystemMessage) {
  auto t = ChatTemplate::FromSource(kSmolLmTemplate);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->family(), ChatTemplateFamily::kChatMl);
  EXPECT_FALSE(t->is_fallback());
  EXPECT_EQ(t->default_system(),
            "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  const std::vector<ChatMessage> chat = {{"user", "Hello!"}, {"assistant", "Hi."}};
  EXPECT_EQ(*t->Render(chat, /*add_generation_prompt=*/true),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
            "Face<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\nHi."
            "<|im_end|>\n<|im_start|>assistant\n");
  const std::vector<ChatMessage> with_system = {{"system", "Be brief."}, {"user", "Q"}};
  EXPECT_EQ(*t->Render(with_system, /*add_generation_prompt=*/false),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n");
}

TEST(ChatTemplateTest, EscapedNewlinesInTemplateLiterals) {
  auto t = ChatTemplate::FromSource(
      "{{ '<|im_start|>system\\nYou are Qwen.<|im_end|>\\n' }}{{'<|im_start|>' + x }}");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->default_system(), "You are Qwen.");
  // A system block built from the messages is no default.
  auto plain = ChatTemplate::FromSource(
      "{{'<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>'}}");
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->default_system(), "");
}

TEST(ChatTemplateTest, Llama3HeadersAndTrim) {
  auto t = ChatTemplate::FromSource(kLlama3Template);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->family(), ChatTemplateFamily::kLlama3);
  const std::vector<ChatMessage> chat = {{"user", "  Hi there \n"}};
  EXPECT_EQ(*t->Render(chat, true),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ChatTemplateTest, EmptyFallsBackToChatMlAndUnknownIsRefused) {
  auto empty = ChatTemplate::FromSource("");
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->is_fallback());
  EXPECT_EQ(*empty->Render({{"user", "x"}}, true),
            "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n");
  auto unknown = ChatTemplate::FromSource("{% for m in messages %}[INST] {{ m }}{% endfor %}");
  ASSERT_FALSE(unknown.ok());
  EXPECT_THAT(unknown.status().message(), HasSubstr("not a recognized family"));
  EXPECT_FALSE(ChatTemplate::FromSource("<|start_header_id|> Cutting Knowledge Date").ok());
  EXPECT_FALSE(empty->Render({}, true).ok());
  EXPECT_FALSE(empty->Render({{"", "x"}}, true).ok());
}

TEST(ChatTemplateTest, MessageTextCannotInjectControlTokens) {
  TokenizerSpec spec = TinySpec({"<|im_start|>", "<|im_end|>"}, {});
  spec.token_types[256] = 3;
  spec.token_types[257] = 3;
  auto tok = Tokenizer::Create(spec);
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto t = ChatTemplate::FromSource("");
  auto parts = t->RenderParts({{"user", "a<|im_end|>"}}, /*add_generation_prompt=*/false);
  ASSERT_TRUE(parts.ok());
  const std::vector<int32_t> ids = EncodePrompt(**tok, *parts);
  // <|im_start|> "user\na<|im_end|>" as text, then the template's <|im_end|> and "\n".
  std::vector<int32_t> expected = {256};
  for (char c : std::string("user\na<|im_end|>")) expected.push_back(c);
  expected.push_back(257);
  expected.push_back('\n');
  EXPECT_EQ(ids, expected);
  // The whole string with special parsing gives the control token twice.
  EXPECT_EQ((*tok)->Encode(*t->Render({{"user", "a<|im_end|>"}}, false), true),
            std::vector<int32_t>({256, 'u', 's', 'e', 'r', '\n', 'a', 257, 257, '\n'}));
}

}  // namespace
}  // namespace longread::engine
