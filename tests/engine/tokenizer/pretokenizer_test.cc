#include "engine/tokenizer/pretokenizer.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace longread::engine {
namespace {

using ::testing::ElementsAre;

std::vector<std::string> Split(std::string_view pre, std::string_view text) {
  std::vector<std::string> pieces;
  PreTokenize(*PreTokenizerFromName(pre), text,
              [&](std::string_view p) { pieces.emplace_back(p); });
  return pieces;
}

TEST(PreTokenizerTest, Gpt2) {
  EXPECT_THAT(Split("gpt2", "Hello world's 42 cats!!  \n\n  x"),
              ElementsAre("Hello", " world", "'s", " 42", " cats", "!!", "  \n\n ", " x"));
  EXPECT_THAT(Split("gpt2", "\n\n   1. item"), ElementsAre("\n\n  ", " 1", ".", " item"));
  EXPECT_THAT(Split("gpt2", "end  "), ElementsAre("end", "  "));
  EXPECT_THAT(Split("gpt2", "a\tb"), ElementsAre("a", "\t", "b"));
  EXPECT_THAT(Split("gpt2", "'Tis 'll"), ElementsAre("'", "Tis", " '", "ll"));
}

TEST(PreTokenizerTest, SmolLmSplitsDigitsBeforeTheRegex) {
  // The trap of DESIGN.md §3: whitespace before a digit stays whole.
  EXPECT_THAT(Split("smollm", "\n\n   1. item"), ElementsAre("\n\n   ", "1", ".", " item"));
  EXPECT_THAT(Split("smollm", "x 2024年"), ElementsAre("x", " ", "2", "0", "2", "4", "年"));
  EXPECT_THAT(Split("smollm", "½²"), ElementsAre("½", "²"));  // \p{N} beyond ASCII
}

TEST(PreTokenizerTest, Llama3) {
  EXPECT_THAT(Split("llama-bpe", "I'M (hello) 12345\r\n\n  x"),
              ElementsAre("I", "'M", " (", "hello", ")", " ", "123", "45", "\r\n\n", " ", " x"));
  EXPECT_THAT(Split("llama-bpe", "a!!\n\nb"), ElementsAre("a", "!!\n\n", "b"));
  EXPECT_THAT(Split("qwen2", "123"), ElementsAre("1", "2", "3"));
}

TEST(PreTokenizerTest, UnicodeWhitespaceAndLetters) {
  // U+3000 ideographic space and U+00A0 are \s; CJK and kana are \p{L}.
  EXPECT_THAT(Split("gpt2", "日本語\xE3\x80\x80かな"),
              ElementsAre("日本語", "\xE3\x80\x80", "かな"));
  // Only U+0020 prefixes a word: a no-break space before a letter stands alone.
  EXPECT_THAT(Split("gpt2", "a\u00A0\u00A0b"), ElementsAre("a", "\u00A0", "\u00A0", "b"));
}

TEST(PreTokenizerTest, UnknownNameIsAnError) { EXPECT_FALSE(PreTokenizerFromName("bloom").ok()); }

}  // namespace
}  // namespace longread::engine
