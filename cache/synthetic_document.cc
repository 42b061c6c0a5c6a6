#include "cache/synthetic_document.h"

#include <algorithm>
#include <cmath>
#include <utility>

namespace longread::cache {
namespace {

uint64_t Mix(uint64_t x) {  // splitmix64 finalizer
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

double Uniform(uint64_t h) { return (static_cast<double>(h >> 11) + 0.5) * 0x1.0p-53; }

float Gaussian(uint64_t h) {
  const double u1 = Uniform(Mix(h)), u2 = Uniform(Mix(h ^ 0x1234567ull));
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}

}  // namespace

SyntheticDocument::SyntheticDocument(SyntheticShape shape, uint64_t seed)
    : shape_(std::move(shape)), seed_(seed) {
  const size_t n_heads = static_cast<size_t>(shape_.n_layers) * shape_.n_kv_heads;
  top_k_.resize(n_heads);
  key_scale_.resize(n_heads);
  for (size_t h = 0; h < n_heads; ++h) {
    for (int32_t d = 0; d < shape_.head_dim; ++d) {
      const uint64_t r = Mix(seed_ ^ Mix(h * 1000003 + d));
      // Log-normal scales, and one dim in 16 an outlier 8x larger, as in real pre-RoPE keys.
      float scale = static_cast<float>(std::exp(0.5 * Gaussian(r)));
      if (r % 16 == 0) scale *= 8.0f;
      key_scale_[h].push_back(scale);
    }
  }
}

float SyntheticDocument::Score(size_t head, int64_t position) const {
  return Gaussian(Mix(seed_ ^ Mix(head * 0x100000001b3ull ^ static_cast<uint64_t>(position))));
}

void SyntheticDocument::AdvanceTo(int64_t segment_index) {
  for (; segment_index_ < segment_index; ++segment_index_) {
    // Positions leaving the window this segment become top-k candidates.
    const int64_t old_end =
        std::max<int64_t>(shape_.sink, segment_index_ * shape_.segment_len - shape_.window);
    const int64_t new_end =
        std::max<int64_t>(shape_.sink, (segment_index_ + 1) * shape_.segment_len - shape_.window);
    for (size_t h = 0; h < top_k_.size(); ++h) {
      std::vector<std::pair<float, int64_t>>& kept = top_k_[h];
      for (int64_t p = old_end; p < new_end; ++p) kept.emplace_back(Score(h, p), p);
      if (kept.size() > static_cast<size_t>(shape_.top_k)) {
        auto better = [](const std::pair<float, int64_t>& a, const std::pair<float, int64_t>& b) {
          return a.first != b.first ? a.first > b.first : a.second < b.second;
        };
        std::nth_element(kept.begin(), kept.begin() + shape_.top_k, kept.end(), better);
        kept.resize(shape_.top_k);
      }
    }
  }
}

engine::MemorySnapshot SyntheticDocument::Snapshot() const {
  engine::MemorySnapshot s;
  s.model_fingerprint = shape_.model_fingerprint;
  s.config_hash = shape_.config_hash;
  s.n_layers = shape_.n_layers;
  s.n_kv_heads = shape_.n_kv_heads;
  s.head_dim = shape_.head_dim;
  s.segment_index = segment_index_;
  s.token_offset = segment_index_ * shape_.segment_len;
  s.score_origin = 0.25 * static_cast<double>(segment_index_);
  for (int64_t i = 0; i < segment_index_ % 3; ++i) {
    s.pending_tokens.push_back(static_cast<int32_t>(Mix(seed_ + segment_index_ + i) % 49152));
  }
  if (segment_index_ % 2 == 1) s.pending_utf8 = "\xe2\x82";
  const int64_t window_begin = std::max<int64_t>(shape_.sink, s.token_offset - shape_.window);
  const size_t d = static_cast<size_t>(shape_.head_dim);
  s.heads.resize(top_k_.size());
  for (size_t h = 0; h < top_k_.size(); ++h) {
    engine::HeadMemorySnapshot& head = s.heads[h];
    for (int64_t p = 0; p < std::min<int64_t>(shape_.sink, s.token_offset); ++p) {
      head.positions.push_back(p);
    }
    const size_t first_top_k = head.positions.size();
    for (const auto& [score, p] : top_k_[h]) head.positions.push_back(p);
    std::sort(head.positions.begin() + first_top_k, head.positions.end());
    for (int64_t p = window_begin; p < s.token_offset; ++p) head.positions.push_back(p);
    head.keys.resize(head.positions.size() * d);
    head.values.resize(head.positions.size() * d);
    for (size_t i = 0; i < head.positions.size(); ++i) {
      const int64_t p = head.positions[i];
      head.scores.push_back(Score(h, p) - static_cast<float>(s.score_origin));
      const uint64_t base = Mix(seed_ ^ Mix(h * 0x9e3779b97f4a7c15ull + static_cast<uint64_t>(p)));
      for (size_t j = 0; j < d; ++j) {
        head.keys[i * d + j] = key_scale_[h][j] * Gaussian(base + 2 * j);
        head.values[i * d + j] = 0.5f * Gaussian(base + 2 * j + 1);
      }
    }
  }
  return s;
}

}  // namespace longread::cache
