#include "services/cli/calibrate_command.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "engine/calibrate/calibrate.h"
#include "engine/model/llama_model.h"
#include "engine/model_files/model_file.h"
#include "engine/tokenizer/tokenizer.h"
#include "kernels/thread_pool.h"
#include "services/cli/progress_bar.h"
#include "services/common/log.h"

namespace longread::services {
namespace {

// The exit codes of `longread --help`.
constexpr int kOk = 0, kInternal = 1, kUsage = 2, kBadInput = 3, kBadModel = 4;

constexpr char kHelp[] = R"(Usage: longread calibrate --corpus DIR --out FILE [options]

Fits the SparseK scorers (one linear scorer per layer and KV head, DESIGN.md §4) without a GPU
or a gradient: every regular file under DIR (recursive, sorted) is tokenized, the token stream is
cut into non-overlapping windows, each window is read with dense attention, and per layer and KV
head a ridge least-squares fit maps a key's x_norm to log(mean attention probability that the
later queries of its group put on it + 1e-6). Keys among the first --sinks and last
--tail-tokens of a window are left out of the fit. Every 5th window is held out; a table of the
held-out R² and Spearman correlation per layer and KV head is printed on stdout.

  --corpus DIR           text and code to calibrate on (required)
  --out FILE             the scorer weights file to write (required; replaced atomically)
  --model PATH           GGUF file or Hugging Face directory (default: $LONGREAD_MODEL, else
                         models/SmolLM2-135M-Instruct.Q4_1.gguf)
  --window-tokens N      tokens per window, within the model's context (default 1024)
  --max-windows N        windows used, spread evenly over the corpus (default 64)
  --ridge R              ridge λ on the diagonal of XᵀX/n, constant not penalized (default 1e-3)
  --position-slope       also fit the position slope λ (default: off, slope 0)
  --sinks S              first tokens of a window left out of the fit (default 4)
  --tail-tokens T        last tokens of a window left out of the fit (default 64)
  --threads N            CPU threads (default: all cores; env LONGREAD_THREADS)
  --log-format FMT       text (default) or json: structured logs on stderr
  --quiet                no progress bar, no info logs
)";

constexpr char kDefaultModel[] = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

struct Options {
  std::map<std::string, std::string> values;
  bool Has(const std::string& name) const { return values.count(name) > 0; }
  std::string Get(const std::string& name, const std::string& fallback = "") const {
    auto it = values.find(name);
    return it == values.end() ? fallback : it->second;
  }
};

int Usage(const std::string& error) {
  std::fprintf(stderr, "longread calibrate: %s (see --help)\n", error.c_str());
  return kUsage;
}

bool IsSwitch(const std::string& name) {
  return name == "help" || name == "quiet" || name == "position-slope";
}

bool Parse(int argc, char** argv, Options* options, std::string* error) {
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h") a = "--help";
    if (a.rfind("--", 0) != 0) {
      *error = absl::StrCat("unexpected argument '", a, "'");
      return false;
    }
    std::string name = a.substr(2), value;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else if (!IsSwitch(name)) {
      if (i + 1 >= argc) {
        *error = absl::StrCat("option --", name, " needs a value");
        return false;
      }
      value = argv[++i];
    }
    static const char* kKnown[] = {"help",      "quiet", "position-slope", "corpus",
                                   "out",       "model", "window-tokens",  "max-windows",
                                   "ridge",     "sinks", "tail-tokens",    "threads",
                                   "log-format"};
    bool known = false;
    for (const char* k : kKnown) known |= name == k;
    if (!known) {
      *error = absl::StrCat("unknown option --", name);
      return false;
    }
    options->values[name] = value;
  }
  return true;
}

bool ParseInt(const Options& o, const std::string& name, int64_t fallback, int64_t min,
              int64_t* out, std::string* error) {
  *out = fallback;
  if (!o.Has(name)) return true;
  if (!absl::SimpleAtoi(o.Get(name), out) || *out < min) {
    *error = absl::StrCat("--", name, " must be an integer >= ", min, ", got '", o.Get(name), "'");
    return false;
  }
  return true;
}

std::string UtcNow() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

double NanMean(const std::vector<double>& v, size_t begin, size_t end) {
  double sum = 0;
  int n = 0;
  for (size_t i = begin; i < end; ++i) {
    if (std::isfinite(v[i])) {
      sum += v[i];
      ++n;
    }
  }
  return n > 0 ? sum / n : std::nan("");
}

// One row per layer: R² and Spearman ρ per KV head, then their means over heads.
std::string QualityTable(const engine::CalibrationReport& r) {
  const int32_t L = r.weights.n_layers, G = r.weights.n_kv_heads;
  std::string out = "layer";
  for (int32_t g = 0; g < G; ++g) absl::StrAppend(&out, absl::StrFormat("    R2[%d]", g));
  for (int32_t g = 0; g < G; ++g) absl::StrAppend(&out, absl::StrFormat("   rho[%d]", g));
  absl::StrAppend(&out, "   R2 mean  rho mean\n");
  for (int32_t l = 0; l < L; ++l) {
    absl::StrAppend(&out, absl::StrFormat("%5d", l));
    for (int32_t g = 0; g < G; ++g)
      absl::StrAppend(&out, absl::StrFormat(" %8.3f", r.r2[l * G + g]));
    for (int32_t g = 0; g < G; ++g) {
      absl::StrAppend(&out, absl::StrFormat(" %8.3f", r.spearman[l * G + g]));
    }
    absl::StrAppend(&out, absl::StrFormat(" %9.3f %9.3f\n", NanMean(r.r2, l * G, (l + 1) * G),
                                          NanMean(r.spearman, l * G, (l + 1) * G)));
  }
  absl::StrAppend(
      &out, absl::StrFormat("  all%*s %9.3f %9.3f\n", 18 * G, "", NanMean(r.r2, 0, r.r2.size()),
                            NanMean(r.spearman, 0, r.spearman.size())));
  return out;
}

}  // namespace

int RunCalibrateCommand(int argc, char** argv) {
  Options o;
  std::string error;
  if (!Parse(argc, argv, &o, &error)) return Usage(error);
  if (o.Has("help")) {
    std::fputs(kHelp, stdout);
    return kOk;
  }
  const std::string format = o.Get("log-format", "text");
  if (format == "json") {
    SetLogFormat(LogFormat::kJson);
  } else if (format != "text") {
    return Usage("--log-format must be text or json");
  }
  if (o.Has("quiet")) SetMinLogLevel(LogLevel::kWarning);
  if (!o.Has("corpus")) return Usage("--corpus DIR is required");
  if (!o.Has("out")) return Usage("--out FILE is required");

  engine::CalibrationOptions options;
  int64_t sinks = options.sinks, threads = 0;
  if (!ParseInt(o, "window-tokens", options.window_tokens, 2, &options.window_tokens, &error) ||
      !ParseInt(o, "max-windows", options.max_windows, 1, &options.max_windows, &error) ||
      !ParseInt(o, "sinks", sinks, 0, &sinks, &error) ||
      !ParseInt(o, "tail-tokens", options.tail_tokens, 0, &options.tail_tokens, &error) ||
      !ParseInt(o, "threads", kernels::DefaultThreadCount(), 1, &threads, &error)) {
    return Usage(error);
  }
  options.sinks = static_cast<int32_t>(sinks);
  if (o.Has("ridge") && (!absl::SimpleAtod(o.Get("ridge"), &options.ridge) ||
                         !(options.ridge >= 0) || !std::isfinite(options.ridge))) {
    return Usage(absl::StrCat("--ridge must be a number >= 0, got '", o.Get("ridge"), "'"));
  }
  options.position_slope = o.Has("position-slope");
  if (options.window_tokens <= options.sinks + options.tail_tokens) {
    return Usage("--window-tokens must exceed --sinks + --tail-tokens");
  }

  std::string model_path = o.Get("model");
  if (model_path.empty()) {
    const char* env = std::getenv("LONGREAD_MODEL");
    model_path = env != nullptr && *env != '\0' ? env : kDefaultModel;
  }
  const auto start = std::chrono::steady_clock::now();
  auto file = engine::ModelFile::Open(model_path);
  if (!file.ok()) {
    Log(LogLevel::kError, "model_unusable",
        {{"path", model_path}, {"error", std::string(file.status().message())}});
    return kBadModel;
  }
  Log(LogLevel::kInfo, "model_loaded", {{"path", model_path}, {"model", (*file)->Describe()}});
  auto tokenizer = engine::Tokenizer::Create((*file)->tokenizer());
  if (!tokenizer.ok()) {
    Log(LogLevel::kError, "tokenizer_unusable",
        {{"error", std::string(tokenizer.status().message())}});
    return kBadModel;
  }
  auto model = engine::LlamaModel::Load(std::move(*file));
  if (!model.ok()) {
    Log(LogLevel::kError, "model_unusable", {{"error", std::string(model.status().message())}});
    return kBadModel;
  }
  if (options.window_tokens > (*model)->config().context_length) {
    return Usage(absl::StrCat("--window-tokens exceeds the model's context (",
                              (*model)->config().context_length, ")"));
  }

  const std::string corpus_dir = o.Get("corpus");
  auto corpus = engine::ReadCorpus(corpus_dir, **tokenizer);
  if (!corpus.ok()) {
    Log(LogLevel::kError, "corpus_unusable", {{"error", std::string(corpus.status().message())}});
    return kBadInput;
  }
  const auto windows =
      engine::CutWindows(corpus->tokens, options.window_tokens, options.max_windows);
  if (windows.empty()) {
    Log(LogLevel::kError, "corpus_too_small",
        {{"tokens", std::to_string(corpus->tokens.size())},
         {"window_tokens", std::to_string(options.window_tokens)}});
    return kBadInput;
  }
  const std::string corpus_description = absl::StrCat(
      corpus_dir, ": ", corpus->files.size(), " files, ", corpus->bytes, " bytes, ",
      corpus->tokens.size(), " tokens; ", windows.size(), " windows of ", options.window_tokens,
      " tokens spread over ", corpus->tokens.size() / options.window_tokens, " available");
  Log(LogLevel::kInfo, "calibrating",
      {{"corpus", corpus_description},
       {"ridge", absl::StrCat(options.ridge)},
       {"position_slope", options.position_slope ? "on" : "off"},
       {"threads", std::to_string(threads)}});

  kernels::ThreadPool pool(static_cast<int>(threads));
  ProgressBar bar("calibrating", "windows", !o.Has("quiet"));
  auto report = engine::Calibrate(**model, windows, options, &pool,
                                  [&](int64_t done, int64_t total) { bar.Update(done, total); });
  bar.Finish();
  if (!report.ok()) {
    Log(LogLevel::kError, "calibration_failed",
        {{"error", std::string(report.status().message())}});
    return kInternal;
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const std::string table = QualityTable(*report);
  std::vector<std::string> command(argv, argv + argc);
  command[0] = "longread";
  report->weights.provenance = absl::StrCat(
      "command: ", absl::StrJoin(command, " "), "\ncorpus: ", corpus_description,
      "\ndate: ", UtcNow(), "\nfit: ridge least squares of log(mean later-query attention + 1e-6)",
      " on [x_norm, 1", options.position_slope ? ", position" : "", "], ridge ", options.ridge,
      ", sinks ", options.sinks, ", tail ", options.tail_tokens, "; ", report->train_windows,
      " training windows, ", report->heldout_windows, " held out; position slope ",
      options.position_slope ? "fitted" : "off (0)", "\nheld-out quality:\n", table);
  if (auto s = engine::SaveScorerWeights(o.Get("out"), report->weights); !s.ok()) {
    Log(LogLevel::kError, "write_failed",
        {{"path", o.Get("out")}, {"error", std::string(s.message())}});
    return kBadInput;
  }
  std::fputs(table.c_str(), stdout);
  Log(LogLevel::kInfo, "calibration_done",
      {{"out", o.Get("out")},
       {"seconds", absl::StrFormat("%.1f", seconds)},
       {"train_windows", std::to_string(report->train_windows)},
       {"heldout_windows", std::to_string(report->heldout_windows)},
       {"heldout_r2_mean", absl::StrFormat("%.3f", NanMean(report->r2, 0, report->r2.size()))},
       {"heldout_spearman_mean",
        absl::StrFormat("%.3f", NanMean(report->spearman, 0, report->spearman.size()))}});
  return kOk;
}

}  // namespace longread::services
