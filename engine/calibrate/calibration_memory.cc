#include "engine/calibrate/calibration_memory.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "engine/model/kernel_rope.h"
#include "kernels/dtype.h"
#include "kernels/ops.h"

namespace longread::engine {
namespace {

kernels::MatrixView F32Matrix(const float* data, int64_t rows, int64_t cols) {
  kernels::MatrixView m;
  m.type = kernels::DType::kF32;
  m.rows = rows;
  m.cols = cols;
  m.data = data;
  return m;
}

}  // namespace

CalibrationMemory::CalibrationMemory(const ModelConfig& model)
    : model_(model),
      heads_(static_cast<size_t>(model.n_layers) * model.n_kv_heads),
      x_norm_(model.n_layers),
      scratch_(model.n_heads),
      values_t_(model.n_kv_heads) {}

void CalibrationMemory::Reset() {
  next_position_ = 0;
  for (Head& h : heads_) {
    h.keys.clear();
    h.values.clear();
    h.later_mass.clear();
    h.self_mass.clear();
  }
  for (auto& x : x_norm_) x.clear();
}

double CalibrationMemory::MeanLaterAttention(int32_t layer, int32_t kv_head,
                                             int64_t position) const {
  const int64_t later_queries = next_position_ - 1 - position;
  if (later_queries <= 0) return 0.0;
  const int32_t group = model_.n_heads / model_.n_kv_heads;
  return later_mass(layer, kv_head)[position] / (static_cast<double>(group) * later_queries);
}

absl::Status CalibrationMemory::AttendAndUpdate(const SegmentLayerInput& in, float* out,
                                                kernels::ThreadPool* pool) {
  const int64_t n = in.n_tokens;
  const int64_t d = model_.head_dim;
  const int32_t G = model_.n_kv_heads, H = model_.n_heads, group = H / G;
  const int64_t P = next_position_;
  const int64_t n_keys = P + n;
  if (n <= 0 || in.layer < 0 || in.layer >= model_.n_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("calibration memory: bad segment (layer ", in.layer, ", tokens ", n, ")"));
  }
  Head* heads = &heads_[in.layer * G];
  if (static_cast<int64_t>(heads[0].later_mass.size()) != P) {
    return absl::FailedPreconditionError(absl::StrCat("calibration memory: layer ", in.layer,
                                                      " holds ", heads[0].later_mass.size(),
                                                      " tokens, expected ", P));
  }
  x_norm_[in.layer].insert(x_norm_[in.layer].end(), in.x_norm, in.x_norm + n * model_.d_model);

  positions_.resize(n);
  for (int64_t i = 0; i < n; ++i) positions_[i] = P + i;
  const kernels::RopeStyle style = KernelRope(model_.rope_style);
  kernels::Rope(in.q, n, H, d, positions_.data(), model_.rope_theta, style);
  for (int32_t g = 0; g < G; ++g) {
    Head& h = heads[g];
    h.keys.resize(n_keys * d);
    h.values.resize(n_keys * d);
    for (int64_t i = 0; i < n; ++i) {
      std::memcpy(&h.keys[(P + i) * d], in.k + (i * G + g) * d, d * sizeof(float));
      std::memcpy(&h.values[(P + i) * d], in.v + (i * G + g) * d, d * sizeof(float));
    }
    kernels::Rope(&h.keys[P * d], n, 1, d, positions_.data(), model_.rope_theta, style);
    h.later_mass.resize(n_keys, 0.0);
    h.self_mass.resize(n_keys, 0.0);
    // The probability-times-value GEMM wants values as [head_dim][keys].
    std::vector<float>& vt = values_t_[g];
    vt.resize(d * n_keys);
    for (int64_t j = 0; j < n_keys; ++j) {
      for (int64_t e = 0; e < d; ++e) vt[e * n_keys + j] = h.values[j * d + e];
    }
  }

  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  auto attend_head = [&](int64_t qh) {
    const int32_t g = static_cast<int32_t>(qh) / group;
    HeadScratch& s = scratch_[qh];
    s.q.resize(n * d);
    for (int64_t i = 0; i < n; ++i) std::memcpy(&s.q[i * d], in.q + (i * H + qh) * d, d * 4);
    s.probs.resize(n * n_keys);
    kernels::MatMul(F32Matrix(heads[g].keys.data(), n_keys, d), s.q.data(), n, s.probs.data(),
                    nullptr);
    s.later.assign(n_keys, 0.0);
    s.self.assign(n_keys, 0.0);
    for (int64_t i = 0; i < n; ++i) {
      float* row = &s.probs[i * n_keys];
      const int64_t visible = P + i + 1;  // causal: keys 0 .. P + i
      float max_logit = -INFINITY;
      for (int64_t j = 0; j < visible; ++j) {
        row[j] *= scale;
        max_logit = std::max(max_logit, row[j]);
      }
      double total = 0;
      for (int64_t j = 0; j < visible; ++j) {
        row[j] = std::exp(row[j] - max_logit);
        total += row[j];
      }
      const float inv = static_cast<float>(1.0 / total);
      for (int64_t j = 0; j < visible; ++j) row[j] *= inv;
      // The query's own key (j = P + i) counts as self, not as "later" attention.
      for (int64_t j = 0; j + 1 < visible; ++j) s.later[j] += row[j];
      s.self[visible - 1] += row[visible - 1];
      std::fill(row + visible, row + n_keys, 0.0f);
    }
    s.out.resize(n * d);
    kernels::MatMul(F32Matrix(values_t_[g].data(), d, n_keys), s.probs.data(), n, s.out.data(),
                    nullptr);
    for (int64_t i = 0; i < n; ++i) std::memcpy(out + (i * H + qh) * d, &s.out[i * d], d * 4);
  };
  if (pool != nullptr) {
    pool->ParallelFor(H, [&](int64_t begin, int64_t end) {
      for (int64_t qh = begin; qh < end; ++qh) attend_head(qh);
    });
  } else {
    for (int64_t qh = 0; qh < H; ++qh) attend_head(qh);
  }
  // Summed in head order: the result does not depend on the number of threads.
  for (int32_t qh = 0; qh < H; ++qh) {
    Head& h = heads[qh / group];
    const HeadScratch& s = scratch_[qh];
    for (int64_t j = 0; j < n_keys; ++j) {
      h.later_mass[j] += s.later[j];
      h.self_mass[j] += s.self[j];
    }
  }
  return absl::OkStatus();
}

}  // namespace longread::engine
