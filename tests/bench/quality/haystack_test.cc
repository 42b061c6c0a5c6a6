// The quality bench's documents: exact lengths, needles at line starts near the asked depth,
// the same document for the same seed, and fact counting. A byte-level vocabulary keeps token
// offsets equal to byte offsets.
#include "bench/quality/haystack.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/engine/tokenizer/tiny_spec.h"

namespace longread::bench {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class HaystackTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto tok = engine::Tokenizer::Create(engine::TinySpec({}, {}));
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = std::move(*tok);
    // ctest runs every test of this fixture as its own process in parallel: one directory each.
    dir_ = fs::path(::testing::TempDir()) /
           ("haystack_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "pkg");
    for (int f = 0; f < 3; ++f) {
      std::ofstream out(dir_ / "pkg" / (f == 0 ? "copyright" : "notes" + std::to_string(f)));
      for (int line = 0; line < 200; ++line) {
        out << "file " << f << " line " << line << " of some real enough text\n";
      }
    }
    std::ofstream(dir_ / "binary").write("ab\0cd", 5);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Text(const std::vector<int32_t>& ids) const { return tokenizer_->Decode(ids); }

  std::unique_ptr<engine::Tokenizer> tokenizer_;
  fs::path dir_;
};

TEST_F(HaystackTest, ParsesSourceSpecs) {
  auto s = ParseCorpusSource("/a/b:copyright:7");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->dir, "/a/b");
  EXPECT_EQ(s->name, "copyright");
  EXPECT_EQ(s->max_files, 7);
  EXPECT_FALSE(ParseCorpusSource("").ok());
  EXPECT_FALSE(ParseCorpusSource("/a:b:0").ok());
  EXPECT_FALSE(ParseCorpusSource("/a:b:x").ok());
}

TEST_F(HaystackTest, CorpusKeepsTextFilesAndFiltersByName) {
  auto all = Corpus::Build({{dir_.string(), "", 100}, {(dir_ / "missing").string(), "", 100}});
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->file_count(), 3);  // the file with a NUL byte is not text
  EXPECT_EQ(all->skipped().size(), 1u);
  auto named = Corpus::Build({{dir_.string(), "copyright", 100}});
  ASSERT_TRUE(named.ok());
  EXPECT_EQ(named->file_count(), 1);
  auto capped = Corpus::Build({{dir_.string(), "", 2}});
  ASSERT_TRUE(capped.ok());
  EXPECT_EQ(capped->file_count(), 2);
  EXPECT_FALSE(Corpus::Build({{(dir_ / "missing").string(), "", 1}}).ok());
}

TEST_F(HaystackTest, SamplesWholeLines) {
  auto corpus = Corpus::Build({{dir_.string(), "", 100}});
  ASSERT_TRUE(corpus.ok());
  std::mt19937_64 rng(3);
  const std::string text = corpus->Sample(rng, 5000);
  EXPECT_GE(text.size(), 5000u);
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty()) {
      EXPECT_EQ(line.rfind("file ", 0), 0u) << line;
    }
  }
}

TEST_F(HaystackTest, PasskeyDocumentHasExactLengthAndNeedleAtLineStartNearDepth) {
  auto corpus = Corpus::Build({{dir_.string(), "", 100}});
  ASSERT_TRUE(corpus.ok());
  for (double depth : {0.0, 0.3, 0.9, 1.0}) {
    std::mt19937_64 rng(11);
    PasskeyDocument doc =
        MakePasskeyDocument(*tokenizer_, HaystackKind::kReal, &*corpus, rng, 3000, depth);
    ASSERT_EQ(doc.tokens.size(), 3000u);
    ASSERT_EQ(doc.key.size(), 5u);
    const std::string text = Text(doc.tokens);
    const std::string needle = NeedleText(doc.phrasing, doc.key) + "\n";
    EXPECT_EQ(text.substr(static_cast<size_t>(doc.needle_at), needle.size()), needle);
    EXPECT_TRUE(doc.needle_at == 0 || text[doc.needle_at - 1] == '\n');
    // Lines are under 60 bytes, so the nearest line start is within one line of the target.
    const double target = depth * static_cast<double>(3000 - needle.size());
    EXPECT_NEAR(static_cast<double>(doc.needle_at), target, 60.0) << depth;
  }
}

TEST_F(HaystackTest, SameSeedSameDocument) {
  std::mt19937_64 a(5), b(5), c(6);
  auto da = MakePasskeyDocument(*tokenizer_, HaystackKind::kFiller, nullptr, a, 1000, 0.5);
  auto db = MakePasskeyDocument(*tokenizer_, HaystackKind::kFiller, nullptr, b, 1000, 0.5);
  auto dc = MakePasskeyDocument(*tokenizer_, HaystackKind::kFiller, nullptr, c, 1000, 0.5);
  EXPECT_EQ(da.tokens, db.tokens);
  EXPECT_EQ(da.key, db.key);
  EXPECT_NE(da.key, dc.key);
  EXPECT_THAT(Text(da.tokens), HasSubstr("The grass is green."));
}

TEST_F(HaystackTest, EveryPhrasingHoldsTheKey) {
  for (int p = 0; p < NeedlePhrasingCount(); ++p) {
    EXPECT_THAT(NeedleText(p, "40213"), HasSubstr("40213"));
    EXPECT_THAT(NeedleText(p, "40213"), HasSubstr("pass key"));
  }
}

TEST_F(HaystackTest, FactsAreDistinctPlantedAndCounted) {
  auto corpus = Corpus::Build({{dir_.string(), "", 100}});
  ASSERT_TRUE(corpus.ok());
  std::mt19937_64 rng(9);
  const std::vector<Fact> facts = MakeFacts(rng, 6);
  ASSERT_EQ(facts.size(), 6u);
  std::set<std::string> names, numbers;
  for (const Fact& f : facts) {
    names.insert(f.name);
    numbers.insert(f.number);
    EXPECT_THAT(f.sentence, HasSubstr(f.name));
    EXPECT_THAT(f.sentence, HasSubstr(f.number));
  }
  EXPECT_EQ(names.size(), 6u);
  EXPECT_EQ(numbers.size(), 6u);
  const std::vector<int32_t> doc = MakeFactsDocument(*tokenizer_, *corpus, rng, 6000, facts);
  ASSERT_EQ(doc.size(), 6000u);
  const std::string text = Text(doc);
  size_t last = 0;
  for (const Fact& f : facts) {  // all present, in order
    const size_t at = text.find(f.sentence);
    ASSERT_NE(at, std::string::npos) << f.sentence;
    EXPECT_GE(at, last);
    last = at;
  }
  std::vector<bool> mentioned;
  const std::string summary =
      "It mentions " + facts[1].name + " and the year " + facts[4].number + ".";
  EXPECT_EQ(CountMentionedFacts(summary, facts, &mentioned), 2);
  EXPECT_EQ(mentioned, std::vector<bool>({false, true, false, false, true, false}));
}

}  // namespace
}  // namespace longread::bench
