// DocumentSession on the CUDA backend (engine/memory/cuda_backend.h), label gpu:
// 1. A ~4,500-token document read with eviction, an archive and recall answers; a session
//    checkpointed mid-document and resumed by a NEW cuda session from the checkpoint and the
//    replayed archive answers byte-identically (what failover needs).
// 2. After the same reading and recall, the cuda runner's next-token distributions over the
//    answer's first tokens agree with the cpu runner's (mean KL <= 1e-2 nats), the cuda side
//    teacher-forced with the cpu's greedy answer.
// 3. Tokens chosen on the device (only the id comes back) are the tokens the host chooses from
//    the same logits: greedy (with the n-gram guard) and seeded temperature + top-p sampling
//    with a repetition penalty.
// Without a GPU the tests skip (LONGREAD_REQUIRE_GPU=1 makes that a failure, as on the device).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/job/document_session.h"
#include "engine/memory/cuda_backend.h"
#include "engine/memory/open_backend.h"
#include "engine/memory/recording_archive.h"
#include "engine/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "kernels/cuda/cuda_ops.h"
#include "tests/engine/logit_compare.h"
#include "tests/engine/require_gpu.h"
#include "tests/engine/test_model.h"

namespace longread::engine {
namespace {

// A keeper's ledger of `years` entries; the pass key is written once, a quarter in.
std::string Ledger(int years) {
  static const char* const kCargo[] = {"timber", "salt cod", "coal", "wool", "iron", "grain"};
  std::string text = "The ledger of the lighthouse at Varrow Point.\n\n";
  for (int i = 0; i < years; ++i) {
    absl::StrAppend(&text, "In ", 1700 + i, " the keeper logged ", 40 + (i * 37) % 200,
                    " ships, most of them carrying ", kCargo[i % 6], ". The lamp burned ",
                    300 + (i * 53) % 400, " gallons of oil.");
    if (i == years / 4)
      absl::StrAppend(&text, " That year the pass key to the lamp room was 40817.");
    absl::StrAppend(&text, "\n");
  }
  return text;
}

DocumentJobOptions Options() {
  DocumentJobOptions options;
  options.task = Task::kQuestion;
  options.question = "What was the pass key to the lamp room?";
  options.runner.memory.sinks = 4;
  options.runner.memory.top_k = 256;
  options.runner.memory.window = 128;
  options.runner.memory.block_tokens = 32;
  options.runner.segment_tokens = 256;
  options.recall.blocks = 4;
  options.generate.max_new_tokens = 24;
  return options;
}

struct Fixture {
  LlamaModel* model = nullptr;
  std::unique_ptr<Tokenizer> tokenizer;
  std::vector<int32_t> tokens;
  std::unique_ptr<ReadingBackend> cuda;
  std::unique_ptr<InMemoryBlockArchive> FreshArchive() const {
    const ModelConfig& c = model->config();
    return std::make_unique<InMemoryBlockArchive>(c.n_layers, c.n_kv_heads, c.head_dim);
  }
};

// Reads through `session` in slices of `slice` tokens until `segments` are read or reading ends.
void ReadUntil(DocumentSession& session, const std::vector<int32_t>& tokens, int64_t slice,
               int64_t segments) {
  while (!session.reading_done() && session.segments_read() < segments) {
    const int64_t at = session.document_tokens_consumed();
    const int64_t n = std::min<int64_t>(slice, static_cast<int64_t>(tokens.size()) - at);
    auto consumed = session.ReadStep(std::span(tokens).subspan(at, n),
                                     at + n == static_cast<int64_t>(tokens.size()));
    ASSERT_TRUE(consumed.ok()) << consumed.status();
  }
}

std::string Finish(DocumentSession& session, const std::vector<int32_t>& tokens) {
  ReadUntil(session, tokens, 300, int64_t{1} << 40);
  const absl::Status begun = session.BeginAnswer();
  EXPECT_TRUE(begun.ok()) << begun;
  while (begun.ok() && !session.answer_done()) {
    auto step = session.NextToken();
    EXPECT_TRUE(step.ok()) << step.status();
    if (!step.ok()) break;
  }
  return session.result().answer;
}

TEST(CudaSessionTest, CheckpointedMidDocumentAndResumedOnCudaAnswersIdentically) {
  REQUIRE_GPU();
  REQUIRE_DEFAULT_MODEL(model);
  Fixture f;
  f.model = model;
  auto tokenizer = Tokenizer::Create(model->file().tokenizer());
  ASSERT_TRUE(tokenizer.ok());
  f.tokenizer = std::move(*tokenizer);
  f.tokens = f.tokenizer->Encode(Ledger(110), false);
  ASSERT_GT(f.tokens.size(), 3000u);
  auto cuda = OpenReadingBackend("cuda", model);
  ASSERT_TRUE(cuda.ok()) << cuda.status();
  kernels::ThreadPool pool(2);
  DocumentJobOptions options = Options();
  const int64_t n = static_cast<int64_t>(f.tokens.size());

  auto undisturbed_archive = f.FreshArchive();
  options.archive = undisturbed_archive.get();
  auto undisturbed = DocumentSession::Create(**cuda, *f.tokenizer, options, nullptr, &pool, n);
  ASSERT_TRUE(undisturbed.ok()) << undisturbed.status();
  const std::string answer = Finish(**undisturbed, f.tokens);
  const DocumentJobResult& want = (*undisturbed)->result();
  std::printf(
      "[cuda session] %lld tokens, recalled %lld slots, device memory %.1f MB, answer: %s\n",
      static_cast<long long>(n), static_cast<long long>(want.recalled_slots),
      (*undisturbed)->runner().document().resident_bytes() / 1e6, answer.c_str());
  EXPECT_GT(want.recalled_slots, 0);
  EXPECT_TRUE(want.recall_error.empty()) << want.recall_error;
  EXPECT_FALSE(answer.empty());

  // Interrupted after 7 segments and 100 tokens of the 8th: the checkpoint and the archive
  // blocks put up to it are what a worker ships.
  auto first_archive = f.FreshArchive();
  RecordingBlockArchive recording(first_archive.get());
  options.archive = &recording;
  SessionCheckpoint checkpoint;
  {
    auto cut = DocumentSession::Create(**cuda, *f.tokenizer, options, nullptr, &pool, n);
    ASSERT_TRUE(cut.ok()) << cut.status();
    ReadUntil(**cut, f.tokens, 256, 7);
    const int64_t at = (*cut)->document_tokens_consumed();
    auto consumed = (*cut)->ReadStep(std::span(f.tokens).subspan(at, 100), false);
    ASSERT_TRUE(consumed.ok()) << consumed.status();
    auto taken = (*cut)->Checkpoint();
    ASSERT_TRUE(taken.ok()) << taken.status();
    checkpoint = std::move(*taken);
  }
  const std::vector<ArchivedBlock> blocks = recording.TakeRecorded();
  ASSERT_FALSE(blocks.empty());
  EXPECT_FALSE(checkpoint.memory.pending_tokens.empty());

  auto second_archive = f.FreshArchive();
  ASSERT_TRUE(ReplayBlocks(blocks, second_archive.get()).ok());
  options.archive = second_archive.get();
  auto resumed = DocumentSession::Create(**cuda, *f.tokenizer, options, nullptr, &pool, n);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  ASSERT_TRUE((*resumed)->Restore(checkpoint).ok());
  EXPECT_EQ(Finish(**resumed, f.tokens), answer);
  EXPECT_EQ((*resumed)->result().recalled_slots, want.recalled_slots);
  EXPECT_EQ(second_archive->stored_bytes(), undisturbed_archive->stored_bytes());
}

TEST(CudaSessionTest, NextTokenDistributionsAfterReadingAgreeWithTheCpu) {
  REQUIRE_GPU();
  REQUIRE_DEFAULT_MODEL(model);
  auto tokenizer = Tokenizer::Create(model->file().tokenizer());
  ASSERT_TRUE(tokenizer.ok());
  const std::vector<int32_t> document = (*tokenizer)->Encode(Ledger(110), false);
  DocumentJobOptions options = Options();
  auto prompt = BuildTaskPrompt(**tokenizer, model->file().tokenizer().chat_template, options.task,
                                options.question);
  ASSERT_TRUE(prompt.ok());
  const std::vector<int32_t> task =
      (*tokenizer)->Encode(TaskInstruction(options.task, options.question), false);
  const int64_t vocab = model->config().vocab_size;
  constexpr int kAnswerTokens = 16;
  kernels::ThreadPool pool(4);

  // Reads the prompt head + document, recalls, and reads the question.
  auto read = [&](ReadingBackend& backend,
                  InMemoryBlockArchive* archive) -> std::unique_ptr<RecurrentRunner> {
    auto runner = RecurrentRunner::Create(&backend, options.runner, nullptr, &pool);
    EXPECT_TRUE(runner.ok()) << runner.status();
    if (!runner.ok()) return nullptr;
    EXPECT_TRUE((*runner)->SetTask(task).ok());
    (*runner)->set_archive(archive);
    std::vector<int32_t> tokens = prompt->before_document;
    tokens.insert(tokens.end(), document.begin(), document.end());
    EXPECT_TRUE((*runner)->Feed(tokens).ok());
    EXPECT_TRUE((*runner)->Flush().ok());
    auto recalled = (*runner)->Recall(prompt->after_document, options.recall);
    EXPECT_TRUE(recalled.ok()) << recalled.status();
    EXPECT_GT(recalled.value_or(0), 0);
    GenerateOptions generate;
    generate.max_new_tokens = kAnswerTokens;
    EXPECT_TRUE((*runner)->BeginGenerate(prompt->after_document, generate).ok());
    return std::move(*runner);
  };

  auto cpu_backend = OpenReadingBackend("cpu", model);
  ASSERT_TRUE(cpu_backend.ok());
  const ModelConfig& c = model->config();
  InMemoryBlockArchive cpu_archive(c.n_layers, c.n_kv_heads, c.head_dim);
  auto cpu = read(**cpu_backend, &cpu_archive);
  ASSERT_NE(cpu, nullptr);
  std::vector<int32_t> answer;
  std::vector<float> cpu_logits;
  for (int i = 0; i < kAnswerTokens; ++i) {
    auto next = cpu->NextToken();
    ASSERT_TRUE(next.ok()) << next.status();
    cpu_logits.insert(cpu_logits.end(), cpu->last_logits().begin(), cpu->last_logits().end());
    answer.push_back(next->token);
    if (next->done) break;
  }

  auto cuda_backend = OpenReadingBackend("cuda", model);
  ASSERT_TRUE(cuda_backend.ok()) << cuda_backend.status();
  InMemoryBlockArchive cuda_archive(c.n_layers, c.n_kv_heads, c.head_dim);
  auto cuda = read(**cuda_backend, &cuda_archive);
  ASSERT_NE(cuda, nullptr);
  std::vector<float> cuda_logits(cuda->last_logits().begin(), cuda->last_logits().end());
  if (answer.size() > 1) {
    // Teacher-forced: the cuda side reads the cpu's answer tokens (eviction is frozen).
    std::vector<float> rows;
    ASSERT_TRUE(cuda->ReadWithLogits(std::span(answer).first(answer.size() - 1), &rows).ok());
    cuda_logits.insert(cuda_logits.end(), rows.begin(), rows.end());
  }
  ASSERT_EQ(cuda_logits.size(), cpu_logits.size());
  double sum = 0, most = 0;
  int same_argmax = 0;
  const int64_t rows = static_cast<int64_t>(answer.size());
  for (int64_t t = 0; t < rows; ++t) {
    const std::span<const float> p(cpu_logits.data() + t * vocab, vocab);
    const std::span<const float> q(cuda_logits.data() + t * vocab, vocab);
    const double kl = testing::KlDivergence(p.data(), q.data(), vocab);
    ASSERT_TRUE(std::isfinite(kl));
    sum += kl;
    most = std::max(most, kl);
    same_argmax += std::max_element(p.begin(), p.end()) - p.begin() ==
                   std::max_element(q.begin(), q.end()) - q.begin();
  }
  std::printf(
      "[cuda vs cpu] %zu document tokens, %lld answer tokens: mean KL %.3g nats, max KL %.3g, "
      "same argmax %d/%lld, answer: %s\n",
      document.size(), static_cast<long long>(rows), sum / rows, most, same_argmax,
      static_cast<long long>(rows), (*tokenizer)->Decode(answer).c_str());
  EXPECT_LE(sum / rows, 1e-2);
}

TEST(CudaSessionTest, TokensChosenOnTheDeviceAreTheHostsChoices) {
  REQUIRE_GPU();
  REQUIRE_DEFAULT_MODEL(model);
  auto tokenizer = Tokenizer::Create(model->file().tokenizer());
  ASSERT_TRUE(tokenizer.ok());
  const std::vector<int32_t> document = (*tokenizer)->Encode(Ledger(40), false);
  const std::vector<int32_t> prompt =
      (*tokenizer)->Encode("\nWhat did the keeper log in 1710? Answer:", false);
  auto cuda = OpenReadingBackend("cuda", model);
  ASSERT_TRUE(cuda.ok()) << cuda.status();
  kernels::ThreadPool pool(2);
  const RunnerConfig config = Options().runner;

  GenerateOptions greedy;
  greedy.max_new_tokens = 40;
  GenerateOptions sampled = greedy;
  sampled.sampling.temperature = 0.8f;
  sampled.sampling.top_p = 0.9f;
  sampled.sampling.seed = 11;
  sampled.sampling.repeat_penalty = 1.1f;
  GenerateOptions unfiltered = sampled;
  unfiltered.sampling.top_p = 1.0f;
  unfiltered.sampling.temperature = 1.2f;
  for (const GenerateOptions* base : {&greedy, &sampled, &unfiltered}) {
    std::vector<int32_t> answers[2];
    for (bool host : {true, false}) {
      auto runner = RecurrentRunner::Create(cuda->get(), config, nullptr, &pool);
      ASSERT_TRUE(runner.ok()) << runner.status();
      ASSERT_TRUE((*runner)->Feed(document).ok());
      GenerateOptions options = *base;
      options.host_logits = host;
      ASSERT_TRUE((*runner)->BeginGenerate(prompt, options).ok());
      std::vector<int32_t>& answer = answers[host ? 0 : 1];
      for (;;) {
        auto next = (*runner)->NextToken();
        ASSERT_TRUE(next.ok()) << next.status();
        answer.push_back(next->token);
        // Only the host path has a row of logits once the first token is chosen.
        if (answer.size() > 1) {
          EXPECT_EQ((*runner)->last_logits().empty(), !host);
        }
        if (next->done) break;
      }
    }
    std::printf("[device choice] temperature %.1f top_p %.1f: %s\n", base->sampling.temperature,
                base->sampling.top_p, (*tokenizer)->Decode(answers[1]).c_str());
    EXPECT_EQ(answers[1], answers[0]);
    EXPECT_EQ(answers[1].size(), static_cast<size_t>(base->max_new_tokens));
  }
}

}  // namespace
}  // namespace longread::engine
