// `longread calibrate`: fits the linear SparseK scorers (DESIGN.md §4) without a GPU or a
// gradient. Each text window is read once with dense attention (CalibrationMemory); for every
// layer and KV head a ridge least-squares fit maps a key's x_norm (plus a constant, optionally
// its position) to the log of the mean attention that later queries give it.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/llama_model.h"
#include "engine/scorer/scorer.h"
#include "engine/tokenizer/tokenizer.h"
#include "kernels/thread_pool.h"

namespace longread::engine {

struct CalibrationOptions {
  int64_t window_tokens = 1024;  // tokens per window, each read as a fresh document
  int64_t max_windows = 64;
  double ridge = 1e-3;          // λ added to the diagonal of XᵀX/n (not to the constant)
  bool position_slope = false;  // fit u = w·x + b + slope·position instead of slope = 0
  int32_t sinks = 4;            // first tokens of a window, always kept: left out of the fit
  int64_t tail_tokens = 64;     // last tokens of a window, too few later queries: left out
  double eps = 1e-6;            // target y = log(MeanLaterAttention + eps)
  int32_t holdout_every = 5;    // window k is held out when k % holdout_every == holdout_every-1
};

// All regular files under a directory (recursive, symlinks skipped, sorted by relative path),
// each tokenized on its own without special tokens, the token streams concatenated.
struct Corpus {
  std::vector<std::string> files;  // relative paths
  int64_t bytes = 0;
  std::vector<int32_t> tokens;
};
absl::StatusOr<Corpus> ReadCorpus(const std::string& dir, const Tokenizer& tokenizer);

// Non-overlapping windows of `window_tokens` (a shorter tail is dropped). With more than
// `max_windows` available, windows k · available / max_windows are taken: spread evenly over the
// corpus, so every part of it is represented.
std::vector<std::vector<int32_t>> CutWindows(std::span<const int32_t> tokens, int64_t window_tokens,
                                             int64_t max_windows);

// Whether window `index` of `count` is held out for evaluation. With fewer than holdout_every
// windows (but at least two) the last one is.
bool IsHeldOut(int64_t index, int64_t count, int32_t holdout_every);

struct CalibrationReport {
  ScorerWeights weights;  // provenance left for the caller to fill
  // Held-out quality per [layer][kv_head]: R² of the log-mass prediction over all held-out keys,
  // and the Spearman correlation of predicted and true mass within a window, averaged over
  // held-out windows. NaN without held-out windows.
  std::vector<double> r2, spearman;
  int64_t train_windows = 0, heldout_windows = 0;
  int64_t train_samples = 0, heldout_samples = 0;  // keys per (layer, head)
};

// Called after each window: windows done, total.
using CalibrationProgress = std::function<void(int64_t done, int64_t total)>;

absl::StatusOr<CalibrationReport> Calibrate(LlamaModel& model,
                                            const std::vector<std::vector<int32_t>>& windows,
                                            const CalibrationOptions& options,
                                            kernels::ThreadPool* pool,
                                            const CalibrationProgress& progress = {});

}  // namespace longread::engine
