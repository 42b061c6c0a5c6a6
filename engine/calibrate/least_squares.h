// Ridge least squares over many samples that arrive in blocks (one text window at a time), for
// several targets that share one design matrix (the KV heads of a layer share its x_norm), plus
// the two fit-quality measures calibration reports.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/thread_pool.h"

namespace longread::engine {

// Accumulates XᵀX and Xᵀy; memory is O(features²) however many samples arrive.
class NormalEquations {
 public:
  NormalEquations(int64_t n_features, int32_t n_targets);

  // features_t: feature-major [n_features][n_samples]; targets: [n_targets][n_samples].
  // A block's Gram matrix is one fp32 GEMM (kernels::MatMul): keep blocks to a few thousand
  // samples so that the fp32 sums stay short. Blocks are summed in double.
  void Add(const float* features_t, const double* targets, int64_t n_samples,
           kernels::ThreadPool* pool);

  int64_t samples() const { return n_; }

  // For every target, β minimizing (1/n) Σ (y − Xβ)² + ridge · Σ_{a: penalized[a]} β_a², i.e.
  // (XᵀX/n + ridge·D) β = Xᵀy/n, solved by Cholesky. Returns [n_targets][n_features].
  // FailedPrecondition if the system is not positive definite (no samples, or a constant
  // feature that is not penalized).
  absl::StatusOr<std::vector<double>> Solve(double ridge, const std::vector<bool>& penalized) const;

 private:
  int64_t f_;
  int32_t t_;
  int64_t n_ = 0;
  std::vector<double> gram_;  // [f][f]
  std::vector<double> xty_;   // [t][f]
  std::vector<float> block_;  // one block's Gram, fp32
};

// Solves A·X = B in place of B for symmetric positive definite A ([n][n], destroyed) and
// B = [n_rhs][n] (one right-hand side per row).
absl::Status CholeskySolve(std::vector<double>& a, int64_t n, std::vector<double>& b,
                           int64_t n_rhs);

// 1 − Σ(y − ŷ)² / Σ(y − ȳ)²; NaN when y is constant or empty.
double RSquared(std::span<const double> y, std::span<const double> prediction);

// Pearson correlation of the ranks (ties get their mean rank); NaN when either side is constant.
double SpearmanCorrelation(std::span<const double> a, std::span<const double> b);

}  // namespace longread::engine
