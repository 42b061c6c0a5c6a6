// Chunked tokenization equals whole-text tokenization: for every pre-tokenizer, random texts over
// the characters where pieces are decided (letters, digits, whitespace runs, apostrophes,
// punctuation, CJK, invalid UTF-8, user-defined special tokens) cut at random places; and for the
// default model's tokenizer, the repository's own prose and code, cut at random places.
#include "engine/tokenizer/streaming_encoder.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "engine/job/document_job.h"
#include "engine/model_files/model_file.h"
#include "engine/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "tests/engine/tokenizer/tiny_spec.h"

namespace longread::engine {
namespace {

std::string SourceDir() {
  const char* root = std::getenv("LONGREAD_SOURCE_DIR");
  return root != nullptr ? root : ".";
}

// Cuts `text` at random places: chunk sizes from 1 to `max_chunk` bytes.
std::vector<std::string_view> RandomChunks(std::string_view text, std::mt19937_64& rng,
                                           size_t max_chunk) {
  std::uniform_int_distribution<size_t> size(1, max_chunk);
  std::vector<std::string_view> chunks;
  for (size_t at = 0; at < text.size();) {
    const size_t n = std::min(size(rng), text.size() - at);
    chunks.push_back(text.substr(at, n));
    at += n;
  }
  return chunks;
}

struct Streamed {
  std::vector<int32_t> tokens;
  int64_t invalid = 0;
  size_t max_held = 0;
  int64_t forced_cuts = 0;
};

Streamed Stream(const Tokenizer& tokenizer, const std::vector<std::string_view>& chunks,
                StreamingEncoderOptions options) {
  StreamingEncoder encoder(tokenizer, options);
  Streamed s;
  for (std::string_view chunk : chunks) {
    encoder.Push(chunk, &s.tokens);
    s.max_held = std::max(s.max_held, encoder.held_bytes());
  }
  encoder.Finish(&s.tokens);
  EXPECT_EQ(encoder.held_bytes(), 0u);
  s.invalid = encoder.invalid_utf8_sequences();
  s.forced_cuts = encoder.forced_cuts();
  return s;
}

void ExpectStreamsLikeWhole(const Tokenizer& tokenizer, std::string_view text, std::mt19937_64& rng,
                            size_t max_chunk, const std::string& label) {
  const std::vector<int32_t> whole = tokenizer.Encode(text, /*parse_special=*/false);
  const auto chunks = RandomChunks(text, rng, max_chunk);
  const Streamed s = Stream(tokenizer, chunks, {.drain_every_bytes = 1});
  ASSERT_EQ(s.tokens, whole) << label << " (" << chunks.size() << " chunks)";
  EXPECT_EQ(s.invalid, CountInvalidUtf8(text)) << label;
  EXPECT_EQ(s.forced_cuts, 0) << label;
}

std::unique_ptr<Tokenizer> TinyTokenizer(const std::string& pre) {
  auto tokenizer = Tokenizer::Create(BoundarySpec(pre));
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return tokenizer.ok() ? std::move(*tokenizer) : nullptr;
}

std::string RandomText(std::mt19937_64& rng, size_t length) {
  static const std::vector<std::string> kAlphabet = {"a",     "b",
                                                     "s",     "'",
                                                     " ",     " ",
                                                     "  ",    "\n",
                                                     "\n\n",  "\t",
                                                     "1",     "2",
                                                     "3",     ".",
                                                     ",",     "\xC3\xA9",
                                                     "中",    "文",
                                                     "<x",    "<x>",
                                                     "y",     ">",
                                                     "<|c|>", "\xE2\x80",
                                                     "\xFF",  "\xF0\x9F\x98\x80",
                                                     "\r\n",  "\xE3",
                                                     "A",     "'S"};
  std::uniform_int_distribution<size_t> pick(0, kAlphabet.size() - 1);
  std::string text;
  while (text.size() < length) text += kAlphabet[pick(rng)];
  return text;
}

TEST(StreamingEncoderTest, RandomTextsAndChunkingsEqualWholeEncodingForEveryPreTokenizer) {
  std::mt19937_64 rng(20261202);
  for (const std::string pre : {"gpt2", "smollm", "llama-bpe", "qwen2"}) {
    auto tokenizer = TinyTokenizer(pre);
    ASSERT_NE(tokenizer, nullptr) << pre;
    for (int trial = 0; trial < 300; ++trial) {
      const std::string text = RandomText(rng, 1 + trial % 97);
      ExpectStreamsLikeWhole(*tokenizer, text, rng, 1 + trial % 7,
                             pre + " trial " + std::to_string(trial));
      if (HasFatalFailure()) return;
    }
  }
}

TEST(StreamingEncoderTest, LongRunsOfOneClassAreHeldWhole) {
  auto tokenizer = TinyTokenizer("smollm");
  ASSERT_NE(tokenizer, nullptr);
  std::mt19937_64 rng(7);
  for (const std::string run : {" ", "a", "1", ".", "\n", "中", "\xFF"}) {
    std::string text = "ab ";
    for (int i = 0; i < 3000; ++i) text += run;
    text += " b's 12\n";
    ExpectStreamsLikeWhole(*tokenizer, text, rng, 64, "run of '" + run + "'");
  }
}

// Past the bound the encoder cuts as documented: the text still round-trips, held bytes stay
// bounded, and the cut is counted.
TEST(StreamingEncoderTest, APathologicalRunIsCutAtTheBound) {
  auto tokenizer = TinyTokenizer("gpt2");
  ASSERT_NE(tokenizer, nullptr);
  const std::string text(300000, 'a');
  std::mt19937_64 rng(3);
  const auto chunks = RandomChunks(text, rng, 5000);
  const Streamed s = Stream(*tokenizer, chunks, {.max_held_bytes = 16384, .drain_every_bytes = 1});
  EXPECT_GT(s.forced_cuts, 0);
  EXPECT_LE(s.max_held, 16384u + 5000u);
  EXPECT_EQ(tokenizer->Decode(s.tokens), text);

  // Below the bound nothing is forced, with the default drain schedule too.
  const std::string prose = "a ab aa. " + std::string(2000, ' ') + "b 12\n";
  const Streamed ok = Stream(*tokenizer, RandomChunks(prose, rng, 3), {});
  EXPECT_EQ(ok.forced_cuts, 0);
  EXPECT_EQ(ok.tokens, tokenizer->Encode(prose, false));
}

TEST(StreamingEncoderTest, APushAfterFinishStartsANewDocument) {
  auto tokenizer = TinyTokenizer("gpt2");
  ASSERT_NE(tokenizer, nullptr);
  StreamingEncoder encoder(*tokenizer, {.drain_every_bytes = 1});
  std::vector<int32_t> first, second;
  encoder.Push("ab <x", &first);
  encoder.Push(">y \xE2", &first);
  encoder.Finish(&first);
  EXPECT_EQ(first, tokenizer->Encode("ab <x>y \xE2", false));
  EXPECT_EQ(encoder.invalid_utf8_sequences(), 1);
  EXPECT_EQ(encoder.bytes_pushed(), 9);
  encoder.Push("aa", &second);
  encoder.Finish(&second);
  EXPECT_EQ(second, tokenizer->Encode("aa", false));
  EXPECT_EQ(encoder.bytes_pushed(), 2);
  EXPECT_EQ(encoder.invalid_utf8_sequences(), 0);
}

class DefaultModelStreamingTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string path = SourceDir() + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
    if (!std::filesystem::exists(path)) return;
    auto file = ModelFile::Open(path);
    ASSERT_TRUE(file.ok()) << file.status();
    auto tokenizer = Tokenizer::Create((*file)->tokenizer());
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = tokenizer->release();
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    tokenizer_ = nullptr;
  }
  void SetUp() override {
    if (tokenizer_ == nullptr) GTEST_SKIP() << "default model file not present";
  }
  static const Tokenizer* tokenizer_;
};
const Tokenizer* DefaultModelStreamingTest::tokenizer_ = nullptr;

std::string ReadRepoFile(const std::string& relative) {
  std::ifstream in(SourceDir() + "/" + relative, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST_F(DefaultModelStreamingTest, RepositoryProseAndCodeInRandomChunks) {
  std::mt19937_64 rng(11);
  for (const char* file :
       {"README.md", "docs/ARCHITECTURE.md", "cache/FORMAT.md", "engine/memory/runner.cc",
        "engine/tokenizer/unicode_tables.inc", "scripts/make_tokenizer_corpus.py"}) {
    const std::string text = ReadRepoFile(file);
    ASSERT_GT(text.size(), 1000u) << file;
    for (size_t max_chunk : {size_t{1}, size_t{17}, size_t{4096}}) {
      // 1-byte chunks on a prefix only: the whole file at 1 byte a push is slow under sanitizers.
      const std::string_view part = std::string_view(text).substr(
          0, max_chunk == 1 ? std::min<size_t>(text.size(), 20000) : text.size());
      ExpectStreamsLikeWhole(*tokenizer_, part, rng, max_chunk,
                             std::string(file) + " max chunk " + std::to_string(max_chunk));
    }
  }
}

TEST_F(DefaultModelStreamingTest, HardCasesInRandomChunks) {
  std::mt19937_64 rng(5);
  std::string hard =
      "Price: 1234567.89 USD, 2026-12-02T01:07:34Z;   \t  indented\n\n\n   \r\n"
      "中文的文本，日本語のテキスト、한국어 텍스트. Ελληνικά και русский текст. "
      "emoji 👩‍💻🏳️‍🌈 and ZWJ; combining e\u0301 a\u0300. "
      "<|im_start|>user\nnot a control token<|im_end|> don't won't we'll I'M THEY'RE "
      "invalid \xC3\x28 \xA0\xA1 \xE2\x82 \xF0\x9F\x98 \xFF\xFE end";
  for (int i = 0; i < 6; ++i) hard += hard;  // ~20 KB
  for (size_t max_chunk : {size_t{1}, size_t{2}, size_t{3}, size_t{5}, size_t{64}, size_t{999}}) {
    ExpectStreamsLikeWhole(*tokenizer_, hard, rng, max_chunk,
                           "hard cases, max chunk " + std::to_string(max_chunk));
  }
  // With the default drain schedule and 1 MiB chunks, as the coordinator would push.
  const Streamed s = Stream(*tokenizer_, {hard}, {});
  EXPECT_EQ(s.tokens, tokenizer_->Encode(hard, false));
}

}  // namespace
}  // namespace longread::engine
