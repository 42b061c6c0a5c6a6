// The SparseK threshold three ways (sort, selection, prefix sweep); see kernels/sparsek.h.
//
// All three end the same way: once the linear piece of S(τ) that holds τ is known as
// (u entries at 1, cf fractional entries whose scores sum to sum_f), τ solves
// u + sum_f − cf·τ = k on it (SolvePiece). Sharing that formula, instead of accumulating S
// across pieces, is what makes the three agree to rounding.
#include "kernels/sparsek.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <queue>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace longread::kernels {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

template <typename T>
absl::Status ValidateScoresAndBudget(std::span<const T> z, double k) {
  if (!std::isfinite(k) || !(k > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("SparseK budget k must be finite and > 0, got ", k));
  }
  for (size_t j = 0; j < z.size(); ++j) {
    if (!std::isfinite(z[j])) {
      return absl::InvalidArgumentError(
          absl::StrCat("SparseK score z[", j, "] is not finite (", static_cast<double>(z[j]), ")"));
    }
  }
  return absl::OkStatus();
}

// S(τ) on a piece where u entries are at 1 and cf entries, summing to sum_f, are fractional.
// The fractional entries lie within 1 of τ, so sum_f − cf·τ is small and (for float scores)
// exact; adding u to it last keeps u from vanishing next to scores of 1e30.
double PieceSum(double u, double cf, double sum_f, double at) {
  return cf == 0 ? u : u + (sum_f - cf * at);
}

// τ on a piece [lo, hi] where S(lo) > k >= S(hi), solved relative to a finite end of the piece.
double SolvePiece(double u, double cf, double sum_f, double k, double lo, double hi) {
  if (cf == 0) return hi;  // Only reachable through rounding: S is flat, hi is the smallest τ.
  const double origin = std::isfinite(lo) ? lo : (std::isfinite(hi) ? hi : 0.0);
  return std::clamp(origin + (PieceSum(u, cf, sum_f, origin) - k) / cf, lo, hi);
}

// Sweeps τ downward from +∞ over the sorted breakpoints until S first exceeds k.
template <typename T>
double ThresholdBySort(std::span<const T> z, double k) {
  const size_t m = z.size();
  if (static_cast<double>(m) <= k) return kSparseKAllSelected;
  std::vector<double> v(z.begin(), z.end());
  std::sort(v.begin(), v.end(), std::greater<double>());
  // Entries [0, full_end) are at 1, [full_end, frac_end) fractional, the rest at 0.
  size_t full_end = 0, frac_end = 0;
  double sum_f = 0;
  double hi = kInf;
  while (true) {
    const double next_frac = frac_end < m ? v[frac_end] : -kInf;
    const double next_full = full_end < frac_end ? v[full_end] - 1 : -kInf;
    const double next = std::max(next_frac, next_full);
    const double u = static_cast<double>(full_end);
    const double cf = static_cast<double>(frac_end - full_end);
    // cf > 0 whenever next is -∞ (all entries at 1 would mean S = m > k earlier).
    const double s_next = next == -kInf ? kInf : PieceSum(u, cf, sum_f, next);
    if (s_next > k) return SolvePiece(u, cf, sum_f, k, next, hi);
    hi = next;
    if (next_frac >= next_full) {
      sum_f += v[frac_end++];
    } else {
      sum_f -= v[full_end++];
      if (full_end == frac_end) sum_f = 0;  // Drop accumulated rounding.
    }
  }
}

// Per iteration: S at a random breakpoint still inside (lo, hi) halves the interval's
// breakpoints in expectation; entries with no breakpoint left inside are folded into (u, cf,
// sum_f) and never looked at again, so the work is a geometric series: expected O(m).
double ThresholdBySelect(std::span<const float> z, double k) {
  const size_t m = z.size();
  if (static_cast<double>(m) <= k) return kSparseKAllSelected;
  std::vector<double> active(z.begin(), z.end());
  double lo = -kInf, hi = kInf;
  double u = 0, cf = 0, sum_f = 0;
  uint64_t rng = 0x9E3779B97F4A7C15ull;
  while (!active.empty()) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    const double zj = active[rng % active.size()];
    // Invariant: each active entry has at least one breakpoint strictly inside (lo, hi).
    const bool top_inside = zj > lo && zj < hi;
    const bool bottom_inside = zj - 1 > lo && zj - 1 < hi;
    const double pivot = top_inside && (!bottom_inside || (rng >> 40) & 1) ? zj : zj - 1;
    double s = PieceSum(u, cf, sum_f, pivot);
    for (double x : active) s += std::clamp(x - pivot, 0.0, 1.0);
    if (s > k) {
      lo = pivot;
    } else {
      hi = pivot;
    }
    size_t kept = 0;
    for (double x : active) {
      if (x <= lo) continue;  // 0 on the whole interval.
      if (x - 1 >= hi) {
        u += 1;
      } else if (x - 1 <= lo && x >= hi) {
        cf += 1;
        sum_f += x;
      } else {
        active[kept++] = x;
      }
    }
    active.resize(kept);
  }
  return SolvePiece(u, cf, sum_f, k, lo, hi);
}

}  // namespace

absl::StatusOr<double> SparseKThresholdSort(std::span<const float> z, double k) {
  if (absl::Status s = ValidateScoresAndBudget(z, k); !s.ok()) return s;
  return ThresholdBySort(z, k);
}

absl::StatusOr<double> SparseKThresholdSelect(std::span<const float> z, double k) {
  if (absl::Status s = ValidateScoresAndBudget(z, k); !s.ok()) return s;
  return ThresholdBySelect(z, k);
}

absl::StatusOr<double> SparseKThresholdReference(std::span<const double> z, double k) {
  if (absl::Status s = ValidateScoresAndBudget(z, k); !s.ok()) return s;
  return ThresholdBySort(z, k);
}

absl::Status SparseKPrefixThresholds(std::span<const float> z, double k, std::span<double> tau) {
  if (tau.size() != z.size()) {
    return absl::InvalidArgumentError(absl::StrCat("SparseKPrefixThresholds: tau has ", tau.size(),
                                                   " entries, z has ", z.size()));
  }
  if (absl::Status s = ValidateScoresAndBudget(z, k); !s.ok()) return s;
  // Min-heaps: the next full entry to turn fractional is the smallest (at τ = x − 1), the next
  // fractional entry to reach 0 is the smallest (at τ = x). Entries at 0 are dropped for good.
  std::priority_queue<double, std::vector<double>, std::greater<double>> full, frac;
  double sum_f = 0;
  double t = kSparseKAllSelected;
  for (size_t i = 0; i < z.size(); ++i) {
    const double x = z[i];
    if (x > t) {
      if (x - 1 > t) {
        full.push(x);
      } else {
        frac.push(x);
        sum_f += x;
      }
    }
    if (static_cast<double>(i + 1) <= k) {
      tau[i] = kSparseKAllSelected;
      continue;
    }
    // Adding an entry only raises S, so the new τ is >= t: walk right piece by piece.
    while (true) {
      const double u = static_cast<double>(full.size());
      const double cf = static_cast<double>(frac.size());
      const double next_full = full.empty() ? kInf : full.top() - 1;
      const double next_frac = frac.empty() ? kInf : frac.top();
      const double next = std::min(next_full, next_frac);
      const double s_at = PieceSum(u, cf, sum_f, t);
      if (s_at <= k) break;  // t already solves it (only while t is a breakpoint).
      const double s_next = next == kInf ? (cf == 0 ? u : -kInf) : PieceSum(u, cf, sum_f, next);
      if (s_next <= k) {
        t = SolvePiece(u, cf, sum_f, k, t, next);
        break;
      }
      t = next;
      if (next_full <= next_frac) {
        frac.push(full.top());
        sum_f += full.top();
        full.pop();
      } else {
        sum_f -= frac.top();
        frac.pop();
        if (frac.empty()) sum_f = 0;
      }
    }
    tau[i] = t;
  }
  return absl::OkStatus();
}

void SparseKProbabilities(std::span<const float> z, double tau, std::span<float> p) {
  const size_t n = std::min(z.size(), p.size());
  for (size_t j = 0; j < n; ++j) {
    p[j] = static_cast<float>(std::clamp(static_cast<double>(z[j]) - tau, 0.0, 1.0));
  }
}

std::vector<float> SparseKProbabilities(std::span<const float> z, double tau) {
  std::vector<float> p(z.size());
  SparseKProbabilities(z, tau, p);
  return p;
}

absl::StatusOr<std::vector<float>> SparseK(std::span<const float> z, double k) {
  absl::StatusOr<double> tau = SparseKThresholdSelect(z, k);
  if (!tau.ok()) return tau.status();
  return SparseKProbabilities(z, *tau);
}

}  // namespace longread::kernels
