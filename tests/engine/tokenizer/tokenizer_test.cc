#include "engine/tokenizer/tokenizer.h"

#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "engine/tokenizer/unicode.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/engine/tokenizer/tiny_spec.h"

namespace longread::engine {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::unique_ptr<Tokenizer> Make(const TokenizerSpec& spec) {
  auto tok = Tokenizer::Create(spec);
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? std::move(*tok) : nullptr;
}

TEST(TokenizerTest, LowestRankMergesFirst) {
  // ids: 256 "ab", 257 "bc", 258 "abc"
  auto bc_first = Make(TinySpec({"ab", "bc", "abc"}, {"b c", "a b", "a bc"}));
  EXPECT_THAT(bc_first->Encode("abc", false), ElementsAre(258));
  auto ab_first = Make(TinySpec({"ab", "bc", "abc"}, {"a b", "b c", "a bc"}));
  // "a b" wins, and no merge joins "ab" with "c".
  EXPECT_THAT(ab_first->Encode("abc", false), ElementsAre(256, 'c'));
}

TEST(TokenizerTest, EqualRanksMergeLeftmostFirst) {
  auto tok = Make(TinySpec({"aa"}, {"a a"}));
  EXPECT_THAT(tok->Encode("aaa", false), ElementsAre(256, 'a'));
  EXPECT_THAT(tok->Encode("aaaa", false), ElementsAre(256, 256));
}

TEST(TokenizerTest, MergesNeverCrossPreTokenizerPieces) {
  auto tok = Make(TinySpec({"a" + ByteChar(' '), ByteChar(' ') + "a"}, {"a " + ByteChar(' ')}));
  // "a b" splits into "a" and " b": the merge "a"+" " would need to cross the split.
  EXPECT_THAT(tok->Encode("a b", false), ElementsAre('a', ' ', 'b'));
}

TEST(TokenizerTest, BytesWithoutMergesFallBackToByteTokens) {
  auto tok = Make(TinySpec({}, {}));
  EXPECT_THAT(tok->Encode("é", false), ElementsAre(0xC3, 0xA9));
  EXPECT_EQ(tok->Decode(tok->Encode("héllo wörld", false)), "héllo wörld");
}

TEST(TokenizerTest, BytesWithoutAnyTokenAreDropped) {
  TokenizerSpec spec = TinySpec({"!!"}, {"! !"});
  spec.tokens[4] = "<unused-byte-4>";  // byte 0x04 now has no token
  auto tok = Make(spec);
  // The reference drops the byte before BPE, so its neighbours can merge.
  EXPECT_THAT(tok->Encode("x !\x04!", false), ElementsAre('x', ' ', 256));
}

TEST(TokenizerTest, SpecialTokensParsedOnlyWhenAsked) {
  TokenizerSpec spec = TinySpec({"<|im_end|>", "<|im_end|>x", "<user>"}, {});
  spec.token_types[256] = 3;  // control
  spec.token_types[257] = 3;  // control, longer: longest match wins
  spec.token_types[258] = 4;  // user-defined: always matched
  auto tok = Make(spec);
  EXPECT_THAT(tok->Encode("a<|im_end|>b", true), ElementsAre('a', 256, 'b'));
  EXPECT_THAT(tok->Encode("<|im_end|>xy", true), ElementsAre(257, 'y'));
  const std::vector<int32_t> plain = tok->Encode("a<|im_end|>b", false);
  EXPECT_EQ(plain.size(), 12u);
  for (int32_t id : plain) EXPECT_LT(id, 256);
  EXPECT_EQ(tok->Decode(plain), "a<|im_end|>b");
  EXPECT_THAT(tok->Encode("<user>", false), ElementsAre(258));
  EXPECT_EQ(tok->Decode({256, 'z'}), "<|im_end|>z");
  EXPECT_TRUE(tok->IsControl(256));
  EXPECT_FALSE(tok->IsControl(258));
}

TEST(TokenizerTest, InvalidUtf8IsReplacedLikePython) {
  const std::string fffd = "\xEF\xBF\xBD";
  struct Case {
    std::string in, out;
  };
  // Expected values from Python: bytes.decode('utf-8', errors='replace').
  const Case cases[] = {
      {"\xe2\x82", fffd},
      {"\xe0\x80\x80", fffd + fffd + fffd},
      {"\xed\xa0\x80", fffd + fffd + fffd},
      {"\xf0\x9f\x98"
       "a",
       fffd + "a"},
      {"\xc0\xaf", fffd + fffd},
      {"\xf4\x90\x80\x80", fffd + fffd + fffd + fffd},
      {"\x80\x80x", fffd + fffd + "x"},
      {"\xe2\x82\xac\xff", "\xe2\x82\xac" + fffd},
      {"\xf1\x80\x80\xe1\x80", fffd + fffd},
  };
  auto tok = Make(TinySpec({}, {}));
  for (const Case& c : cases) {
    EXPECT_EQ(unicode::ReplaceInvalidUtf8(c.in), c.out);
    EXPECT_EQ(tok->Decode(tok->Encode(c.in, false)), c.out);
  }
}

TEST(TokenizerTest, StreamingDecoderHoldsBackPartialCharacters) {
  auto tok = Make(TinySpec({}, {}));
  TokenDecoder dec(*tok);
  // "€" is E2 82 AC, one byte token at a time.
  EXPECT_EQ(dec.Push('a'), "a");
  EXPECT_EQ(dec.Push(0xE2), "");
  EXPECT_EQ(dec.Push(0x82), "");
  EXPECT_EQ(dec.Push(0xAC), "\xE2\x82\xAC");
  // A sequence broken by a non-continuation byte becomes U+FFFD, the byte itself survives.
  EXPECT_EQ(dec.Push(0xC3), "");
  EXPECT_EQ(dec.Push('b'),
            "\xEF\xBF\xBD"
            "b");
  EXPECT_EQ(dec.Push(0xFF), "\xEF\xBF\xBD");
  EXPECT_EQ(dec.Push(0xF0), "");
  EXPECT_EQ(dec.Flush(), "\xEF\xBF\xBD");
  EXPECT_EQ(dec.Flush(), "");
}

// Random valid UTF-8 from a mix of ASCII, digits, whitespace, Latin, CJK, emoji and marks.
std::string RandomText(std::mt19937* rng, int chars) {
  static const std::vector<std::pair<char32_t, char32_t>> kRanges = {
      {0x20, 0x7E},     {'0', '9'},       {'\t', '\r'},     {0xA0, 0x24F},
      {0x300, 0x36F},   {0x4E00, 0x4E80}, {0x3040, 0x30FF}, {0x1F300, 0x1F6FF},
      {0x2000, 0x200F}, {0x3000, 0x3000}, {0xAC00, 0xAC40}, {0x10000, 0x10FFFF}};
  std::string s;
  for (int i = 0; i < chars; ++i) {
    const auto& r = kRanges[(*rng)() % kRanges.size()];
    char32_t cp = r.first + (*rng)() % (r.second - r.first + 1);
    if (cp >= 0xD800 && cp <= 0xDFFF) cp = 'x';
    unicode::AppendUtf8(cp, &s);
  }
  return s;
}

TEST(TokenizerTest, RoundTripsRandomValidUtf8) {
  for (const char* pre : {"gpt2", "smollm", "llama-bpe", "qwen2"}) {
    auto tok = Make(TinySpec({ByteChar(' ') + "a", "12"}, {ByteChar(' ') + " a", "1 2"}, pre));
    for (uint32_t seed = 1; seed <= 50; ++seed) {
      std::mt19937 rng(seed);
      const std::string text = RandomText(&rng, 1 + seed * 7);
      EXPECT_EQ(tok->Decode(tok->Encode(text, false)), text) << pre << " seed " << seed;
    }
  }
}

TEST(TokenizerTest, CreateRejectsBadSpecs) {
  auto error = [](const TokenizerSpec& spec) {
    auto tok = Tokenizer::Create(spec);
    return tok.ok() ? std::string("ok") : std::string(tok.status().message());
  };
  TokenizerSpec s = TinySpec({}, {});
  s.pre = "mystery";
  EXPECT_THAT(error(s), HasSubstr("unknown pre-tokenizer \"mystery\""));
  s = TinySpec({}, {});
  s.model = "llama";
  EXPECT_THAT(error(s), HasSubstr("tokenizer.ggml.model"));
  s = TinySpec({"a"}, {});
  EXPECT_THAT(error(s), HasSubstr("tokens[256] \"a\" duplicates token 97"));
  s = TinySpec({"ab"}, {"a zz"});
  EXPECT_THAT(error(s), HasSubstr("merges[0] \"a zz\" names a token not in the vocabulary"));
  s = TinySpec({"ab"}, {"a b", "b a"});
  EXPECT_THAT(error(s),
              HasSubstr("merges[1] \"b a\" names a token not in the vocabulary (merged)"));
  s = TinySpec({"ab"}, {"a b", "a b"});
  EXPECT_THAT(error(s), HasSubstr("merges[1] \"a b\" duplicates merge 0"));
  s = TinySpec({"ab"}, {"ab"});
  EXPECT_THAT(error(s), HasSubstr("is not \"left right\""));
  s = TinySpec({}, {});
  s.eos_id = 256;
  EXPECT_THAT(error(s), HasSubstr("eos_token_id = 256 is outside the vocabulary"));
  s = TinySpec({}, {});
  s.token_types.pop_back();
  EXPECT_THAT(error(s), HasSubstr("token_type: has 255 entries for 256 tokens"));
  s = TinySpec({}, {});
  s.token_types[3] = 9;
  EXPECT_THAT(error(s), HasSubstr("token_type[3] = 9"));
  s = TinySpec({}, {});
  s.tokens.clear();
  s.token_types.clear();
  EXPECT_THAT(error(s), HasSubstr("vocabulary size 0"));
}

TEST(TokenizerTest, HandlesLongInputs) {
  auto tok = Make(TinySpec({"aa", "aaaa"}, {"a a", "aa aa"}));
  const std::string text(1 << 20, 'a');  // one 1 MiB word: BPE must not be quadratic
  const std::vector<int32_t> ids = tok->Encode(text, false);
  EXPECT_EQ(ids.size(), text.size() / 4);
  EXPECT_EQ(tok->Decode(ids), text);
}

}  // namespace
}  // namespace longread::engine
