// `longread run` goes through the service's coordinator and worker hosted in its own process
// (services/cli/embedded_run.h): its --json names the in-process coordinator's job, and its
// greedy answer equals the engine's RunDocumentJob on the same document and options.
#include <algorithm>
#include <string>
#include <vector>

#include "cache/block_archive_store.h"
#include "cache/cache_db.h"
#include "engine/job/document_job.h"
#include "engine/model/llama_model.h"
#include "engine/model_files/model_file.h"
#include "engine/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "kernels/thread_pool.h"
#include "services/cli/embedded_run.h"
#include "services/coordinator/job_service.h"
#include "services/worker/job_options.h"
#include "tests/cache/test_util.h"
#include "tests/services/cli_runner.h"

namespace longread::services {
namespace {

using testing::JsonInt;

// The string value after "key": in a one-line JSON object (no escapes needed by these tests).
std::string JsonString(const std::string& json, const std::string& key) {
  const std::string needle = "\"" + key + "\":\"";
  const size_t at = json.find(needle);
  if (at == std::string::npos) return "";
  std::string out;
  for (size_t i = at + needle.size(); i < json.size() && json[i] != '"'; ++i) {
    if (json[i] == '\\' && i + 1 < json.size()) {
      ++i;
      out += json[i] == 'n' ? '\n' : json[i];
    } else {
      out += json[i];
    }
  }
  return out;
}

// `longread run`'s options survive the trip through the service's job options: the CLI's
// translation, the coordinator's defaults, the worker's translation back.
TEST(CliEmbeddedTest, EveryRunOptionReachesTheWorker) {
  engine::DocumentJobOptions run;
  run.task = engine::Task::kQuestion;
  run.question = "Which code?";
  engine::MemoryConfig& m = run.runner.memory;
  m.top_k = 96;
  m.window = 48;
  m.sinks = 2;
  m.block_tokens = 16;
  m.position_mode = engine::PositionMode::kOriginal;
  m.block_score = engine::BlockScore::kMean;
  m.task_weight = 0.5f;
  m.task_score = engine::TaskScore::kMaxDot;
  m.mask_mode = engine::MaskMode::kSoft;
  run.runner.segment_tokens = 100;
  run.instruction_first = true;
  run.recall.blocks = 3;
  run.recall.candidates = 7;
  run.recall.shared = false;
  run.generate.max_new_tokens = 9;
  run.generate.sampling.temperature = 0.7f;
  run.generate.sampling.top_p = 0.9f;
  run.generate.sampling.seed = 5;
  run.generate.sampling.no_repeat_ngram = 0;
  run.generate.sampling.repeat_penalty = 1.1f;
  run.generate.sampling.repeat_last_n = 32;

  v1::DocumentAssignment assignment;
  ToServiceJob(run, assignment.mutable_task(), assignment.mutable_options());
  ASSERT_TRUE(coordinator::ValidateTask(assignment.mutable_task()).ok());
  ASSERT_TRUE(coordinator::ResolveJobOptions(assignment.mutable_options()).ok());
  auto back = worker::ToDocumentJobOptions(assignment);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->task, run.task);
  EXPECT_EQ(back->question, run.question);
  const engine::MemoryConfig& b = back->runner.memory;
  EXPECT_EQ(b.top_k, m.top_k);
  EXPECT_EQ(b.window, m.window);
  EXPECT_EQ(b.sinks, m.sinks);
  EXPECT_EQ(b.block_tokens, m.block_tokens);
  EXPECT_EQ(b.position_mode, m.position_mode);
  EXPECT_EQ(b.block_score, m.block_score);
  EXPECT_EQ(b.task_weight, m.task_weight);
  EXPECT_EQ(b.task_score, m.task_score);
  EXPECT_EQ(b.mask_mode, m.mask_mode);
  EXPECT_EQ(back->runner.segment_tokens, run.runner.segment_tokens);
  EXPECT_EQ(back->instruction_first, run.instruction_first);
  EXPECT_EQ(back->recall.blocks, run.recall.blocks);
  EXPECT_EQ(back->recall.candidates, run.recall.candidates);
  EXPECT_EQ(back->recall.shared, run.recall.shared);
  const engine::GenerateOptions& g = back->generate;
  EXPECT_EQ(g.max_new_tokens, run.generate.max_new_tokens);
  EXPECT_EQ(g.sampling.temperature, run.generate.sampling.temperature);
  EXPECT_EQ(g.sampling.top_p, run.generate.sampling.top_p);
  EXPECT_EQ(g.sampling.seed, run.generate.sampling.seed);
  EXPECT_EQ(g.sampling.no_repeat_ngram, run.generate.sampling.no_repeat_ngram);
  EXPECT_EQ(g.sampling.repeat_penalty, run.generate.sampling.repeat_penalty);
  EXPECT_EQ(g.sampling.repeat_last_n, run.generate.sampling.repeat_last_n);

  // Dense attention travels as itself, whatever the memory options were.
  engine::DocumentJobOptions dense;
  dense.runner.memory = engine::MemoryConfig::Dense();
  v1::DocumentAssignment dense_assignment;
  ToServiceJob(dense, dense_assignment.mutable_task(), dense_assignment.mutable_options());
  ASSERT_TRUE(coordinator::ResolveJobOptions(dense_assignment.mutable_options()).ok());
  auto dense_back = worker::ToDocumentJobOptions(dense_assignment);
  ASSERT_TRUE(dense_back.ok()) << dense_back.status();
  EXPECT_TRUE(dense_back->runner.memory.is_dense());

  // Zeros that mean something (no selected keys, no sinks, top-p 0) are not taken for "unset"
  // and replaced by the defaults on the way.
  engine::DocumentJobOptions zeros;
  zeros.runner.memory.top_k = 0;
  zeros.runner.memory.sinks = 0;
  zeros.generate.sampling.top_p = 0.0f;
  v1::DocumentAssignment zeros_assignment;
  ToServiceJob(zeros, zeros_assignment.mutable_task(), zeros_assignment.mutable_options());
  ASSERT_TRUE(coordinator::ResolveJobOptions(zeros_assignment.mutable_options()).ok());
  auto zeros_back = worker::ToDocumentJobOptions(zeros_assignment);
  ASSERT_TRUE(zeros_back.ok()) << zeros_back.status();
  EXPECT_EQ(zeros_back->runner.memory.top_k, 0);
  EXPECT_EQ(zeros_back->runner.memory.sinks, 0);
  EXPECT_EQ(zeros_back->generate.sampling.top_p, 0.0f);

  // Unset fields still take `longread run`'s defaults.
  v1::DocumentAssignment unset;
  unset.mutable_task()->set_kind(v1::TASK_KIND_SUMMARIZE);
  ASSERT_TRUE(coordinator::ResolveJobOptions(unset.mutable_options()).ok());
  auto unset_back = worker::ToDocumentJobOptions(unset);
  ASSERT_TRUE(unset_back.ok()) << unset_back.status();
  EXPECT_EQ(unset_back->runner.memory.top_k, 2048);
  EXPECT_EQ(unset_back->runner.memory.sinks, 4);
  EXPECT_EQ(unset_back->generate.sampling.top_p, 1.0f);
}

TEST(CliEmbeddedTest, RunGoesThroughTheInProcessServiceAndAnswersAsTheEngine) {
  if (!testing::HaveModel()) GTEST_SKIP() << "default model missing: run scripts/setup.sh";
  cache::TempDir work;
  const std::string cache_dir = work.path() + "/cache";
  std::vector<std::string> args = testing::RecallArgs(cache_dir);
  std::erase(args, "--quiet");  // the info log lines name the job
  args.insert(args.end(), {"--threads", "1", "--log-format", "json"});
  const testing::CliResult run = testing::RunLongread(work.path(), testing::SmallDocument(), args);
  ASSERT_EQ(run.exit_code, 0) << run.err;
  // The in-process coordinator's job id, in --json and in the final log line.
  const std::string job_id = JsonString(run.out, "job_id");
  EXPECT_FALSE(job_id.empty()) << run.out;
  EXPECT_NE(run.err.find("\"job_id\":\"" + job_id + "\""), std::string::npos) << run.err;
  EXPECT_GT(JsonInt(run.out, "recalled_slots"), 0) << run.out;
  EXPECT_GT(JsonInt(run.out, "archive_bytes"), 0) << run.out;

  // The engine alone, in this process, on the same document with the same options (greedy).
  auto file = engine::ModelFile::Open(testing::ModelPath());
  ASSERT_TRUE(file.ok()) << file.status();
  auto tokenizer = engine::Tokenizer::Create((*file)->tokenizer());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  auto model = engine::LlamaModel::Load(std::move(*file));
  ASSERT_TRUE(model.ok()) << model.status();
  const auto& c = (*model)->config();
  auto db = cache::CacheDb::Open(work.path() + "/engine-db");
  ASSERT_TRUE(db.ok()) << db.status();
  auto archive = cache::RocksDbBlockArchive::Open(db->get(), "engine", c.n_layers, c.n_kv_heads,
                                                  c.head_dim, cache::BlockArchiveOptions{});
  ASSERT_TRUE(archive.ok()) << archive.status();
  engine::DocumentJobOptions options;  // RecallArgs, with `longread run`'s other defaults
  options.task = engine::Task::kQuestion;
  options.question = "What is the code of the east storeroom?";
  options.runner.memory.block_tokens = 32;
  options.runner.memory.top_k = 64;
  options.runner.memory.window = 64;
  options.runner.segment_tokens = 128;
  options.recall.blocks = 2;
  options.generate.max_new_tokens = 16;
  options.archive = archive->get();
  kernels::ThreadPool pool(1);
  auto engine_result = engine::RunDocumentJob(**model, **tokenizer, testing::SmallDocument(),
                                              options, nullptr, &pool, {});
  ASSERT_TRUE(engine_result.ok()) << engine_result.status();
  EXPECT_EQ(JsonString(run.out, "answer"), engine_result->answer) << run.out;
  EXPECT_EQ(JsonInt(run.out, "document_tokens"), engine_result->document_tokens);
  EXPECT_EQ(JsonInt(run.out, "recalled_slots"), engine_result->recalled_slots);
}

}  // namespace
}  // namespace longread::services
