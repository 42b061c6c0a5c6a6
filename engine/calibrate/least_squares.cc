#include "engine/calibrate/least_squares.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "kernels/dtype.h"
#include "kernels/ops.h"

namespace longread::engine {
namespace {

std::vector<double> Ranks(std::span<const double> x) {
  std::vector<int64_t> order(x.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return x[a] < x[b]; });
  std::vector<double> rank(x.size());
  for (size_t i = 0; i < order.size();) {
    size_t j = i;
    while (j + 1 < order.size() && x[order[j + 1]] == x[order[i]]) ++j;
    const double mean_rank = 0.5 * static_cast<double>(i + j);
    for (size_t k = i; k <= j; ++k) rank[order[k]] = mean_rank;
    i = j + 1;
  }
  return rank;
}

double Pearson(std::span<const double> a, std::span<const double> b) {
  const size_t n = a.size();
  if (n == 0 || b.size() != n) return std::numeric_limits<double>::quiet_NaN();
  double ma = 0, mb = 0;
  for (size_t i = 0; i < n; ++i) {
    ma += a[i];
    mb += b[i];
  }
  ma /= n;
  mb /= n;
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < n; ++i) {
    sab += (a[i] - ma) * (b[i] - mb);
    saa += (a[i] - ma) * (a[i] - ma);
    sbb += (b[i] - mb) * (b[i] - mb);
  }
  if (saa == 0 || sbb == 0) return std::numeric_limits<double>::quiet_NaN();
  return sab / std::sqrt(saa * sbb);
}

}  // namespace

NormalEquations::NormalEquations(int64_t n_features, int32_t n_targets)
    : f_(n_features),
      t_(n_targets),
      gram_(n_features * n_features, 0.0),
      xty_(n_targets * n_features, 0.0),
      block_(n_features * n_features) {}

void NormalEquations::Add(const float* features_t, const double* targets, int64_t n_samples,
                          kernels::ThreadPool* pool) {
  if (n_samples <= 0) return;
  kernels::MatrixView x;
  x.type = kernels::DType::kF32;
  x.rows = f_;
  x.cols = n_samples;
  x.data = features_t;
  // block[a][b] = Σ_s X[a][s] · X[b][s]: the features, read as f_ "tokens", times themselves.
  kernels::MatMul(x, features_t, f_, block_.data(), pool);
  for (int64_t i = 0; i < f_ * f_; ++i) gram_[i] += block_[i];
  for (int32_t t = 0; t < t_; ++t) {
    const double* y = targets + t * n_samples;
    for (int64_t a = 0; a < f_; ++a) {
      const float* xa = features_t + a * n_samples;
      double sum = 0;
      for (int64_t s = 0; s < n_samples; ++s) sum += xa[s] * y[s];
      xty_[t * f_ + a] += sum;
    }
  }
  n_ += n_samples;
}

absl::StatusOr<std::vector<double>> NormalEquations::Solve(
    double ridge, const std::vector<bool>& penalized) const {
  if (n_ == 0) return absl::FailedPreconditionError("least squares: no samples");
  if (static_cast<int64_t>(penalized.size()) != f_) {
    return absl::InvalidArgumentError(
        absl::StrCat("least squares: penalized has ", penalized.size(), " entries, expected ", f_));
  }
  const double inv_n = 1.0 / static_cast<double>(n_);
  std::vector<double> a(f_ * f_);
  // The fp32 block Grams are symmetric up to rounding; average the halves so A is exactly so.
  for (int64_t r = 0; r < f_; ++r) {
    for (int64_t c = 0; c < f_; ++c) {
      a[r * f_ + c] = 0.5 * (gram_[r * f_ + c] + gram_[c * f_ + r]) * inv_n;
    }
    if (penalized[r]) a[r * f_ + r] += ridge;
  }
  std::vector<double> beta(xty_);
  for (double& v : beta) v *= inv_n;
  if (absl::Status s = CholeskySolve(a, f_, beta, t_); !s.ok()) return s;
  return beta;
}

absl::Status CholeskySolve(std::vector<double>& a, int64_t n, std::vector<double>& b,
                           int64_t n_rhs) {
  // A = L·Lᵀ, L stored in the lower triangle of a.
  for (int64_t j = 0; j < n; ++j) {
    double diag = a[j * n + j];
    for (int64_t k = 0; k < j; ++k) diag -= a[j * n + k] * a[j * n + k];
    if (!(diag > 0)) {
      return absl::FailedPreconditionError(
          absl::StrCat("least squares: normal equations not positive definite at pivot ", j, " (",
                       diag, "): too few samples, or a constant feature; raise --ridge"));
    }
    const double l_jj = std::sqrt(diag);
    a[j * n + j] = l_jj;
    for (int64_t i = j + 1; i < n; ++i) {
      double v = a[i * n + j];
      const double* li = &a[i * n];
      const double* lj = &a[j * n];
      for (int64_t k = 0; k < j; ++k) v -= li[k] * lj[k];
      a[i * n + j] = v / l_jj;
    }
  }
  for (int64_t r = 0; r < n_rhs; ++r) {
    double* x = &b[r * n];
    for (int64_t i = 0; i < n; ++i) {  // L·z = b
      double v = x[i];
      for (int64_t k = 0; k < i; ++k) v -= a[i * n + k] * x[k];
      x[i] = v / a[i * n + i];
    }
    for (int64_t i = n - 1; i >= 0; --i) {  // Lᵀ·x = z
      double v = x[i];
      for (int64_t k = i + 1; k < n; ++k) v -= a[k * n + i] * x[k];
      x[i] = v / a[i * n + i];
    }
  }
  return absl::OkStatus();
}

double RSquared(std::span<const double> y, std::span<const double> prediction) {
  const size_t n = y.size();
  if (n == 0 || prediction.size() != n) return std::numeric_limits<double>::quiet_NaN();
  const double mean = std::accumulate(y.begin(), y.end(), 0.0) / n;
  double sse = 0, sst = 0;
  for (size_t i = 0; i < n; ++i) {
    sse += (y[i] - prediction[i]) * (y[i] - prediction[i]);
    sst += (y[i] - mean) * (y[i] - mean);
  }
  if (sst == 0) return std::numeric_limits<double>::quiet_NaN();
  return 1.0 - sse / sst;
}

double SpearmanCorrelation(std::span<const double> a, std::span<const double> b) {
  if (a.size() != b.size()) return std::numeric_limits<double>::quiet_NaN();
  const std::vector<double> ra = Ranks(a), rb = Ranks(b);
  return Pearson(ra, rb);
}

}  // namespace longread::engine
