#include "engine/calibrate/calibrate.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "engine/calibrate/calibration_memory.h"
#include "engine/calibrate/least_squares.h"

namespace longread::engine {

absl::StatusOr<Corpus> ReadCorpus(const std::string& dir, const Tokenizer& tokenizer) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat("corpus: ", dir, " is not a directory"));
  }
  Corpus corpus;
  fs::recursive_directory_iterator it(dir, ec), end;
  for (; !ec && it != end; it.increment(ec)) {
    if (it->symlink_status(ec).type() == fs::file_type::regular) {
      corpus.files.push_back(fs::relative(it->path(), dir, ec).generic_string());
    }
  }
  if (ec) return absl::UnavailableError(absl::StrCat("corpus: ", dir, ": ", ec.message()));
  std::sort(corpus.files.begin(), corpus.files.end());
  for (const std::string& name : corpus.files) {
    std::ifstream in(fs::path(dir) / name, std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    if (!in) return absl::UnavailableError(absl::StrCat("corpus: cannot read ", dir, "/", name));
    corpus.bytes += static_cast<int64_t>(text.str().size());
    const std::vector<int32_t> ids = tokenizer.Encode(text.str(), /*parse_special=*/false);
    corpus.tokens.insert(corpus.tokens.end(), ids.begin(), ids.end());
  }
  if (corpus.tokens.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("corpus: no text under ", dir));
  }
  return corpus;
}

std::vector<std::vector<int32_t>> CutWindows(std::span<const int32_t> tokens, int64_t window_tokens,
                                             int64_t max_windows) {
  std::vector<std::vector<int32_t>> windows;
  if (window_tokens <= 0 || max_windows <= 0) return windows;
  const int64_t available = static_cast<int64_t>(tokens.size()) / window_tokens;
  const int64_t count = std::min(available, max_windows);
  for (int64_t k = 0; k < count; ++k) {
    const int64_t w = k * available / count;
    const auto first = tokens.begin() + w * window_tokens;
    windows.emplace_back(first, first + window_tokens);
  }
  return windows;
}

bool IsHeldOut(int64_t index, int64_t count, int32_t holdout_every) {
  if (holdout_every <= 1 || count < 2) return false;
  if (count < holdout_every) return index == count - 1;
  return index % holdout_every == holdout_every - 1;
}

absl::StatusOr<CalibrationReport> Calibrate(LlamaModel& model,
                                            const std::vector<std::vector<int32_t>>& windows,
                                            const CalibrationOptions& options,
                                            kernels::ThreadPool* pool,
                                            const CalibrationProgress& progress) {
  const ModelConfig& c = model.config();
  const int32_t L = c.n_layers, G = c.n_kv_heads;
  const int64_t d = c.d_model;
  if (windows.empty()) return absl::InvalidArgumentError("calibrate: no windows");
  if (options.sinks < 0 || options.tail_tokens < 0 || !(options.ridge >= 0) || !(options.eps > 0)) {
    return absl::InvalidArgumentError("calibrate: sinks, tail and ridge must be >= 0, eps > 0");
  }
  for (const auto& w : windows) {
    const int64_t n = static_cast<int64_t>(w.size());
    if (n <= options.sinks + options.tail_tokens || n > c.context_length) {
      return absl::InvalidArgumentError(
          absl::StrCat("calibrate: a window of ", n, " tokens must exceed sinks + tail (",
                       options.sinks + options.tail_tokens, ") and fit the model's context (",
                       c.context_length, ")"));
    }
  }
  // Features: x_norm, then the constant, then (optionally) position / window_tokens, scaled so
  // that all features are O(1) for the fp32 Gram blocks.
  const int64_t f = d + 1 + (options.position_slope ? 1 : 0);
  const double position_scale = 1.0 / static_cast<double>(options.window_tokens);
  std::vector<bool> penalized(f, false);
  std::fill(penalized.begin(), penalized.begin() + d, true);

  // Training windows first: the fit is solved before the held-out windows are read, so they are
  // scored with the final weights as they stream past.
  std::vector<int64_t> order;
  for (int pass = 0; pass < 2; ++pass) {
    for (int64_t k = 0; k < static_cast<int64_t>(windows.size()); ++k) {
      if (IsHeldOut(k, windows.size(), options.holdout_every) == (pass == 1)) order.push_back(k);
    }
  }
  CalibrationReport report;
  std::vector<NormalEquations> equations;
  equations.reserve(L);
  for (int32_t l = 0; l < L; ++l) equations.emplace_back(f, G);
  std::vector<std::vector<double>> beta;  // [layer] -> [head][f], once solved
  // Held-out: pooled (y, prediction) per (layer, head) and the sum of per-window Spearman.
  std::vector<std::vector<double>> held_y(L * G), held_pred(L * G);
  std::vector<double> spearman_sum(L * G, 0.0);

  CalibrationMemory memory(c);
  std::vector<float> features_t;
  std::vector<double> targets;
  for (size_t step = 0; step < order.size(); ++step) {
    const bool held_out = IsHeldOut(order[step], windows.size(), options.holdout_every);
    if (held_out && beta.empty()) {
      for (int32_t l = 0; l < L; ++l) {
        absl::StatusOr<std::vector<double>> solved = equations[l].Solve(options.ridge, penalized);
        if (!solved.ok()) {
          return absl::Status(solved.status().code(),
                              absl::StrCat("layer ", l, ": ", solved.status().message()));
        }
        beta.push_back(*std::move(solved));
      }
    }
    const std::vector<int32_t>& window = windows[order[step]];
    memory.Reset();
    if (auto s = model.Forward(window, memory, LogitsMode::kNone, nullptr, pool); !s.ok()) {
      return s;
    }
    const int64_t first = options.sinks;
    const int64_t m = static_cast<int64_t>(window.size()) - options.tail_tokens - first;
    features_t.resize(f * m);
    targets.resize(G * m);
    for (int32_t l = 0; l < L; ++l) {
      const float* x = memory.x_norm(l).data();
      for (int64_t s = 0; s < m; ++s) {
        const float* xs = x + (first + s) * d;
        for (int64_t a = 0; a < d; ++a) features_t[a * m + s] = xs[a];
        features_t[d * m + s] = 1.0f;
        if (options.position_slope) {
          features_t[(d + 1) * m + s] = static_cast<float>((first + s) * position_scale);
        }
        for (int32_t g = 0; g < G; ++g) {
          targets[g * m + s] = std::log(memory.MeanLaterAttention(l, g, first + s) + options.eps);
        }
      }
      if (!held_out) {
        equations[l].Add(features_t.data(), targets.data(), m, pool);
        continue;
      }
      for (int32_t g = 0; g < G; ++g) {
        const double* b = &beta[l][g * f];
        std::vector<double> y(targets.begin() + g * m, targets.begin() + (g + 1) * m);
        std::vector<double> pred(m);
        for (int64_t s = 0; s < m; ++s) {
          double u = 0;
          for (int64_t a = 0; a < f; ++a) u += b[a] * features_t[a * m + s];
          pred[s] = u;
        }
        spearman_sum[l * G + g] += SpearmanCorrelation(y, pred);
        held_y[l * G + g].insert(held_y[l * G + g].end(), y.begin(), y.end());
        held_pred[l * G + g].insert(held_pred[l * G + g].end(), pred.begin(), pred.end());
      }
    }
    (held_out ? report.heldout_windows : report.train_windows) += 1;
    (held_out ? report.heldout_samples : report.train_samples) += m;
    if (progress) progress(static_cast<int64_t>(step) + 1, static_cast<int64_t>(order.size()));
  }
  if (report.train_windows == 0) return absl::InvalidArgumentError("calibrate: no training window");
  if (beta.empty()) {
    for (int32_t l = 0; l < L; ++l) {
      absl::StatusOr<std::vector<double>> solved = equations[l].Solve(options.ridge, penalized);
      if (!solved.ok()) return solved.status();
      beta.push_back(*std::move(solved));
    }
  }

  report.weights = ZeroScorerWeights(model.fingerprint(), L, G, static_cast<int32_t>(d));
  report.r2.assign(L * G, std::numeric_limits<double>::quiet_NaN());
  report.spearman.assign(L * G, std::numeric_limits<double>::quiet_NaN());
  for (int32_t l = 0; l < L; ++l) {
    for (int32_t g = 0; g < G; ++g) {
      const int64_t lg = int64_t{l} * G + g;
      const double* b = &beta[l][g * f];
      for (int64_t a = 0; a < d; ++a) report.weights.w[lg * d + a] = static_cast<float>(b[a]);
      report.weights.b[lg] = static_cast<float>(b[d]);
      if (options.position_slope) {
        report.weights.slope[lg] = static_cast<float>(b[d + 1] * position_scale);
      }
      if (report.heldout_windows > 0) {
        report.r2[lg] = RSquared(held_y[lg], held_pred[lg]);
        report.spearman[lg] = spearman_sum[lg] / static_cast<double>(report.heldout_windows);
      }
    }
  }
  if (absl::Status s = ValidateScorerWeights(report.weights); !s.ok()) return s;
  return report;
}

}  // namespace longread::engine
