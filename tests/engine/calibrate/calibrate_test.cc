// Calibration: the instrument (CalibrationMemory) measures the real dense attention, its masses
// add up, the least-squares solver recovers known weights, and the whole command writes a file
// the engine accepts.
#include "engine/calibrate/calibrate.h"

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <vector>

#include "engine/calibrate/calibration_memory.h"
#include "engine/calibrate/least_squares.h"
#include "engine/memory/sparsek_memory.h"
#include "gtest/gtest.h"
#include "tests/engine/logit_compare.h"
#include "tests/engine/test_model.h"

namespace longread::engine {
namespace {

TEST(CalibrationMemoryTest, OutputIsDenseAttention) {
  REQUIRE_DEFAULT_MODEL(model);
  const std::vector<int32_t> tokens = testing::RandomTokens(128, 3);
  kernels::ThreadPool pool(2);
  SparseKMemory dense(model->config(), MemoryConfig::Dense(), nullptr);
  std::vector<float> reference;
  ASSERT_TRUE(model->Forward(tokens, dense, LogitsMode::kAll, &reference, &pool).ok());

  CalibrationMemory one_segment(model->config());
  std::vector<float> logits;
  ASSERT_TRUE(model->Forward(tokens, one_segment, LogitsMode::kAll, &logits, &pool).ok());
  ASSERT_EQ(logits.size(), reference.size());
  EXPECT_LE(testing::MaxRelativeDiff(logits, reference), 1e-5);

  // Two segments: the second attends over the first one's keys (single-threaded this time).
  CalibrationMemory two_segments(model->config());
  const std::span<const int32_t> all(tokens);
  std::vector<float> first, second;
  ASSERT_TRUE(model->Forward(all.first(50), two_segments, LogitsMode::kAll, &first, nullptr).ok());
  ASSERT_TRUE(
      model->Forward(all.subspan(50), two_segments, LogitsMode::kAll, &second, nullptr).ok());
  first.insert(first.end(), second.begin(), second.end());
  EXPECT_LE(testing::MaxRelativeDiff(first, reference), 1e-5);
  EXPECT_EQ(two_segments.next_position(), 128);
}

TEST(CalibrationMemoryTest, EveryQueryDistributesOneUnitPerHead) {
  REQUIRE_DEFAULT_MODEL(model);
  const ModelConfig& c = model->config();
  const std::vector<int32_t> tokens = testing::RandomTokens(128, 4);
  kernels::ThreadPool pool(2);
  CalibrationMemory memory(c);
  ASSERT_TRUE(model->Forward(tokens, memory, LogitsMode::kNone, nullptr, &pool).ok());
  for (int32_t layer : {0, 7, c.n_layers - 1}) {
    double total = 0;
    for (int32_t g = 0; g < c.n_kv_heads; ++g) {
      const auto& later = memory.later_mass(layer, g);
      const auto& self = memory.self_mass(layer, g);
      ASSERT_EQ(later.size(), tokens.size());
      EXPECT_EQ(later.back(), 0.0) << "no query follows the last token";
      EXPECT_EQ(self[0], c.n_heads / c.n_kv_heads) << "the first query sees only itself";
      for (size_t j = 0; j < later.size(); ++j) {
        EXPECT_GE(later[j], 0.0);
        total += later[j] + self[j];
      }
      const double mean = memory.MeanLaterAttention(layer, g, 10);
      EXPECT_GT(mean, 0.0);
      EXPECT_LT(mean, 1.0);
    }
    EXPECT_NEAR(total, 128.0 * c.n_heads, 1e-3) << "layer " << layer;
    EXPECT_EQ(memory.x_norm(layer).size(), tokens.size() * c.d_model);
  }
}

TEST(LeastSquaresTest, RecoversExactLinearTargets) {
  constexpr int64_t kDims = 12, kFeatures = kDims + 1, kSamples = 3000, kBlock = 1000;
  std::mt19937_64 rng(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<double> w_true(2 * kFeatures);
  for (auto& w : w_true) w = normal(rng);
  NormalEquations equations(kFeatures, 2);
  for (int64_t start = 0; start < kSamples; start += kBlock) {
    std::vector<float> x(kFeatures * kBlock);
    std::vector<double> y(2 * kBlock, 0.0);
    for (int64_t s = 0; s < kBlock; ++s) {
      for (int64_t a = 0; a < kDims; ++a) x[a * kBlock + s] = normal(rng);
      x[kDims * kBlock + s] = 1.0f;
      for (int t = 0; t < 2; ++t) {
        for (int64_t a = 0; a < kFeatures; ++a) {
          y[t * kBlock + s] += w_true[t * kFeatures + a] * x[a * kBlock + s];
        }
      }
    }
    equations.Add(x.data(), y.data(), kBlock, nullptr);
  }
  EXPECT_EQ(equations.samples(), kSamples);
  std::vector<bool> penalized(kFeatures, true);
  penalized[kDims] = false;
  absl::StatusOr<std::vector<double>> beta = equations.Solve(0.0, penalized);
  ASSERT_TRUE(beta.ok()) << beta.status();
  for (int64_t i = 0; i < 2 * kFeatures; ++i) EXPECT_NEAR((*beta)[i], w_true[i], 1e-6) << i;

  // A ridge shrinks the weights but never the unpenalized constant's role.
  absl::StatusOr<std::vector<double>> shrunk = equations.Solve(10.0, penalized);
  ASSERT_TRUE(shrunk.ok());
  double norm_true = 0, norm_shrunk = 0;
  for (int64_t a = 0; a < kDims; ++a) {
    norm_true += w_true[a] * w_true[a];
    norm_shrunk += (*shrunk)[a] * (*shrunk)[a];
  }
  EXPECT_LT(norm_shrunk, 0.05 * norm_true);
}

TEST(LeastSquaresTest, RefusesSingularSystem) {
  NormalEquations equations(2, 1);
  std::vector<float> x = {1, 1, 1, 1, 1, 1};  // two identical constant features, 3 samples
  std::vector<double> y = {1, 2, 3};
  equations.Add(x.data(), y.data(), 3, nullptr);
  EXPECT_EQ(equations.Solve(0.0, {false, false}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(equations.Solve(1e-3, {true, true}).ok());
}

TEST(LeastSquaresTest, QualityMeasures) {
  const std::vector<double> y = {1, 2, 3, 4, 5};
  EXPECT_DOUBLE_EQ(RSquared(y, y), 1.0);
  EXPECT_DOUBLE_EQ(RSquared(y, std::vector<double>(5, 3.0)), 0.0);
  using V = std::vector<double>;
  EXPECT_DOUBLE_EQ(SpearmanCorrelation(y, V{1, 4, 9, 16, 25}), 1.0);
  EXPECT_DOUBLE_EQ(SpearmanCorrelation(y, V{5, 4, 3, 2, 1}), -1.0);
  EXPECT_NEAR(SpearmanCorrelation(V{1, 2, 3, 4}, V{1, 1, 2, 2}), 0.894427191, 1e-9);  // ties
  EXPECT_TRUE(std::isnan(SpearmanCorrelation(y, std::vector<double>(5, 1.0))));
}

TEST(CalibrateTest, WindowsAreSpreadAndHeldOutIsDeterministic) {
  std::vector<int32_t> tokens(1050);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>(i);
  const auto windows = CutWindows(tokens, 100, 4);  // 10 available, take 0, 2, 5, 7
  ASSERT_EQ(windows.size(), 4u);
  EXPECT_EQ(windows[0][0], 0);
  EXPECT_EQ(windows[1][0], 200);
  EXPECT_EQ(windows[2][0], 500);
  EXPECT_EQ(windows[3][99], 799);
  EXPECT_EQ(CutWindows(tokens, 100, 64).size(), 10u);
  EXPECT_TRUE(IsHeldOut(4, 10, 5));
  EXPECT_FALSE(IsHeldOut(5, 10, 5));
  EXPECT_TRUE(IsHeldOut(2, 3, 5));
  EXPECT_FALSE(IsHeldOut(0, 1, 5));
}

TEST(CalibrateTest, TinyCorpusEndToEnd) {
  REQUIRE_DEFAULT_MODEL(model);
  auto tokenizer = Tokenizer::Create(model->file().tokenizer());
  ASSERT_TRUE(tokenizer.ok());
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("calibrate_test_" + std::to_string(getpid()));
  fs::create_directories(dir / "sub");
  {
    std::ofstream a(dir / "a.txt");
    for (int i = 0; i < 40; ++i) {
      a << "Paragraph " << i << ": the memory keeps the keys that later queries attend to, "
        << "and forgets the rest once the window moves past them.\n";
    }
    std::ofstream b(dir / "sub" / "b.cc");
    for (int i = 0; i < 30; ++i) b << "int f" << i << "(int x) { return x * " << i << "; }\n";
  }
  absl::StatusOr<Corpus> corpus = ReadCorpus(dir.string(), **tokenizer);
  ASSERT_TRUE(corpus.ok()) << corpus.status();
  ASSERT_EQ(corpus->files, (std::vector<std::string>{"a.txt", "sub/b.cc"}));
  CalibrationOptions options;
  options.window_tokens = 128;
  options.tail_tokens = 16;
  options.ridge = 1e-2;
  options.position_slope = true;
  const auto windows = CutWindows(corpus->tokens, options.window_tokens, 4);
  ASSERT_EQ(windows.size(), 4u);
  kernels::ThreadPool pool(2);
  int64_t last_progress = 0;
  absl::StatusOr<CalibrationReport> report =
      Calibrate(*model, windows, options, &pool, [&](int64_t done, int64_t total) {
        EXPECT_EQ(total, 4);
        last_progress = done;
      });
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(last_progress, 4);
  EXPECT_EQ(report->train_windows, 3);
  EXPECT_EQ(report->heldout_windows, 1);
  EXPECT_EQ(report->train_samples, 3 * (128 - 4 - 16));
  const ModelConfig& c = model->config();
  ASSERT_EQ(report->r2.size(), static_cast<size_t>(c.n_layers * c.n_kv_heads));
  for (double rho : report->spearman) EXPECT_TRUE(std::isfinite(rho));

  report->weights.provenance = "calibrate_test";
  const std::string path = (dir / "w.lrscorer").string();
  ASSERT_TRUE(SaveScorerWeights(path, report->weights).ok());
  absl::StatusOr<ScorerWeights> loaded =
      LoadScorerWeights(path, model->fingerprint(), c.n_layers, c.n_kv_heads, c.d_model);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->w, report->weights.w);
  bool any_slope = false;
  for (float s : loaded->slope) any_slope |= s != 0.0f;
  EXPECT_TRUE(any_slope);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace longread::engine
