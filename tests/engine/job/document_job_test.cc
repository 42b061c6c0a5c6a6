// The job that `longread run` executes: text and token entry points agree, the answer without
// recall (taken from a snapshot of the memory) equals a run that never recalls, and the
// instruction can be read before the document.
#include "engine/job/document_job.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "tests/engine/test_model.h"

namespace longread::engine {
namespace {

constexpr char kDocument[] =
    "The lighthouse keeper of Varrow Point kept a ledger. In 1791 he wrote that the lamp burned "
    "whale oil, that the tower had ninety-one steps, and that the pass key to the lamp room was "
    "40817. Ships passed at dawn. The keeper's daughter, Maren, painted the door green every "
    "spring. Storms broke two panes in 1793 and the keeper replaced them with glass from Bergen. "
    "In 1802 the tower was raised by a storey and a second lamp was added; the ledger ends there.";

std::unique_ptr<Tokenizer> MakeTokenizer(const LlamaModel& model) {
  auto tokenizer = Tokenizer::Create(model.file().tokenizer());
  return tokenizer.ok() ? std::move(*tokenizer) : nullptr;
}

DocumentJobOptions SmallMemory() {
  DocumentJobOptions options;
  options.task = Task::kQuestion;
  options.question = "What is the pass key?";
  options.runner.memory.sinks = 4;
  options.runner.memory.block_tokens = 8;
  options.runner.memory.top_k = 32;
  options.runner.memory.window = 16;
  options.runner.segment_tokens = 32;
  options.generate.max_new_tokens = 12;
  return options;
}

TEST(DocumentJobTest, TextAndTokensGiveTheSameAnswer) {
  REQUIRE_DEFAULT_MODEL(model);
  auto tokenizer = MakeTokenizer(*model);
  ASSERT_NE(tokenizer, nullptr);
  kernels::ThreadPool pool(2);
  const DocumentJobOptions options = SmallMemory();
  auto from_text = RunDocumentJob(*model, *tokenizer, kDocument, options, nullptr, &pool);
  ASSERT_TRUE(from_text.ok()) << from_text.status();
  const std::vector<int32_t> tokens = tokenizer->Encode(kDocument, false);
  auto from_tokens = RunTokenizedDocumentJob(*model, *tokenizer, tokens, options, nullptr, &pool);
  ASSERT_TRUE(from_tokens.ok()) << from_tokens.status();
  EXPECT_EQ(from_text->answer, from_tokens->answer);
  EXPECT_FALSE(from_text->answer.empty());
  EXPECT_EQ(from_text->document_tokens, static_cast<int64_t>(tokens.size()));
  EXPECT_EQ(from_text->read_tokens, from_tokens->read_tokens);
  EXPECT_GT(from_text->read_tokens, from_text->document_tokens);
  EXPECT_EQ(from_text->invalid_utf8_sequences, 0);
}

TEST(DocumentJobTest, AnswerWithoutRecallEqualsARunThatNeverRecalls) {
  REQUIRE_DEFAULT_MODEL(model);
  auto tokenizer = MakeTokenizer(*model);
  ASSERT_NE(tokenizer, nullptr);
  kernels::ThreadPool pool(2);
  const auto& c = model->config();
  DocumentJobOptions plain = SmallMemory();
  auto without = RunDocumentJob(*model, *tokenizer, kDocument, plain, nullptr, &pool);
  ASSERT_TRUE(without.ok()) << without.status();

  InMemoryBlockArchive archive(c.n_layers, c.n_kv_heads, c.d_model / c.n_heads);
  DocumentJobOptions recall = plain;
  recall.archive = &archive;
  recall.recall.blocks = 2;
  recall.also_answer_without_recall = true;
  auto both = RunDocumentJob(*model, *tokenizer, kDocument, recall, nullptr, &pool);
  ASSERT_TRUE(both.ok()) << both.status();
  EXPECT_EQ(both->answer_without_recall, without->answer);
  EXPECT_GT(both->recalled_slots, 0);
  EXPECT_TRUE(both->recall_error.empty()) << both->recall_error;
  EXPECT_GT(archive.stored_bytes(), 0);
}

TEST(DocumentJobTest, InstructionFirstReadsTheQuestionBeforeTheDocument) {
  REQUIRE_DEFAULT_MODEL(model);
  auto tokenizer = MakeTokenizer(*model);
  ASSERT_NE(tokenizer, nullptr);
  const std::string& tmpl = model->file().tokenizer().chat_template;
  auto after = BuildTaskPrompt(*tokenizer, tmpl, Task::kQuestion, "What is the pass key?");
  auto first = BuildTaskPrompt(*tokenizer, tmpl, Task::kQuestion, "What is the pass key?", true);
  ASSERT_TRUE(after.ok() && first.ok());
  const std::string head = tokenizer->Decode(first->before_document);
  EXPECT_NE(head.find("What is the pass key?"), std::string::npos) << head;
  EXPECT_EQ(tokenizer->Decode(after->before_document).find("pass key"), std::string::npos);
  EXPECT_EQ(first->after_document, after->after_document);

  kernels::ThreadPool pool(2);
  DocumentJobOptions options = SmallMemory();
  options.instruction_first = true;
  auto result = RunDocumentJob(*model, *tokenizer, kDocument, options, nullptr, &pool);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_FALSE(result->answer.empty());
  EXPECT_EQ(result->read_tokens,
            static_cast<int64_t>(first->before_document.size()) + result->document_tokens);
}

TEST(DocumentJobTest, EmptyDocumentsAndMissingQuestionsAreRefused) {
  REQUIRE_DEFAULT_MODEL(model);
  auto tokenizer = MakeTokenizer(*model);
  ASSERT_NE(tokenizer, nullptr);
  kernels::ThreadPool pool(1);
  DocumentJobOptions options = SmallMemory();
  EXPECT_EQ(RunDocumentJob(*model, *tokenizer, "", options, nullptr, &pool).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      RunTokenizedDocumentJob(*model, *tokenizer, {}, options, nullptr, &pool).status().code(),
      absl::StatusCode::kInvalidArgument);
  options.question.clear();
  EXPECT_EQ(RunDocumentJob(*model, *tokenizer, kDocument, options, nullptr, &pool).status().code(),
            absl::StatusCode::kInvalidArgument);
  options = SmallMemory();
  options.max_document_bytes = 10;
  EXPECT_EQ(RunDocumentJob(*model, *tokenizer, kDocument, options, nullptr, &pool).status().code(),
            absl::StatusCode::kOutOfRange);
}

TEST(DocumentJobTest, DenseBeyondTheContextIsRefusedBeforeReading) {
  REQUIRE_DEFAULT_MODEL(model);
  auto tokenizer = MakeTokenizer(*model);
  ASSERT_NE(tokenizer, nullptr);
  kernels::ThreadPool pool(1);
  DocumentJobOptions options = SmallMemory();
  options.runner.memory = MemoryConfig::Dense();
  const int32_t context = model->config().context_length;
  // The prompt and document fit; the answer's budget does not.
  const std::vector<int32_t> document(static_cast<size_t>(context - 200),
                                      tokenizer->Encode("the", false)[0]);
  options.generate.max_new_tokens = 256;
  int64_t progress_calls = 0;
  DocumentJobCallbacks callbacks;
  callbacks.progress = [&](int64_t, int64_t) { ++progress_calls; };
  auto result =
      RunTokenizedDocumentJob(*model, *tokenizer, document, options, nullptr, &pool, callbacks);
  ASSERT_EQ(result.status().code(), absl::StatusCode::kOutOfRange) << result.status();
  EXPECT_NE(result.status().message().find(absl::StrCat("has ", context - 200, " tokens")),
            std::string::npos)
      << result.status();
  EXPECT_NE(result.status().message().find(absl::StrCat("trained context of ", context)),
            std::string::npos)
      << result.status();
  EXPECT_EQ(progress_calls, 0);
}

}  // namespace
}  // namespace longread::engine
