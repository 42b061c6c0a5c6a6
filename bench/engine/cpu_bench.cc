// CPU speed of the engine on real text: dense prefill and decode tokens/s (the numbers llama.cpp
// reports, for bench/cpu_vs_llamacpp), SparseK reading tokens/s with resident memory at 8K–1M
// tokens, and optionally the time share of each op of the forward pass. Prints a table and
// writes JSON (device, UTC date, command line, git commit, every repetition and the median).
//
//   longread_cpu_bench [--model GGUF] [--threads N] [--text FILE | --tokens FILE]
//       [--prefill 512,2048,8000] [--decode-after 512,8000] [--decode-tokens 64]
//       [--sparsek 8000,32000,128000,1000000] [--skip-time SIZES --skip-reason TEXT]
//       [--reps 3] [--sparsek-reps N] [--profile | --profile-dense-only] [--profile-json OUT]
//       [--json OUT]
//       [--notes TEXT]
//
// A prefill of N tokens and a decode after N tokens share one run: the prompt is read as one
// dense segment with last-token logits (as llama.cpp's prompt eval), then decode_tokens tokens
// are generated greedily one at a time. Text shorter than a size is repeated.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "bench/engine/system_info.h"
#include "engine/memory/runner.h"
#include "engine/model/llama_model.h"
#include "engine/model_files/model_file.h"
#include "engine/scorer/scorer.h"
#include "engine/tokenizer/tokenizer.h"
#include "kernels/thread_pool.h"

namespace longread::bench {
namespace {

using Clock = std::chrono::steady_clock;
using engine::ForwardProfile;
using engine::LlamaModel;
using engine::RecurrentRunner;
using engine::RunnerConfig;

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// CPU seconds of every thread of the process. On a loaded machine wall time measures the load
// too; CPU time / threads bounds the time on an idle one (from below, but spinning counts).
double ProcessCpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

struct Options {
  std::string model, text_file, tokens_file, json_out, profile_json_out, notes, skip_reason;
  int threads = 0;
  std::vector<int64_t> prefill = {512, 2048, 8000};
  std::vector<int64_t> decode_after = {512, 8000};
  int64_t decode_tokens = 64;
  std::vector<int64_t> sparsek = {8000, 32000, 128000, 1000000};
  std::set<int64_t> skip_time;
  int reps = 3;
  int sparsek_reps = 0;  // 0: same as reps
  bool profile = false;
  bool profile_sparse = true;  // --profile-dense-only: no separate 32K SparseK profile run
  std::string command;
};

std::vector<int64_t> ParseSizes(const std::string& list) {
  std::vector<int64_t> out;
  for (absl::string_view part : absl::StrSplit(list, ',', absl::SkipEmpty())) {
    int64_t v;
    if (!absl::SimpleAtoi(part, &v) || v <= 0) {
      std::fprintf(stderr, "bad size '%s' in '%s'\n", std::string(part).c_str(), list.c_str());
      std::exit(2);
    }
    out.push_back(v);
  }
  return out;
}

Options ParseOptions(int argc, char** argv) {
  Options o;
  const char* src = std::getenv("LONGREAD_SOURCE_DIR");
  const std::string root = src ? src : ".";
  o.model = root + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  for (int i = 0; i < argc; ++i) {
    if (i > 0) o.command += ' ';
    o.command += argv[i];
  }
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--profile-dense-only") {
      o.profile = true;
      o.profile_sparse = false;
      continue;
    }
    if (flag == "--profile") {
      o.profile = true;
      continue;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "%s needs a value\n", flag.c_str());
      std::exit(2);
    }
    const std::string v = argv[++i];
    if (flag == "--model")
      o.model = v;
    else if (flag == "--threads")
      o.threads = std::atoi(v.c_str());
    else if (flag == "--text")
      o.text_file = v;
    else if (flag == "--tokens")
      o.tokens_file = v;
    else if (flag == "--prefill")
      o.prefill = ParseSizes(v);
    else if (flag == "--decode-after")
      o.decode_after = ParseSizes(v);
    else if (flag == "--decode-tokens")
      o.decode_tokens = std::atoll(v.c_str());
    else if (flag == "--sparsek")
      o.sparsek = ParseSizes(v);
    else if (flag == "--skip-time")
      for (int64_t s : ParseSizes(v)) o.skip_time.insert(s);
    else if (flag == "--skip-reason")
      o.skip_reason = v;
    else if (flag == "--reps")
      o.reps = std::max(1, std::atoi(v.c_str()));
    else if (flag == "--sparsek-reps")
      o.sparsek_reps = std::max(1, std::atoi(v.c_str()));
    else if (flag == "--json")
      o.json_out = v;
    else if (flag == "--profile-json")
      o.profile_json_out = v;
    else if (flag == "--notes")
      o.notes = v;
    else {
      std::fprintf(stderr, "unknown flag %s (see the header of bench/engine/cpu_bench.cc)\n",
                   flag.c_str());
      std::exit(2);
    }
  }
  if (o.threads <= 0) o.threads = kernels::DefaultThreadCount();
  if (o.sparsek_reps == 0) o.sparsek_reps = o.reps;
  return o;
}

// Document tokens: ids from --tokens (whitespace-separated, as the llama.cpp side wrote them),
// else the text of --text, else every regular file of the Debian license directory.
struct Corpus {
  std::vector<int32_t> ids;
  std::string source;
};

Corpus LoadCorpus(const Options& o, const LlamaModel& model) {
  Corpus c;
  if (!o.tokens_file.empty()) {
    std::ifstream in(o.tokens_file);
    int32_t id;
    while (in >> id) c.ids.push_back(id);
    c.source = "token ids from " + o.tokens_file;
    return c;
  }
  std::string text;
  std::vector<std::string> files;
  if (!o.text_file.empty()) {
    files.push_back(o.text_file);
  } else {
    for (const auto& e : std::filesystem::directory_iterator("/usr/share/common-licenses")) {
      if (e.is_regular_file() && !e.is_symlink()) files.push_back(e.path().string());
    }
    std::sort(files.begin(), files.end());
  }
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    text += std::string(std::istreambuf_iterator<char>(in), {});
    c.source += (c.source.empty() ? "text of " : ", ") + f;
  }
  auto tokenizer = engine::Tokenizer::Create(model.file().tokenizer());
  if (!tokenizer.ok()) {
    std::fprintf(stderr, "tokenizer: %s\n", std::string(tokenizer.status().message()).c_str());
    std::exit(1);
  }
  c.ids = (*tokenizer)->Encode(text, /*parse_special=*/false);
  return c;
}

// The first n tokens of the corpus repeated as often as needed.
std::vector<int32_t> Prefix(const Corpus& c, int64_t n) {
  std::vector<int32_t> out(n);
  for (int64_t i = 0; i < n; ++i) out[i] = c.ids[i % c.ids.size()];
  return out;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

struct Series {
  std::vector<double> tok_s, seconds, cpu_seconds;
  double median() const { return Median(tok_s); }
};

struct DenseResult {
  int64_t tokens = 0;
  Series prefill, decode;  // decode empty unless a decode was asked after this size
};

struct SparseResult {
  int64_t tokens = 0;
  std::string status = "measured";  // or "skipped (time)", "failed"
  std::string reason;
  Series read;
  int64_t rss_start_kb = 0, rss_end_kb = 0, rss_peak_kb = 0, memory_bytes = 0;
  std::vector<std::pair<int64_t, int64_t>> rss_trace;  // (tokens read, VmRSS kB), first rep
};

RunnerConfig DenseConfig(int64_t segment) {
  RunnerConfig rc;
  rc.memory = engine::MemoryConfig::Dense();
  rc.segment_tokens = segment;
  return rc;
}

// Prompt as one dense segment with last-token logits, then greedy decode of `decode_tokens`.
// Returns false and prints the error if the runner failed.
bool DenseRun(LlamaModel& model, kernels::ThreadPool& pool, const std::vector<int32_t>& prompt,
              int64_t decode_tokens, double* prefill_s, double* decode_s,
              ForwardProfile* decode_profile = nullptr, double* prefill_cpu_s = nullptr,
              double* decode_cpu_s = nullptr) {
  RecurrentRunner runner(&model, DenseConfig(static_cast<int64_t>(prompt.size())), nullptr, &pool);
  engine::GenerateOptions g;
  g.max_new_tokens = decode_tokens + 1;
  Clock::time_point first_token;
  double first_token_cpu = 0;
  int64_t seen = 0;
  const double cpu0 = ProcessCpuSeconds();
  const auto t0 = Clock::now();
  auto out = runner.Generate(prompt, g, [&](int32_t) {
    if (seen++ == 0) {
      first_token = Clock::now();
      first_token_cpu = ProcessCpuSeconds();
      if (decode_profile != nullptr) model.set_profile(decode_profile);
    }
    return true;
  });
  const auto t1 = Clock::now();
  const double cpu1 = ProcessCpuSeconds();
  model.set_profile(nullptr);
  if (!out.ok()) {
    std::fprintf(stderr, "dense run of %zu tokens: %s\n", prompt.size(),
                 std::string(out.status().message()).c_str());
    return false;
  }
  *prefill_s = std::chrono::duration<double>(first_token - t0).count();
  *decode_s = std::chrono::duration<double>(t1 - first_token).count();
  if (prefill_cpu_s != nullptr) *prefill_cpu_s = first_token_cpu - cpu0;
  if (decode_cpu_s != nullptr) *decode_cpu_s = cpu1 - first_token_cpu;
  return true;
}

std::shared_ptr<const engine::ScorerWeights> ZeroScorer(const LlamaModel& model) {
  const auto& c = model.config();
  return std::make_shared<const engine::ScorerWeights>(
      engine::ZeroScorerWeights(model.fingerprint(), c.n_layers, c.n_kv_heads, c.d_model));
}

// Reads n tokens through the SparseK memory with the default RunnerConfig, in chunks, so that
// the bench itself holds no n-sized buffer. Returns seconds or a negative value on failure.
double SparseRun(LlamaModel& model, kernels::ThreadPool& pool, const Corpus& corpus, int64_t n,
                 SparseResult* r, bool trace, double* cpu_s = nullptr) {
  RecurrentRunner runner(&model, RunnerConfig{}, ZeroScorer(model), &pool);
  constexpr int64_t kChunk = 8192;
  std::vector<int32_t> chunk;
  ResetPeakResident();
  r->rss_start_kb = ResidentKb();
  if (trace) r->rss_trace.push_back({0, r->rss_start_kb});
  const double cpu0 = ProcessCpuSeconds();
  const auto t0 = Clock::now();
  for (int64_t at = 0; at < n; at += kChunk) {
    const int64_t len = std::min(kChunk, n - at);
    chunk.resize(len);
    for (int64_t i = 0; i < len; ++i) chunk[i] = corpus.ids[(at + i) % corpus.ids.size()];
    if (auto s = runner.Feed(chunk); !s.ok()) {
      r->reason = std::string(s.message());
      return -1;
    }
    if (trace) r->rss_trace.push_back({at + len, ResidentKb()});
  }
  if (auto s = runner.Flush(); !s.ok()) {
    r->reason = std::string(s.message());
    return -1;
  }
  const double seconds = Since(t0);
  if (cpu_s != nullptr) *cpu_s = ProcessCpuSeconds() - cpu0;
  r->rss_end_kb = ResidentKb();
  r->rss_peak_kb = PeakResidentKb();
  r->memory_bytes = runner.memory().resident_bytes();
  return seconds;
}

std::string SeriesJson(const Series& s) {
  std::ostringstream o;
  o << "{\"reps_tok_s\":[";
  for (size_t i = 0; i < s.tok_s.size(); ++i) o << (i ? "," : "") << s.tok_s[i];
  o << "],\"reps_seconds\":[";
  for (size_t i = 0; i < s.seconds.size(); ++i) o << (i ? "," : "") << s.seconds[i];
  o << "],\"reps_cpu_seconds\":[";
  for (size_t i = 0; i < s.cpu_seconds.size(); ++i) o << (i ? "," : "") << s.cpu_seconds[i];
  o << "],\"median_tok_s\":" << (s.tok_s.empty() ? 0.0 : s.median()) << "}";
  return o.str();
}

std::string ProfileJson(const ForwardProfile& p, double wall_s) {
  double forward = 0;
  for (double s : p.seconds) forward += s;
  std::ostringstream o;
  o << "{\"wall_seconds\":" << wall_s << ",\"forward_seconds\":" << forward
    << ",\"forwards\":" << p.forwards << ",\"tokens\":" << p.tokens << ",\"ops\":[";
  for (int op = 0; op < ForwardProfile::kOpCount; ++op) {
    o << (op ? "," : "") << "{\"op\":\"" << ForwardProfile::Name(op)
      << "\",\"seconds\":" << p.seconds[op] << ",\"share\":" << p.seconds[op] / wall_s << "}";
  }
  o << ",{\"op\":\"outside_forward\",\"seconds\":" << wall_s - forward
    << ",\"share\":" << (wall_s - forward) / wall_s << "}]}";
  return o.str();
}

void PrintProfile(const char* title, const ForwardProfile& p, double wall_s) {
  std::printf("\nprofile: %s (%.2f s wall, %ld forward passes, %ld tokens)\n", title, wall_s,
              static_cast<long>(p.forwards), static_cast<long>(p.tokens));
  double forward = 0;
  for (int op = 0; op < ForwardProfile::kOpCount; ++op) {
    forward += p.seconds[op];
    std::printf("  %-16s %9.3f s %6.1f%%\n", ForwardProfile::Name(op), p.seconds[op],
                100 * p.seconds[op] / wall_s);
  }
  std::printf("  %-16s %9.3f s %6.1f%%\n", "outside_forward", wall_s - forward,
              100 * (wall_s - forward) / wall_s);
}

std::string Header(const Options& o, const Corpus& corpus, const LlamaModel& model,
                   const std::string& source_dir, const std::string& load_start) {
  std::ostringstream j;
  j << "  \"device\": {\"cpu\": " << JsonString(CpuModel()) << ", \"cores\": " << OnlineCores()
    << ", \"threads\": " << o.threads << "},\n"
    << "  \"date\": \"" << UtcTimestamp() << "\",\n"
    << "  \"command\": " << JsonString(o.command) << ",\n"
    << "  \"git_commit\": \"" << GitCommit(source_dir) << "\",\n"
    << "  \"engine\": \"longread (this repository)\",\n"
    << "  \"model\": " << JsonString(std::filesystem::path(o.model).filename().string())
    << ", \"model_fingerprint\": \"" << model.fingerprint() << "\",\n"
    << "  \"tokens_source\": " << JsonString(corpus.source)
    << ", \"corpus_tokens\": " << corpus.ids.size() << ",\n"
    << "  \"load_average_at_start\": \"" << load_start << "\",\n"
    << "  \"load_average_at_end\": \"" << LoadAverage() << "\",\n"
    << "  \"notes\": " << JsonString(o.notes) << ",\n";
  return j.str();
}

int Main(int argc, char** argv) {
  const Options o = ParseOptions(argc, argv);
  const char* src = std::getenv("LONGREAD_SOURCE_DIR");
  const std::string source_dir = src ? src : ".";
  const std::string load_start = LoadAverage();
  auto file = engine::ModelFile::Open(o.model);
  if (!file.ok()) {
    std::fprintf(stderr, "model: %s\n", std::string(file.status().message()).c_str());
    return 1;
  }
  auto loaded = LlamaModel::Load(std::move(*file));
  if (!loaded.ok()) {
    std::fprintf(stderr, "model: %s\n", std::string(loaded.status().message()).c_str());
    return 1;
  }
  LlamaModel& model = **loaded;
  const Corpus corpus = LoadCorpus(o, model);
  if (corpus.ids.empty()) {
    std::fprintf(stderr, "no tokens in %s\n", corpus.source.c_str());
    return 1;
  }
  kernels::ThreadPool pool(o.threads);
  std::printf("cpu: %s | cores %d | threads %d | load %s\ntokens: %zu from %s\n",
              CpuModel().c_str(), OnlineCores(), o.threads, load_start.c_str(), corpus.ids.size(),
              corpus.source.c_str());
  double warm_p, warm_d;  // touches the mmapped weights and sizes the pool's workspaces
  DenseRun(model, pool, Prefix(corpus, 64), 2, &warm_p, &warm_d);

  // Dense: one run per size serves both the prefill and, when asked, the decode after it.
  std::set<int64_t> dense_sizes(o.prefill.begin(), o.prefill.end());
  dense_sizes.insert(o.decode_after.begin(), o.decode_after.end());
  const std::set<int64_t> decode_set(o.decode_after.begin(), o.decode_after.end());
  std::vector<DenseResult> dense;
  std::vector<std::string> impossible;
  for (int64_t n : dense_sizes) {
    const bool decode = decode_set.count(n) > 0;
    if (n + (decode ? o.decode_tokens : 0) > model.config().context_length) {
      impossible.push_back(std::to_string(n));
      continue;
    }
    DenseResult r;
    r.tokens = n;
    const auto prompt = Prefix(corpus, n);
    for (int rep = 0; rep < o.reps; ++rep) {
      double p, d, pc, dc;
      if (!DenseRun(model, pool, prompt, decode ? o.decode_tokens : 0, &p, &d, nullptr, &pc, &dc)) {
        return 1;
      }
      r.prefill.seconds.push_back(p);
      r.prefill.cpu_seconds.push_back(pc);
      r.prefill.tok_s.push_back(n / p);
      if (decode) {
        r.decode.seconds.push_back(d);
        r.decode.cpu_seconds.push_back(dc);
        r.decode.tok_s.push_back(o.decode_tokens / d);
      }
      std::printf(
          "  dense %6ld: prefill %8.1f tok/s%s\n", static_cast<long>(n), n / p,
          decode ? (", decode " + std::to_string(o.decode_tokens / d) + " tok/s").c_str() : "");
      std::fflush(stdout);
    }
    dense.push_back(r);
  }

  // The SparseK profile rides on the first timed repetition at kProfileSparseTokens when that
  // size is measured: the profiler reads the clock ~20 times per layer per 2,048-token segment,
  // far below the run-to-run noise, and a second 32K read would double the slowest part.
  constexpr int64_t kProfileSparseTokens = 32000;
  ForwardProfile sparse_profile;
  double sparse_profile_wall = -1;
  std::vector<SparseResult> sparse;
  for (int64_t n : o.sparsek) {
    SparseResult r;
    r.tokens = n;
    if (o.skip_time.count(n)) {
      r.status = "skipped (time)";
      r.reason = o.skip_reason.empty() ? "skipped with --skip-time" : o.skip_reason;
      sparse.push_back(r);
      continue;
    }
    for (int rep = 0; rep < o.sparsek_reps; ++rep) {
      double cpu_s = 0;
      const bool profiled = o.profile && n == kProfileSparseTokens && rep == 0;
      if (profiled) model.set_profile(&sparse_profile);
      const double s = SparseRun(model, pool, corpus, n, &r, rep == 0, &cpu_s);
      model.set_profile(nullptr);
      if (profiled) sparse_profile_wall = s;
      if (s < 0) {
        r.status = "failed";
        break;
      }
      r.read.seconds.push_back(s);
      r.read.cpu_seconds.push_back(cpu_s);
      r.read.tok_s.push_back(n / s);
      std::printf("  sparsek %8ld: %8.1f tok/s, VmRSS %ld -> %ld kB, peak %ld kB\n",
                  static_cast<long>(n), n / s, static_cast<long>(r.rss_start_kb),
                  static_cast<long>(r.rss_end_kb), static_cast<long>(r.rss_peak_kb));
      std::fflush(stdout);
    }
    sparse.push_back(r);
  }

  std::printf("\n%-34s %12s %6s\n",
              ("measurement (threads " + std::to_string(o.threads) + ")").c_str(), "median tok/s",
              "reps");
  for (const auto& r : dense) {
    std::printf("%-34s %12.1f %6zu\n", ("dense prefill " + std::to_string(r.tokens)).c_str(),
                r.prefill.median(), r.prefill.tok_s.size());
    if (!r.decode.tok_s.empty()) {
      std::printf(
          "%-34s %12.2f %6zu\n",
          ("dense decode " + std::to_string(o.decode_tokens) + " after " + std::to_string(r.tokens))
              .c_str(),
          r.decode.median(), r.decode.tok_s.size());
    }
  }
  for (const auto& n : impossible) {
    std::printf("%-34s %12s\n", ("dense " + n).c_str(), "not possible (context)");
  }
  for (const auto& r : sparse) {
    if (r.status == "measured") {
      std::printf("%-34s %12.1f %6zu   VmRSS %ld -> %ld kB, peak %ld kB\n",
                  ("sparsek read " + std::to_string(r.tokens)).c_str(), r.read.median(),
                  r.read.tok_s.size(), static_cast<long>(r.rss_start_kb),
                  static_cast<long>(r.rss_end_kb), static_cast<long>(r.rss_peak_kb));
    } else {
      std::printf("%-34s %12s   %s\n", ("sparsek read " + std::to_string(r.tokens)).c_str(),
                  r.status.c_str(), r.reason.c_str());
    }
  }

  if (!o.json_out.empty()) {
    std::ofstream j(o.json_out);
    j << "{\n  \"bench\": \"cpu-engine\",\n" << Header(o, corpus, model, source_dir, load_start);
    j << "  \"method\": "
      << JsonString(
             "dense prefill: the prompt as one segment (MemoryConfig::Dense, segment = prompt), "
             "last-token logits included, timed to the first sampled token; decode: greedy, "
             "tokens/s over the next decode_tokens single-token forward passes; sparsek: "
             "RecurrentRunner with the default RunnerConfig (sinks 4, top_k 2048, window 1024, "
             "segment 2048) and zero scorer weights, Feed + Flush of N tokens; text shorter than "
             "N is repeated; median of reps; reps_cpu_seconds = process CPU time of all threads "
             "(a load-independent view on a shared machine; spinning workers count)")
      << ",\n  \"decode_tokens\": " << o.decode_tokens << ",\n  \"dense\": [";
    for (size_t i = 0; i < dense.size(); ++i) {
      j << (i ? "," : "") << "\n    {\"tokens\": " << dense[i].tokens
        << ", \"prefill\": " << SeriesJson(dense[i].prefill);
      if (!dense[i].decode.tok_s.empty()) j << ", \"decode\": " << SeriesJson(dense[i].decode);
      j << "}";
    }
    j << "\n  ],\n  \"dense_not_possible\": [";
    for (size_t i = 0; i < impossible.size(); ++i) j << (i ? "," : "") << impossible[i];
    j << "],\n  \"sparsek\": [";
    for (size_t i = 0; i < sparse.size(); ++i) {
      const SparseResult& r = sparse[i];
      j << (i ? "," : "") << "\n    {\"tokens\": " << r.tokens << ", \"status\": \"" << r.status
        << "\", \"reason\": " << JsonString(r.reason);
      if (r.status == "measured") {
        j << ", \"read\": " << SeriesJson(r.read) << ", \"rss_start_kb\": " << r.rss_start_kb
          << ", \"rss_end_kb\": " << r.rss_end_kb << ", \"rss_peak_kb\": " << r.rss_peak_kb
          << ", \"memory_resident_bytes\": " << r.memory_bytes << ", \"rss_trace_kb\": [";
        for (size_t k = 0; k < r.rss_trace.size(); ++k) {
          j << (k ? "," : "") << "[" << r.rss_trace[k].first << "," << r.rss_trace[k].second << "]";
        }
        j << "]";
      }
      j << "}";
    }
    j << "\n  ]\n}\n";
    std::printf("wrote %s\n", o.json_out.c_str());
  }

  if (o.profile) {
    // Dense profiles come from separate runs: the timed dense runs above stay unprofiled.
    ForwardProfile prefill_2k, decode_512;
    model.set_profile(&prefill_2k);
    double p, d;
    auto t0 = Clock::now();
    if (!DenseRun(model, pool, Prefix(corpus, 2048), 0, &p, &d)) return 1;
    const double prefill_wall = Since(t0);
    model.set_profile(nullptr);
    if (!DenseRun(model, pool, Prefix(corpus, 512), o.decode_tokens, &p, &d, &decode_512)) {
      return 1;
    }
    const double decode_wall = d;
    const bool sparse_separate = sparse_profile_wall < 0;
    if (sparse_separate && o.profile_sparse) {
      model.set_profile(&sparse_profile);
      SparseResult ignored;
      sparse_profile_wall = SparseRun(model, pool, corpus, kProfileSparseTokens, &ignored, false);
      model.set_profile(nullptr);
      if (sparse_profile_wall < 0) return 1;
    }
    const ForwardProfile& sparse_32k = sparse_profile;
    const double sparse_wall = sparse_profile_wall;
    PrintProfile("dense prefill 2048", prefill_2k, prefill_wall);
    PrintProfile("dense decode 64 after 512", decode_512, decode_wall);
    if (sparse_wall >= 0) PrintProfile("sparsek read 32000", sparse_32k, sparse_wall);
    if (!o.profile_json_out.empty()) {
      std::ofstream j(o.profile_json_out);
      j << "{\n  \"bench\": \"cpu-profile\",\n"
        << Header(o, corpus, model, source_dir, load_start) << "  \"method\": "
        << JsonString(
               "wall time per op group summed over all layers (LlamaModel::set_profile); share = "
               "op seconds / wall seconds of the whole run; outside_forward = sampling and "
               "runner work between forward passes; dense profiles from separate runs; the "
               "SparseK profile from " +
               std::string(sparse_separate ? "a separate run"
                                           : "the first timed repetition of sparsek 32000"))
        << ",\n  \"dense_prefill_2048\": " << ProfileJson(prefill_2k, prefill_wall)
        << ",\n  \"dense_decode_64_after_512\": " << ProfileJson(decode_512, decode_wall)
        << ",\n  \"sparsek_read_32000\": "
        << (sparse_wall >= 0 ? ProfileJson(sparse_32k, sparse_wall) : std::string("null"))
        << "\n}\n";
      std::printf("wrote %s\n", o.profile_json_out.c_str());
    }
  }
  return 0;
}

}  // namespace
}  // namespace longread::bench

int main(int argc, char** argv) { return longread::bench::Main(argc, argv); }
