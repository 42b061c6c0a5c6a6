// longread_quality_bench: does the memory keep what the model needs? Compares memory methods at an
// equal budget of keys per query (dense attention where it fits the model's context, window-only
// with sinks, SparseK over tokens or blocks, task-aware scores, recall from the archive) on passkey
// retrieval in real or filler text, on perplexity of long real text, and on how many planted facts
// a summary mentions. Prints a table and writes every trial to JSON
// (bench/results/quality-<date>.json by default). See bench/quality/README.md.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "bench/quality/haystack.h"
#include "bench/quality/report.h"
#include "engine/job/document_job.h"
#include "engine/memory/open_backend.h"
#include "engine/memory/snapshot.h"
#include "engine/model/llama_model.h"
#include "engine/model_files/model_file.h"
#include "engine/scorer/scorer.h"
#include "engine/tokenizer/tokenizer.h"
#include "kernels/thread_pool.h"

namespace longread::bench {
namespace {

using engine::MemoryConfig;
using engine::RunnerConfig;

constexpr char kQuestion[] = "What is the pass key?";

constexpr char kHelp[] = R"(Usage: longread_quality_bench [options]

Model:      --model PATH (default models/SmolLM2-135M-Instruct.Q4_1.gguf) --threads N
            --device cpu|cuda|auto (where documents are read, as longread run's --device)
Methods:    --methods dense,window,window+recall,sparsek,sparsek-noscorer,blocks,blocks+task,
            blocks+task+recall
            (default dense,window,sparsek)   --budget B (keys per query besides sinks, 1024)
            --positions slot|original (slot: the product's default)
            --sinks S (4)  --sparsek-window W (256; SparseK top_k = B - W)  --segment-tokens L
            --scorer PATH|auto|none (auto: engine/scorer/weights/<model>.lrscorer; refused
            when that file does not exist)
            --block-tokens N (32: blocks*)  --task-weight X (1: +task)
            --task-score segment-mass|max-dot (segment-mass: see engine::TaskScore)
            --recall-blocks R (4: +recall; its top_k is B - W - R*N, so that the memory after
            recall holds the same budget as every other method; window+recall: its window is
            B - R*N)  --recall-candidates C (64: blocks per head ranked exactly)
            --recall-scope shared|head (shared: one choice for every head)
            --block-score max|mean (max: how blocks* score a block from its tokens' scores)
            any method + "+first" (not window+oracle): the question also before the document
Passkey:    --lengths 2048,4096 (tokens the model sees: chat prompt + document + answer room)
            --depths 0.1,0.5,0.9 | random   --trials N or N1,N2,... (per length, per depth)
            --first-trial T (start at trial T: extends an earlier run with new documents)
            --haystack filler|real  --haystack-dir DIR[:NAME[:MAX_FILES]] (repeatable)
            --answer-tokens N (32; the model writes one token per digit)
Generation: --no-repeat-ngram N  --repeat-penalty P  --repeat-last-n N (defaults: longread's)
            --compare-no-repeat-ngram N  --compare-repeat-penalty P: passkey trials also answer
            with the generation settings changed so, from the same read (paired: "compared_*")
Perplexity: --perplexity FILE_OR_DIR --ppl-tokens N (mean NLL after the first segment)
Facts:      --facts N --facts-tokens T (8192) --summary-tokens N (200)
Run:        --seed N  --max-seconds S (stop between documents, counts recorded)  --json OUT
)";

struct Options {
  std::string model = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  std::string device = "cpu";
  int64_t threads = 0;
  std::vector<std::string> methods = {"dense", "window", "sparsek"};
  int64_t budget = 1024, sinks = 4, sparsek_window = 256, segment_tokens = 2048;
  std::string scorer = "auto";
  int64_t block_tokens = 32, recall_blocks = 4, recall_candidates = 64;
  bool recall_shared = true;
  engine::BlockScore block_score = engine::BlockScore::kMax;
  engine::PositionMode positions = engine::PositionMode::kSlotOrder;
  double task_weight = 1.0;
  engine::TaskScore task_score = engine::TaskScore::kSegmentMass;
  std::vector<int64_t> lengths = {2048, 4096};
  std::vector<double> depths = {0.1, 0.5, 0.9};
  bool random_depth = false;
  std::vector<int64_t> trials = {20};
  int64_t first_trial = 0;  // to extend an earlier run with the next trials' documents
  HaystackKind haystack = HaystackKind::kReal;
  std::vector<std::string> haystack_dirs;
  int64_t answer_tokens = 32;
  engine::SamplingOptions sampling;  // greedy, with longread's controls against loops
  std::optional<engine::SamplingOptions> compare_sampling;
  std::string perplexity;
  int64_t ppl_tokens = 8192;
  int64_t facts = 0, facts_tokens = 8192, summary_tokens = 200;
  uint64_t seed = 1;
  double max_seconds = 0;
  std::string json;
};

std::vector<std::string> DefaultHaystackDirs() {
  // Licenses, package copyright files, a slice of the C++ standard headers and this repository's
  // own sources: prose, legal text and code, as a real long document mixes them.
  const char* src = std::getenv("LONGREAD_SOURCE_DIR");
  const std::string root = src != nullptr ? src : ".";
  return {"/usr/share/common-licenses",
          "/usr/share/doc:copyright:400",
          "/usr/include/c++/12::150",
          root + "/engine",
          root + "/kernels",
          root + "/services",
          root + "/cache"};
}

bool ParseOptions(int argc, char** argv, Options* o, std::string* error) {
  auto ints = [](const std::string& v, std::vector<int64_t>* out) {
    out->clear();
    for (absl::string_view part : absl::StrSplit(v, ',')) {
      int64_t x = 0;
      if (!absl::SimpleAtoi(part, &x) || x < 0) return false;
      out->push_back(x);
    }
    return !out->empty();
  };
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kHelp, stdout);
      std::exit(0);
    }
    if (i + 1 >= argc || a.rfind("--", 0) != 0) {
      *error = absl::StrCat("unexpected argument or missing value: ", a);
      return false;
    }
    const std::string name = a.substr(2), v = argv[++i];
    std::vector<int64_t> list;
    bool ok = true;
    auto one = [&](int64_t* out, int64_t min) { ok = absl::SimpleAtoi(v, out) && *out >= min; };
    if (name == "model") {
      o->model = v;
    } else if (name == "device") {
      o->device = v;
    } else if (name == "threads") {
      one(&o->threads, 1);
    } else if (name == "methods") {
      o->methods = absl::StrSplit(v, ',');
      for (const auto& m : o->methods) {
        // Any method may end in +first: the question is also placed before the document.
        const std::string base = absl::EndsWith(m, "+first") ? m.substr(0, m.size() - 6) : m;
        ok = ok && (base == "dense" || base == "window" || base == "window+recall" ||
                    (base == "window+oracle" && base == m) || base == "sparsek" ||
                    base == "sparsek-noscorer" || base == "blocks" || base == "blocks+task" ||
                    base == "blocks+recall" || base == "blocks+task+recall");
      }
    } else if (name == "budget") {
      one(&o->budget, 1);
    } else if (name == "sinks") {
      one(&o->sinks, 0);
    } else if (name == "sparsek-window") {
      one(&o->sparsek_window, 1);
    } else if (name == "segment-tokens") {
      one(&o->segment_tokens, 1);
    } else if (name == "scorer") {
      o->scorer = v;
    } else if (name == "block-tokens") {
      one(&o->block_tokens, 1);
    } else if (name == "recall-blocks") {
      one(&o->recall_blocks, 1);
    } else if (name == "recall-candidates") {
      one(&o->recall_candidates, 0);
    } else if (name == "block-score") {
      ok = v == "max" || v == "mean";
      o->block_score = v == "mean" ? engine::BlockScore::kMean : engine::BlockScore::kMax;
    } else if (name == "recall-scope") {
      ok = v == "shared" || v == "head";
      o->recall_shared = v == "shared";
    } else if (name == "task-score") {
      ok = v == "segment-mass" || v == "max-dot";
      o->task_score = v == "max-dot" ? engine::TaskScore::kMaxDot : engine::TaskScore::kSegmentMass;
    } else if (name == "task-weight") {
      ok = absl::SimpleAtod(v, &o->task_weight) && o->task_weight >= 0;
    } else if (name == "lengths") {
      ok = ints(v, &o->lengths);
    } else if (name == "depths") {
      o->random_depth = v == "random";
      o->depths.clear();
      if (!o->random_depth) {
        for (absl::string_view part : absl::StrSplit(v, ',')) {
          double d = 0;
          ok = ok && absl::SimpleAtod(part, &d) && d >= 0 && d <= 1;
          o->depths.push_back(d);
        }
      }
    } else if (name == "first-trial") {
      one(&o->first_trial, 0);
    } else if (name == "trials") {
      ok = ints(v, &o->trials);
    } else if (name == "haystack") {
      ok = v == "real" || v == "filler";
      o->haystack = v == "filler" ? HaystackKind::kFiller : HaystackKind::kReal;
    } else if (name == "haystack-dir") {
      o->haystack_dirs.push_back(v);
    } else if (name == "answer-tokens") {
      one(&o->answer_tokens, 1);
    } else if (name == "no-repeat-ngram") {
      one(&o->sampling.no_repeat_ngram, 0);
    } else if (name == "repeat-last-n") {
      one(&o->sampling.repeat_last_n, 0);
    } else if (name == "repeat-penalty") {
      ok = absl::SimpleAtof(v, &o->sampling.repeat_penalty) && o->sampling.repeat_penalty > 0;
    } else if (name == "compare-no-repeat-ngram") {
      if (!o->compare_sampling) o->compare_sampling = o->sampling;
      one(&o->compare_sampling->no_repeat_ngram, 0);
    } else if (name == "compare-repeat-penalty") {
      if (!o->compare_sampling) o->compare_sampling = o->sampling;
      ok = absl::SimpleAtof(v, &o->compare_sampling->repeat_penalty) &&
           o->compare_sampling->repeat_penalty > 0;
    } else if (name == "perplexity") {
      o->perplexity = v;
    } else if (name == "ppl-tokens") {
      one(&o->ppl_tokens, 2);
    } else if (name == "facts") {
      one(&o->facts, 0);
    } else if (name == "facts-tokens") {
      one(&o->facts_tokens, 256);
    } else if (name == "summary-tokens") {
      one(&o->summary_tokens, 1);
    } else if (name == "positions") {
      ok = v == "slot" || v == "original";
      o->positions =
          v == "original" ? engine::PositionMode::kOriginal : engine::PositionMode::kSlotOrder;
    } else if (name == "seed") {
      int64_t s = 0;
      one(&s, 0);
      o->seed = static_cast<uint64_t>(s);
    } else if (name == "max-seconds") {
      ok = absl::SimpleAtod(v, &o->max_seconds) && o->max_seconds >= 0;
    } else if (name == "json") {
      o->json = v;
    } else {
      *error = absl::StrCat("unknown option --", name);
      return false;
    }
    if (!ok) {
      *error = absl::StrCat("bad value for --", name, ": '", v, "'");
      return false;
    }
  }
  if (o->trials.size() != 1 && o->trials.size() != o->lengths.size()) {
    *error = "--trials takes one count or one per length";
    return false;
  }
  if (o->sparsek_window > o->budget) {
    *error = "--sparsek-window must not exceed --budget";
    return false;
  }
  for (const auto& m : o->methods) {
    if (m == "blocks+task+recall" &&
        o->budget - o->sparsek_window < o->recall_blocks * o->block_tokens) {
      *error = "--recall-blocks x --block-tokens must fit in --budget minus --sparsek-window";
      return false;
    }
  }
  if (o->haystack_dirs.empty()) o->haystack_dirs = DefaultHaystackDirs();
  return true;
}

// A memory method is a configuration of the product's own job (engine::RunDocumentJob's flow on
// tokens), so the bench measures what `longread run` does with the same flags.
struct Method {
  std::string name;
  RunnerConfig runner;
  std::shared_ptr<const engine::ScorerWeights> scorer;
  std::string scorer_path = "none";  // what the record says this method used
  engine::SamplingOptions sampling;
  std::optional<engine::SamplingOptions> compare_sampling;  // passkey: a second answer with these
  bool task_aware = false;
  engine::RecallOptions recall;
  bool oracle = false;             // window+oracle: recall the key's blocks (a diagnostic ceiling)
  bool instruction_first = false;  // +first
};

std::vector<Method> MakeMethods(const Options& o,
                                std::shared_ptr<const engine::ScorerWeights> scorer,
                                const std::string& scorer_path) {
  std::vector<Method> methods;
  for (const std::string& full_name : o.methods) {
    Method m;
    m.name = full_name;
    m.runner.segment_tokens = o.segment_tokens;
    m.sampling = o.sampling;
    m.compare_sampling = o.compare_sampling;
    // +first changes the prompt, not the memory: the memory is configured by the name without it.
    m.instruction_first = absl::EndsWith(full_name, "+first");
    const std::string name =
        m.instruction_first ? full_name.substr(0, full_name.size() - 6) : full_name;
    if (name == "dense") {
      m.runner.memory = MemoryConfig::Dense();
    } else {
      MemoryConfig& memory = m.runner.memory;
      memory.sinks = static_cast<int32_t>(o.sinks);
      memory.position_mode = o.positions;
      memory.task_weight = 0.0f;
      if (name.rfind("window", 0) == 0) {
        memory.window = o.budget;
        memory.top_k = 0;
      } else {
        memory.window = o.sparsek_window;
        memory.top_k = o.budget - o.sparsek_window;
        m.scorer = scorer;
        if (scorer != nullptr) m.scorer_path = scorer_path;
        // Without a scorer every key ties at 0 and SparseK keeps the oldest: say so in every
        // record.
        if (name == "sparsek" && scorer == nullptr) {
          m.name = m.instruction_first ? "sparsek-noscorer+first" : "sparsek-noscorer";
        }
        if (name == "sparsek-noscorer") {
          m.scorer = nullptr;
          m.scorer_path = "none";
        }
      }
      if (name.rfind("blocks", 0) == 0) {
        memory.block_tokens = o.block_tokens;
        memory.block_score = o.block_score;
      }
      if (name.find("+task") != std::string::npos) {
        m.task_aware = true;
        memory.task_weight = static_cast<float>(o.task_weight);
        memory.task_score = o.task_score;
      }
      if (name == "window+oracle") {
        m.oracle = true;
        m.recall.blocks = 2;  // a key of <= 6 tokens spans at most 2 blocks of 32
        m.recall.shared = false;
        memory.window -= m.recall.blocks * o.block_tokens;
        memory.block_tokens = o.block_tokens;
      }
      if (name.find("+recall") != std::string::npos) {
        // Recalled blocks join the memory before the answer: leave room for them in the budget.
        m.recall.blocks = o.recall_blocks;
        m.recall.candidates = o.recall_candidates;
        m.recall.shared = o.recall_shared;
        const int64_t recalled = o.recall_blocks * o.block_tokens;
        if (memory.top_k > 0) {
          memory.top_k -= recalled;
        } else {
          memory.window -= recalled;  // window+recall: archived blocks of block_tokens
          memory.block_tokens = o.block_tokens;
        }
      }
    }
    methods.push_back(std::move(m));
  }
  return methods;
}

double SecondsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// The job's own result, plus what the bench measures on the memory before the answer.
struct Answer {
  engine::DocumentJobResult job;
  double key_held_share = -1;
};

// Where the key's digits sit in the document (the first time they appear at or after the
// needle), so that the bench can tell "the memory lost the key" from "the model did not use it".
std::vector<int64_t> KeyPositions(const engine::Tokenizer& tokenizer,
                                  const std::vector<int32_t>& document, int64_t needle_at,
                                  const std::string& key) {
  for (int64_t i = needle_at; i < static_cast<int64_t>(document.size()); ++i) {
    std::string text;
    for (int64_t j = i; j < static_cast<int64_t>(document.size()) && text.size() < key.size();
         ++j) {
      text += tokenizer.Decode(std::span<const int32_t>(&document[j], 1));
      if (text == key) {
        std::vector<int64_t> positions;
        for (int64_t p = i; p <= j; ++p) positions.push_back(p);
        return positions;
      }
      if (key.compare(0, text.size(), text) != 0) break;
    }
  }
  return {};
}

// A diagnostic, not a memory: an archive that "recalls" exactly the blocks holding the key, in
// every head. window+oracle then measures how well the model answers when recall is perfect, which
// separates "recall chose the wrong blocks" from "the memory's context is too poor to answer".
class OracleArchive : public engine::BlockArchive {
 public:
  OracleArchive(int32_t n_layers, int32_t n_kv_heads, int64_t head_dim,
                std::vector<int64_t> key_positions)
      : all_(n_layers, n_kv_heads, head_dim), key_positions_(std::move(key_positions)) {}
  absl::Status Put(engine::ArchivedBlock block) override {
    for (int64_t p : block.positions) {
      if (std::binary_search(key_positions_.begin(), key_positions_.end(), p)) {
        key_blocks_.push_back(block);
        break;
      }
    }
    return all_.Put(std::move(block));
  }
  absl::StatusOr<std::vector<engine::ArchivedBlock>> Recall(int32_t layer, int32_t kv_head,
                                                            std::span<const float>, int64_t,
                                                            int64_t r) override {
    std::vector<engine::ArchivedBlock> out;
    for (const auto& b : key_blocks_) {
      if (b.layer == layer && b.kv_head == kv_head && static_cast<int64_t>(out.size()) < r) {
        out.push_back(b);
      }
    }
    return out;
  }
  absl::StatusOr<std::vector<engine::ArchivedBlock>> Fetch(
      int32_t layer, int32_t kv_head, std::span<const int64_t> block_ids) override {
    return all_.Fetch(layer, kv_head, block_ids);
  }
  int64_t stored_bytes() const override { return all_.stored_bytes(); }

 private:
  engine::InMemoryBlockArchive all_;
  std::vector<int64_t> key_positions_;  // in read positions (prompt head included)
  std::vector<engine::ArchivedBlock> key_blocks_;
};

absl::StatusOr<Answer> ReadAndAnswer(engine::ReadingBackend& backend,
                                     const engine::Tokenizer& tokenizer, const Method& method,
                                     engine::Task task, std::string_view question,
                                     const std::vector<int32_t>& document, int64_t max_new_tokens,
                                     kernels::ThreadPool* pool,
                                     const std::vector<int64_t>& key_positions = {}) {
  engine::DocumentJobOptions options;
  options.task = task;
  options.question = std::string(question);
  options.runner = method.runner;
  options.generate.max_new_tokens = max_new_tokens;
  options.generate.sampling = method.sampling;
  if (task == engine::Task::kQuestion) options.also_answer_with_sampling = method.compare_sampling;
  options.task_aware = method.task_aware;
  options.instruction_first = method.instruction_first;
  const engine::LlamaModel& model = backend.host_model();
  const auto& c = model.config();
  // In RAM: the bench measures what recall brings back, not RocksDB (bench/cache measures that).
  std::unique_ptr<engine::BlockArchive> archive;
  if (method.oracle && !key_positions.empty()) {
    auto prompt =
        engine::BuildTaskPrompt(tokenizer, model.file().tokenizer().chat_template, task, question);
    if (!prompt.ok()) return prompt.status();
    std::vector<int64_t> read_positions;
    for (int64_t p : key_positions) {
      read_positions.push_back(p + static_cast<int64_t>(prompt->before_document.size()));
    }
    archive = std::make_unique<OracleArchive>(c.n_layers, c.n_kv_heads, c.d_model / c.n_heads,
                                              std::move(read_positions));
  } else if (method.recall.blocks > 0) {
    archive = std::make_unique<engine::InMemoryBlockArchive>(c.n_layers, c.n_kv_heads,
                                                             c.d_model / c.n_heads);
  }
  if (archive != nullptr) {
    options.archive = archive.get();
    options.recall = method.recall;
  }
  double key_held_share = -1;
  engine::DocumentJobCallbacks callbacks;
  if (!key_positions.empty()) {
    callbacks.before_answer = [&](const engine::RecurrentRunner& runner) {
      // The CPU memory is inspected in place; a device memory is exported to the host once (its
      // slots' positions come with it), so the share is measured on every backend.
      const engine::SparseKMemory* memory = runner.document().host_memory();
      engine::MemorySnapshot exported;
      if (memory == nullptr && !runner.document().ExportTo(&exported).ok()) return;
      auto positions_of = [&](int32_t l, int32_t g) -> const std::vector<int64_t>& {
        return memory != nullptr ? memory->held(l, g).positions
                                 : exported.heads[l * exported.n_kv_heads + g].positions;
      };
      // Memory positions count from the start of the read: the prompt head comes first.
      const int64_t offset = runner.tokens_read() - static_cast<int64_t>(document.size());
      int64_t held = 0;
      for (int32_t l = 0; l < c.n_layers; ++l) {
        for (int32_t g = 0; g < c.n_kv_heads; ++g) {
          const std::vector<int64_t>& slots = positions_of(l, g);
          bool all = true;
          for (int64_t p : key_positions) {
            all = all && std::binary_search(slots.begin(), slots.end(), p + offset);
          }
          held += all;
        }
      }
      key_held_share = static_cast<double>(held) / static_cast<double>(c.n_layers * c.n_kv_heads);
    };
  }
  auto result = engine::RunTokenizedDocumentJob(backend, tokenizer, document, options,
                                                method.scorer, pool, callbacks);
  if (!result.ok()) return result.status();
  return Answer{std::move(*result), key_held_share};
}

// The corpus includes this repository's sources, which change between commits: the hash says
// whether two runs' trials with the same seed really read the same document.
uint64_t TokensHash(const std::vector<int32_t>& tokens) {
  uint64_t h = 14695981039346656037ull;
  for (int32_t t : tokens) {
    for (int i = 0; i < 4; ++i) {
      h = (h ^ ((static_cast<uint32_t>(t) >> (8 * i)) & 0xff)) * 1099511628211ull;
    }
  }
  return h;
}

bool DenseFits(const engine::LlamaModel& model, const Method& m, int64_t total_tokens) {
  return !m.runner.memory.is_dense() || total_tokens <= model.config().context_length;
}

class Bench {
 public:
  Bench(const Options& o, engine::ReadingBackend& backend, const engine::Tokenizer& tokenizer,
        const Corpus* corpus, std::vector<Method> methods, kernels::ThreadPool* pool,
        Report* report)
      : o_(o),
        backend_(backend),
        model_(backend.host_model()),
        tokenizer_(tokenizer),
        corpus_(corpus),
        methods_(std::move(methods)),
        pool_(pool),
        report_(report),
        start_(std::chrono::steady_clock::now()) {}

  // Trial-major order (every length and depth gets its t-th document before any gets its
  // (t+1)-th), so that a run stopped by --max-seconds is balanced across lengths and methods.
  absl::Status Passkey() {
    auto prompt = engine::BuildTaskPrompt(tokenizer_, model_.file().tokenizer().chat_template,
                                          engine::Task::kQuestion, kQuestion);
    if (!prompt.ok()) return prompt.status();
    const int64_t overhead =
        static_cast<int64_t>(prompt->before_document.size() + prompt->after_document.size()) +
        o_.answer_tokens;
    const size_t n_depths = o_.random_depth ? 1 : o_.depths.size();
    int64_t max_trials = 0;
    for (size_t li = 0; li < o_.lengths.size(); ++li) max_trials = std::max(max_trials, Trials(li));
    std::map<int64_t, double> seconds_per_document;  // by length, the latest measured
    for (int64_t t = o_.first_trial; t < max_trials; ++t) {
      for (size_t li = 0; li < o_.lengths.size(); ++li) {
        if (t >= Trials(li)) continue;
        const int64_t length = o_.lengths[li];
        const int64_t doc_tokens = length - overhead;
        if (doc_tokens < 64) {
          return absl::InvalidArgumentError(
              absl::StrCat("--lengths ", length, " leaves no room for a document"));
        }
        for (size_t di = 0; di < n_depths; ++di) {
          if (OutOfTime(seconds_per_document[length])) {
            report_->stopped_early = true;
            return absl::OkStatus();
          }
          // One seed per (length, depth, trial): runs with other lengths or counts reproduce it.
          std::mt19937_64 rng(o_.seed * 1000003 + static_cast<uint64_t>(length) * 7919 +
                              di * 104729 + static_cast<uint64_t>(t));
          const double depth = o_.random_depth
                                   ? std::uniform_real_distribution<double>(0.05, 0.95)(rng)
                                   : o_.depths[di];
          PasskeyDocument doc =
              MakePasskeyDocument(tokenizer_, o_.haystack, corpus_, rng, doc_tokens, depth);
          const std::vector<int64_t> key_positions =
              KeyPositions(tokenizer_, doc.tokens, doc.needle_at, doc.key);
          const auto doc_start = std::chrono::steady_clock::now();
          for (const Method& m : methods_) {
            PasskeyTrial trial;
            trial.method = m.name;
            trial.length = length;
            trial.depth = depth;
            trial.trial = static_cast<int>(t);
            trial.key = doc.key;
            trial.phrasing = doc.phrasing;
            trial.document_tokens = doc_tokens;
            trial.needle_at = doc.needle_at;
            trial.document_hash = TokensHash(doc.tokens);
            if (!DenseFits(model_, m, length)) {
              trial.possible = false;
              report_->passkey.push_back(trial);
              continue;
            }
            auto answer = ReadAndAnswer(backend_, tokenizer_, m, engine::Task::kQuestion, kQuestion,
                                        doc.tokens, o_.answer_tokens, pool_, key_positions);
            if (!answer.ok()) return answer.status();
            const engine::DocumentJobResult& job = answer->job;
            trial.answer = job.answer;
            trial.correct = job.answer.find(doc.key) != std::string::npos;
            if (m.compare_sampling.has_value()) {
              trial.compared = true;
              trial.compared_answer = job.answer_with_other_sampling;
              trial.compared_correct =
                  job.answer_with_other_sampling.find(doc.key) != std::string::npos;
            }
            trial.read_tokens = job.read_tokens;
            trial.recalled_slots = job.recalled_slots;
            trial.recall_error = job.recall_error;
            trial.key_held_share = answer->key_held_share;
            trial.read_seconds = job.read_seconds;
            trial.generate_seconds = job.generate_seconds;
            trial.generated_tokens = job.generated_tokens;
            std::fprintf(stderr,
                         "[%6.0fs] len %lld depth %.2f trial %lld %-18s key %s %s held %3.0f%% "
                         "%.0f tok/s%s\n",
                         SecondsSince(start_), static_cast<long long>(length), depth,
                         static_cast<long long>(t), m.name.c_str(), doc.key.c_str(),
                         trial.correct ? "OK  " : "MISS", 100 * trial.key_held_share,
                         static_cast<double>(trial.read_tokens) / trial.read_seconds,
                         !trial.compared                         ? ""
                         : trial.compared_answer == trial.answer ? " (compared: same answer)"
                         : trial.compared_correct                ? " (compared: other, OK)"
                                                                 : " (compared: other, MISS)");
            report_->passkey.push_back(trial);
          }
          seconds_per_document[length] = SecondsSince(doc_start);
        }
      }
    }
    return absl::OkStatus();
  }

  absl::Status Perplexity() {
    auto text = ReadTextSource(o_.perplexity);
    if (!text.ok()) return text.status();
    std::vector<int32_t> tokens = tokenizer_.Encode(*text, false);
    if (static_cast<int64_t>(tokens.size()) < o_.ppl_tokens) {
      std::fprintf(stderr, "perplexity: %s has only %zu tokens (asked %lld)\n",
                   o_.perplexity.c_str(), tokens.size(), static_cast<long long>(o_.ppl_tokens));
    } else {
      tokens.resize(static_cast<size_t>(o_.ppl_tokens));
    }
    const int64_t n = static_cast<int64_t>(tokens.size());
    const int64_t first = o_.segment_tokens;  // NLL counted for positions >= first
    if (n <= first) return absl::InvalidArgumentError("perplexity text shorter than one segment");
    const int32_t vocab = model_.config().vocab_size;
    for (const Method& m : methods_) {
      PerplexityResult r;
      r.method = m.name;
      r.source = o_.perplexity;
      r.tokens = n;
      r.first_counted = first;
      if (!DenseFits(model_, m, n)) {
        r.possible = false;
        report_->perplexity.push_back(r);
        continue;
      }
      if (OutOfTime(0)) {
        report_->stopped_early = true;
        return absl::OkStatus();
      }
      auto created = engine::RecurrentRunner::Create(&backend_, m.runner, m.scorer, pool_);
      if (!created.ok()) return created.status();
      engine::RecurrentRunner& runner = **created;
      std::vector<float> logits, last_row;
      double nll = 0;
      int64_t counted = 0;
      const auto start = std::chrono::steady_clock::now();
      // Segment by segment, so that logits stay one segment large at any length.
      for (int64_t at = 0; at < n; at += o_.segment_tokens) {
        const int64_t len = std::min(o_.segment_tokens, n - at);
        std::span<const int32_t> chunk(tokens.data() + at, static_cast<size_t>(len));
        if (auto s = runner.ReadWithLogits(chunk, &logits); !s.ok()) return s;
        auto add = [&](const float* row, int32_t target) {
          double max = row[0], sum = 0;
          for (int32_t v = 1; v < vocab; ++v) max = std::max<double>(max, row[v]);
          for (int32_t v = 0; v < vocab; ++v) sum += std::exp(row[v] - max);
          nll += max + std::log(sum) - row[target];
          ++counted;
        };
        if (!last_row.empty() && at >= first) add(last_row.data(), tokens[at]);
        for (int64_t i = 0; i + 1 < len; ++i) {
          if (at + i + 1 >= first) add(logits.data() + i * vocab, tokens[at + i + 1]);
        }
        last_row.assign(logits.end() - vocab, logits.end());
      }
      r.seconds = SecondsSince(start);
      r.counted_tokens = counted;
      r.mean_nll = nll / static_cast<double>(counted);
      r.perplexity = std::exp(r.mean_nll);
      std::fprintf(stderr, "perplexity %-8s %lld tokens: %.3f (%.0fs)\n", m.name.c_str(),
                   static_cast<long long>(n), r.perplexity, r.seconds);
      report_->perplexity.push_back(r);
    }
    return absl::OkStatus();
  }

  absl::Status Facts() {
    auto prompt = engine::BuildTaskPrompt(tokenizer_, model_.file().tokenizer().chat_template,
                                          engine::Task::kSummarize, "");
    if (!prompt.ok()) return prompt.status();
    const int64_t total = o_.facts_tokens;
    const int64_t doc_tokens =
        total -
        static_cast<int64_t>(prompt->before_document.size() + prompt->after_document.size()) -
        o_.summary_tokens;
    if (doc_tokens < 256) return absl::InvalidArgumentError("--facts-tokens too small");
    std::mt19937_64 rng(o_.seed * 31337 + 17);
    FactsResult base;
    base.facts = MakeFacts(rng, static_cast<int>(o_.facts));
    const std::vector<int32_t> doc =
        MakeFactsDocument(tokenizer_, *corpus_, rng, doc_tokens, base.facts);
    for (const Method& m : methods_) {
      FactsResult r = base;
      r.method = m.name;
      r.total_tokens = total;
      if (!DenseFits(model_, m, total)) {
        r.possible = false;
        report_->facts.push_back(r);
        continue;
      }
      if (OutOfTime(0)) {
        report_->stopped_early = true;
        return absl::OkStatus();
      }
      auto answer = ReadAndAnswer(backend_, tokenizer_, m, engine::Task::kSummarize, "", doc,
                                  o_.summary_tokens, pool_);
      if (!answer.ok()) return answer.status();
      r.summary = answer->job.answer;
      r.mentioned_count = CountMentionedFacts(answer->job.answer, r.facts, &r.mentioned);
      std::fprintf(stderr, "facts %-8s %d/%zu mentioned\n", m.name.c_str(), r.mentioned_count,
                   r.facts.size());
      report_->facts.push_back(r);
    }
    return absl::OkStatus();
  }

 private:
  int64_t Trials(size_t length_index) const {
    return o_.trials.size() == 1 ? o_.trials[0] : o_.trials[length_index];
  }

  // True when the next piece of work, expected to take `next_seconds`, would pass the limit.
  bool OutOfTime(double next_seconds) const {
    return o_.max_seconds > 0 && SecondsSince(start_) + next_seconds > o_.max_seconds;
  }

  static absl::StatusOr<std::string> ReadTextSource(const std::string& path) {
    namespace fs = std::filesystem;
    std::vector<std::string> files;
    std::error_code ec;
    if (fs::is_directory(path, ec)) {
      for (auto it = fs::recursive_directory_iterator(path, ec);
           !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
        if (it->is_regular_file(ec)) files.push_back(it->path().string());
      }
      std::sort(files.begin(), files.end());
    } else {
      files.push_back(path);
    }
    std::string text;
    for (const std::string& f : files) {
      std::ifstream in(f, std::ios::binary);
      if (!in) return absl::NotFoundError(absl::StrCat("--perplexity: cannot read ", f));
      std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      if (content.find('\0') != std::string::npos) continue;  // binary (e.g. scorer weights)
      text += content;
      text += "\n\n";
    }
    return text;
  }

  const Options& o_;
  engine::ReadingBackend& backend_;
  const engine::LlamaModel& model_;
  const engine::Tokenizer& tokenizer_;
  const Corpus* corpus_;
  std::vector<Method> methods_;
  kernels::ThreadPool* pool_;
  Report* report_;
  std::chrono::steady_clock::time_point start_;
};

std::vector<std::pair<std::string, std::string>> ConfigJson(const Options& o,
                                                            const std::string& scorer) {
  auto list = [](const auto& v) { return absl::StrCat("[", absl::StrJoin(v, ","), "]"); };
  std::vector<std::string> dirs;
  for (const auto& d : o.haystack_dirs) dirs.push_back(JsonString(d));
  std::vector<std::string> methods;
  for (const auto& m : o.methods) methods.push_back(JsonString(m));
  const std::string sparsek =
      absl::StrCat("sinks ", o.sinks, " + top_k ", o.budget - o.sparsek_window, " + window ",
                   o.sparsek_window, ", scorer ", scorer);
  return {{"methods", list(methods)},
          {"no_repeat_ngram", absl::StrCat(o.sampling.no_repeat_ngram)},
          {"repeat_penalty", absl::StrCat(o.sampling.repeat_penalty)},
          {"repeat_last_n", absl::StrCat(o.sampling.repeat_last_n)},
          {"budget", absl::StrCat(o.budget)},
          {"window_method", JsonString(absl::StrCat("sinks ", o.sinks, " + window ", o.budget))},
          {"sparsek_method", JsonString(sparsek)},
          {"blocks_method",
           JsonString(absl::StrCat("as sparsek, whole blocks of ", o.block_tokens,
                                   " tokens (block score = ",
                                   o.block_score == engine::BlockScore::kMean ? "mean" : "max",
                                   " of its tokens' scores)"))},
          {"task_method",
           JsonString(absl::StrCat(
               "+task: score += ", o.task_weight, " x ",
               o.task_score == engine::TaskScore::kMaxDot
                   ? "max over the question's query vectors of q.k/sqrt(d)"
                   : "log of the question's attention mass on the key within its segment, "
                     "relative to uniform (engine::TaskScore::kSegmentMass)"))},
          {"first_method", JsonString("+first: the question is also placed before the document "
                                      "(DocumentJobOptions::instruction_first)")},
          {"recall_method",
           JsonString(absl::StrCat(
               "+recall: evicted blocks to an in-RAM archive; the question read in context "
               "ranks them by key bounds, the best ",
               o.recall_candidates, " per (layer, KV head) by exact attention mass, and the best ",
               o.recall_blocks, " blocks (", o.recall_shared ? "shared by all heads" : "per head",
               ") are recalled before the answer; top_k = ", o.budget - o.sparsek_window, " - ",
               o.recall_blocks * o.block_tokens, " (window+recall: window = ", o.budget, " - ",
               o.recall_blocks * o.block_tokens,
               ") so that the memory after recall holds the same budget"))},
          {"block_tokens", absl::StrCat(o.block_tokens)},
          {"block_score", JsonString(o.block_score == engine::BlockScore::kMean ? "mean" : "max")},
          {"task_weight", absl::StrCat(o.task_weight)},
          {"task_score",
           o.task_score == engine::TaskScore::kMaxDot ? "\"max-dot\"" : "\"segment-mass\""},
          {"recall_blocks", absl::StrCat(o.recall_blocks)},
          {"dense_method", JsonString("every key (only where the whole input fits the context)")},
          {"segment_tokens", absl::StrCat(o.segment_tokens)},
          {"lengths", list(o.lengths)},
          {"depths", o.random_depth ? "\"random\"" : list(o.depths)},
          {"trials_requested", list(o.trials)},
          {"first_trial", absl::StrCat(o.first_trial)},
          {"haystack", o.haystack == HaystackKind::kReal ? "\"real\"" : "\"filler\""},
          {"haystack_dirs", list(dirs)},
          {"question", "\"What is the pass key?\""},
          {"answer_tokens", absl::StrCat(o.answer_tokens)},
          {"perplexity_source", JsonString(o.perplexity)},
          {"ppl_tokens", absl::StrCat(o.ppl_tokens)},
          {"facts", absl::StrCat(o.facts)},
          {"facts_tokens", absl::StrCat(o.facts_tokens)},
          {"summary_tokens", absl::StrCat(o.summary_tokens)},
          {"seed", absl::StrCat(o.seed)},
          {"positions",
           JsonString(o.positions == engine::PositionMode::kOriginal ? "original" : "slot")},
          {"max_seconds", absl::StrCat(o.max_seconds)}};
}

int Main(int argc, char** argv) {
  Options o;
  std::string error;
  if (!ParseOptions(argc, argv, &o, &error)) {
    std::fprintf(stderr, "longread_quality_bench: %s\n%s", error.c_str(), kHelp);
    return 2;
  }
  Report report;
  report.command = absl::StrJoin(argv, argv + argc, " ");

  auto file = engine::ModelFile::Open(o.model);
  if (!file.ok()) {
    std::fprintf(stderr, "model %s: %s\n", o.model.c_str(), file.status().ToString().c_str());
    return 4;
  }
  auto tokenizer = engine::Tokenizer::Create((*file)->tokenizer());
  if (!tokenizer.ok()) {
    std::fprintf(stderr, "tokenizer: %s\n", tokenizer.status().ToString().c_str());
    return 4;
  }
  auto model = engine::LlamaModel::Load(std::move(*file));
  if (!model.ok()) {
    std::fprintf(stderr, "model: %s\n", model.status().ToString().c_str());
    return 4;
  }
  const auto& c = (*model)->config();

  // The scorer: explicit path, "none", or "auto" = the calibrated weights for this model. Without
  // one SparseK keeps the oldest keys (all scores tie at 0): a run must never measure that while
  // its command says "auto", so an auto that finds no file is refused.
  std::shared_ptr<const engine::ScorerWeights> scorer;
  std::string scorer_path = o.scorer;
  if (o.compare_sampling.has_value()) {
    report.config_notes.push_back(
        absl::StrCat("compared generation: no_repeat_ngram ", o.compare_sampling->no_repeat_ngram,
                     ", repeat_penalty ", o.compare_sampling->repeat_penalty, ", repeat_last_n ",
                     o.compare_sampling->repeat_last_n));
  }
  if (o.scorer == "auto") {
    const char* src = std::getenv("LONGREAD_SOURCE_DIR");
    scorer_path = absl::StrCat(src != nullptr ? src : ".", "/engine/scorer/weights/",
                               std::filesystem::path(o.model).stem().string(), ".lrscorer");
    if (!std::filesystem::exists(scorer_path)) {
      std::fprintf(stderr,
                   "--scorer auto: no scorer file for this model (looked for %s); name one with "
                   "--scorer PATH, or measure without one with --scorer none\n",
                   scorer_path.c_str());
      return 2;
    }
  }
  if (scorer_path != "none") {
    auto weights = engine::LoadScorerWeights(scorer_path, (*model)->fingerprint(), c.n_layers,
                                             c.n_kv_heads, c.d_model);
    if (!weights.ok()) {
      std::fprintf(stderr, "scorer %s: %s\n", scorer_path.c_str(),
                   weights.status().ToString().c_str());
      return 4;
    }
    report.scorer_provenance = weights->provenance;
    scorer = std::make_shared<const engine::ScorerWeights>(std::move(*weights));
  }
  report.scorer = scorer_path;

  std::unique_ptr<Corpus> corpus;
  std::vector<CorpusSource> sources;
  for (const std::string& spec : o.haystack_dirs) {
    auto source = ParseCorpusSource(spec);
    if (!source.ok()) {
      std::fprintf(stderr, "%s\n", std::string(source.status().message()).c_str());
      return 2;
    }
    sources.push_back(*source);
  }
  if (o.haystack == HaystackKind::kReal || o.facts > 0) {
    auto built = Corpus::Build(sources);
    if (!built.ok()) {
      std::fprintf(stderr, "%s\n", std::string(built.status().message()).c_str());
      return 3;
    }
    corpus = std::make_unique<Corpus>(std::move(*built));
    report.corpus = corpus->Summary();
    report.corpus_skipped = corpus->skipped();
  }

  const int threads = o.threads > 0 ? static_cast<int>(o.threads) : kernels::DefaultThreadCount();
  kernels::ThreadPool pool(threads);
  report.config = ConfigJson(o, scorer_path);
  report.threads = threads;
  report.model = o.model;
  report.model_fingerprint = (*model)->fingerprint();
  report.context_length = c.context_length;
  report.FillEnvironment();
  auto backend = engine::OpenReadingBackend(o.device, model->get());
  if (!backend.ok()) {
    std::fprintf(stderr, "%s\n", std::string(backend.status().message()).c_str());
    return 2;
  }
  report.device =
      absl::StrCat("reading on ", std::string((*backend)->device()), "; ", report.device);

  std::vector<Method> methods = MakeMethods(o, scorer, scorer_path);
  for (const Method& m : methods) report.method_scorers.emplace_back(m.name, m.scorer_path);
  Bench bench(o, **backend, **tokenizer, corpus.get(), std::move(methods), &pool, &report);
  const auto start = std::chrono::steady_clock::now();
  absl::Status status = absl::OkStatus();
  if (o.trials[0] > 0 && !o.lengths.empty()) status = bench.Passkey();
  if (status.ok() && !o.perplexity.empty()) status = bench.Perplexity();
  if (status.ok() && o.facts > 0) status = bench.Facts();
  report.elapsed_seconds = SecondsSince(start);
  if (!status.ok()) {
    std::fprintf(stderr, "longread_quality_bench: %s\n", status.ToString().c_str());
    report.error = status.ToString();
  }
  report.PrintTables();
  const std::string out = report.WriteJson(o.json);
  std::fprintf(stderr, "wrote %s\n", out.c_str());
  return status.ok() ? 0 : 1;
}

}  // namespace
}  // namespace longread::bench

int main(int argc, char** argv) { return longread::bench::Main(argc, argv); }
