#include "engine/memory/block_archive.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "kernels/half.h"

namespace longread::engine {

BlockBounds ComputeBounds(const ArchivedBlock& block, int64_t head_dim) {
  BlockBounds b;
  b.key_min.assign(head_dim, std::numeric_limits<float>::infinity());
  b.key_max.assign(head_dim, -std::numeric_limits<float>::infinity());
  for (size_t t = 0; t < block.positions.size(); ++t) {
    for (int64_t e = 0; e < head_dim; ++e) {
      const float x = block.keys[t * head_dim + e];
      b.key_min[e] = std::min(b.key_min[e], x);
      b.key_max[e] = std::max(b.key_max[e], x);
    }
  }
  return b;
}

void WidenRows(const Bf16BlockRows& rows, ArchivedBlock* out) {
  out->layer = rows.layer;
  out->kv_head = rows.kv_head;
  out->block_id = rows.block_id;
  out->positions.assign(rows.positions.begin(), rows.positions.end());
  out->scores.assign(rows.scores.begin(), rows.scores.end());
  for (auto [from, to] : {std::pair{rows.keys, &out->keys}, std::pair{rows.values, &out->values}}) {
    to->resize(from.size());
    for (size_t i = 0; i < from.size(); ++i) (*to)[i] = kernels::BFloat16ToFloat(from[i]);
  }
}

BlockBounds ComputeBounds(const Bf16BlockRows& rows, int64_t head_dim) {
  // The same comparisons in the same order as the fp32 overload, on the same (widened) values.
  BlockBounds b;
  b.key_min.assign(head_dim, std::numeric_limits<float>::infinity());
  b.key_max.assign(head_dim, -std::numeric_limits<float>::infinity());
  float* lo = b.key_min.data();
  float* hi = b.key_max.data();
  for (size_t t = 0; t < rows.positions.size(); ++t) {
    const uint16_t* k = rows.keys.data() + t * head_dim;
    for (int64_t e = 0; e < head_dim; ++e) {
      const float x = std::bit_cast<float>(uint32_t{k[e]} << 16);
      lo[e] = std::min(lo[e], x);
      hi[e] = std::max(hi[e], x);
    }
  }
  return b;
}

absl::Status BlockArchive::PutRows(std::span<const Bf16BlockRows> blocks, size_t* n_put) {
  std::vector<ArchivedBlock> widened(blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) WidenRows(blocks[i], &widened[i]);
  return PutBatch(widened, n_put);
}

float RecallScore(const BlockBounds& bounds, std::span<const float> queries, int64_t n_queries,
                  int64_t head_dim) {
  float best = -std::numeric_limits<float>::infinity();
  for (int64_t q = 0; q < n_queries; ++q) {
    const float* v = queries.data() + q * head_dim;
    float bound = 0.0f;
    for (int64_t e = 0; e < head_dim; ++e) {
      bound += std::max(v[e] * bounds.key_min[e], v[e] * bounds.key_max[e]);
    }
    best = std::max(best, bound);
  }
  return best;
}

std::vector<double> BlockAttentionPeak(std::span<const float> queries, int64_t n_rows,
                                       int64_t head_dim, std::span<const float> held_keys,
                                       int64_t n_held, const std::vector<ArchivedBlock>& candidates,
                                       std::span<const int64_t> held_block_ids,
                                       std::map<int64_t, double>* held_peaks) {
  const bool want_held =
      held_peaks != nullptr && held_block_ids.size() == static_cast<size_t>(n_held);
  std::vector<double> mass(candidates.size(), 0.0);
  int64_t n_candidate_keys = 0;
  for (const ArchivedBlock& b : candidates)
    n_candidate_keys += static_cast<int64_t>(b.positions.size());
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  std::vector<float> logits(n_held + n_candidate_keys);
  auto dot = [head_dim](const float* a, const float* b) {
    float acc = 0.0f;
    for (int64_t e = 0; e < head_dim; ++e) acc += a[e] * b[e];
    return acc;
  };
  for (int64_t r = 0; r < n_rows; ++r) {
    const float* q = queries.data() + r * head_dim;
    float top = -std::numeric_limits<float>::infinity();
    int64_t at = 0;
    for (int64_t j = 0; j < n_held; ++j, ++at) {
      logits[at] = dot(q, held_keys.data() + j * head_dim) * scale;
      top = std::max(top, logits[at]);
    }
    for (const ArchivedBlock& b : candidates) {
      for (size_t t = 0; t < b.positions.size(); ++t, ++at) {
        logits[at] = dot(q, b.keys.data() + t * head_dim) * scale;
        top = std::max(top, logits[at]);
      }
    }
    if (at == 0) break;
    double total = 0.0;
    for (int64_t j = 0; j < at; ++j) {
      logits[j] = std::exp(logits[j] - top);
      total += logits[j];
    }
    if (want_held) {
      for (int64_t j = 0; j < n_held;) {
        const int64_t id = held_block_ids[j];
        double block = 0.0;
        for (; j < n_held && held_block_ids[j] == id; ++j) block += logits[j];
        if (id < 0) continue;
        double& peak = (*held_peaks)[id];
        peak = std::max(peak, block / total);
      }
    }
    at = n_held;
    for (size_t c = 0; c < candidates.size(); ++c) {
      double block = 0.0;
      for (size_t t = 0; t < candidates[c].positions.size(); ++t) block += logits[at++];
      mass[c] = std::max(mass[c], block / total);
    }
  }
  return mass;
}

std::vector<int64_t> TopRIndices(std::span<const float> scores, int64_t r) {
  std::vector<int64_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  const int64_t keep = std::min<int64_t>(r, static_cast<int64_t>(order.size()));
  std::partial_sort(order.begin(), order.begin() + keep, order.end(), [&](int64_t a, int64_t b) {
    return scores[a] != scores[b] ? scores[a] > scores[b] : a < b;
  });
  order.resize(keep);
  std::sort(order.begin(), order.end());
  return order;
}

InMemoryBlockArchive::InMemoryBlockArchive(int32_t n_layers, int32_t n_kv_heads, int64_t head_dim)
    : n_kv_heads_(n_kv_heads),
      head_dim_(head_dim),
      heads_(static_cast<size_t>(n_layers) * n_kv_heads) {}

absl::Status InMemoryBlockArchive::Put(ArchivedBlock block) {
  const size_t index = static_cast<size_t>(block.layer) * n_kv_heads_ + block.kv_head;
  if (block.layer < 0 || block.kv_head < 0 || block.kv_head >= n_kv_heads_ ||
      index >= heads_.size() || block.positions.empty() ||
      block.keys.size() != block.positions.size() * head_dim_ ||
      block.values.size() != block.keys.size()) {
    return absl::InvalidArgumentError(absl::StrCat("archive: malformed block ", block.block_id));
  }
  bytes_ += static_cast<int64_t>(block.keys.size() + block.values.size() + block.scores.size()) *
                sizeof(float) +
            static_cast<int64_t>(block.positions.size()) * sizeof(int64_t);
  BlockBounds bounds = ComputeBounds(block, head_dim_);
  heads_[index].push_back({std::move(block), std::move(bounds)});
  return absl::OkStatus();
}

absl::StatusOr<std::vector<ArchivedBlock>> InMemoryBlockArchive::Recall(
    int32_t layer, int32_t kv_head, std::span<const float> queries, int64_t n_queries, int64_t r) {
  const size_t index = static_cast<size_t>(layer) * n_kv_heads_ + kv_head;
  if (index >= heads_.size()) return absl::InvalidArgumentError("archive: no such head");
  const auto& entries = heads_[index];
  std::vector<float> scores(entries.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    scores[i] = RecallScore(entries[i].bounds, queries, n_queries, head_dim_);
  }
  std::vector<ArchivedBlock> out;
  for (int64_t i : TopRIndices(scores, r)) out.push_back(entries[i].block);
  std::sort(out.begin(), out.end(),
            [](const auto& a, const auto& b) { return a.positions[0] < b.positions[0]; });
  return out;
}

absl::StatusOr<std::vector<ArchivedBlock>> InMemoryBlockArchive::Fetch(
    int32_t layer, int32_t kv_head, std::span<const int64_t> block_ids) {
  const size_t index = static_cast<size_t>(layer) * n_kv_heads_ + kv_head;
  if (layer < 0 || kv_head < 0 || kv_head >= n_kv_heads_ || index >= heads_.size()) {
    return absl::InvalidArgumentError("archive: no such head");
  }
  std::vector<ArchivedBlock> out;
  for (const Entry& e : heads_[index]) {
    if (std::find(block_ids.begin(), block_ids.end(), e.block.block_id) != block_ids.end()) {
      out.push_back(e.block);
    }
  }
  std::sort(out.begin(), out.end(),
            [](const auto& a, const auto& b) { return a.positions[0] < b.positions[0]; });
  return out;
}

}  // namespace longread::engine
