#include "engine/memory/sparsek_memory.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "engine/model/kernel_rope.h"
#include "kernels/attention.h"
#include "kernels/ops.h"
#include "kernels/sparsek.h"

namespace longread::engine {
namespace {

constexpr int32_t kForever = std::numeric_limits<int32_t>::max();

// Makes room for n elements. The dense cache grows every call, so geometrically (amortized: no
// allocation on most tokens); SparseK's slot count is bounded, so exactly (doubling would double
// its resident memory).
template <typename T>
void Grow(std::vector<T>& v, int64_t n, bool geometric) {
  const int64_t capacity = static_cast<int64_t>(v.capacity());
  if (capacity >= n) return;
  v.reserve(geometric ? std::max(n, 2 * capacity) : n);
}

uint64_t Mix(uint64_t h, uint64_t v) {
  // FNV-1a over the value's bytes: stable across platforms and runs.
  for (int i = 0; i < 8; ++i) {
    h ^= (v >> (8 * i)) & 0xff;
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace

absl::Status MemoryConfig::Validate() const {
  if (block_tokens < 1) return absl::InvalidArgumentError("memory: block_tokens must be >= 1");
  if (!(task_weight >= 0.0f)) return absl::InvalidArgumentError("memory: task_weight must be >= 0");
  if (sinks < 0) return absl::InvalidArgumentError("memory: sinks must be >= 0");
  if (top_k < 0) return absl::InvalidArgumentError("memory: top_k must be >= 0");
  if (window < 1) return absl::InvalidArgumentError("memory: window must be >= 1");
  return absl::OkStatus();
}

uint64_t MemoryConfig::Hash() const {
  uint64_t h = 14695981039346656037ull;
  h = Mix(h, 1);  // version of this hash's field list
  h = Mix(h, static_cast<uint64_t>(sinks));
  h = Mix(h, static_cast<uint64_t>(top_k));
  h = Mix(h, static_cast<uint64_t>(window));
  h = Mix(h, static_cast<uint64_t>(position_mode));
  h = Mix(h, static_cast<uint64_t>(block_tokens));
  h = Mix(h, static_cast<uint64_t>(block_score));
  uint32_t weight_bits;
  std::memcpy(&weight_bits, &task_weight, sizeof(weight_bits));
  h = Mix(h, weight_bits);
  h = Mix(h, static_cast<uint64_t>(task_score));
  h = Mix(h, static_cast<uint64_t>(mask_mode));
  return h;
}

absl::Status SelectSegmentKeys(const MemoryConfig& config, bool frozen, int64_t P, int64_t n,
                               std::span<const int64_t> positions, std::span<const float> scores,
                               const float* token_scores, int64_t token_stride, int32_t* from,
                               int32_t* until, uint8_t* keep, BlockSelection& sel) {
  const int64_t M = static_cast<int64_t>(positions.size());
  const int64_t w = config.window;
  const int64_t B = config.block_tokens;
  const int32_t k_blocks = static_cast<int32_t>(std::min<int64_t>(config.top_k / B, kForever - 1));
  if (config.is_dense() || frozen) {
    sel.join.clear();
    // Nothing is ever evicted: every key stays visible from its own query on. (The general
    // path below computes the same intervals, at O((M + n) log) per layer and head.) A frozen
    // memory is in its answer phase: what it holds (recalled blocks included) stays visible to
    // the question and the answer.
    std::fill(from, from + M, 0);
    for (int64_t j = 0; j < n; ++j) from[M + j] = static_cast<int32_t>(j);
    std::fill(until, until + M + n, kForever);
    std::fill(keep, keep + M + n, uint8_t{1});
    return absl::OkStatus();
  }

  // Candidates for the top-k are whole blocks of B consecutive positions, in age order (ties
  // keep the older block). A block joins when its last position leaves the window; until then
  // all its keys stay visible (the window is block-aligned), afterwards until it is pushed out.
  sel.join.clear();
  sel.scores.clear();
  sel.block_size.clear();
  sel.key_block.assign(M + n, -1);
  int64_t current_block = -1;
  int32_t current_cand = -1;
  auto classify = [&](int64_t key, int64_t position, int32_t first_query, float score) {
    from[key] = first_query;
    if (position < config.sinks) {
      until[key] = kForever;
      keep[key] = 1;
      return;
    }
    const int64_t block = position / B;
    if (block != current_block) {
      current_block = block;
      const int64_t join = (block + 1) * B - 1 + w - P;  // query where the block leaves the window
      current_cand = -1;
      if (join <= n) {
        current_cand = static_cast<int32_t>(sel.join.size());
        sel.join.push_back(static_cast<int32_t>(std::max<int64_t>(join, 0)));
        sel.scores.push_back(config.block_score == BlockScore::kMax ? score : 0.0f);
        sel.block_size.push_back(0);
      }
    }
    if (current_cand < 0) {  // in the window for the rest of this segment and the next query
      until[key] = kForever;
      keep[key] = 1;
      return;
    }
    sel.key_block[key] = current_cand;
    float& block_score = sel.scores[current_cand];
    block_score =
        config.block_score == BlockScore::kMax ? std::max(block_score, score) : block_score + score;
    ++sel.block_size[current_cand];
  };
  for (int64_t c = 0; c < M; ++c) classify(c, positions[c], 0, scores[c]);
  for (int64_t j = 0; j < n; ++j) {
    classify(M + j, P + j, static_cast<int32_t>(j), token_scores[j * token_stride]);
  }
  const size_t n_cand = sel.join.size();
  if (config.block_score == BlockScore::kMean) {
    for (size_t c = 0; c < n_cand; ++c) sel.scores[c] /= static_cast<float>(sel.block_size[c]);
  }
  sel.exit.resize(n_cand);
  if (n_cand > 0) {
    if (auto st = kernels::TopKExitTimes(sel.scores, sel.join, k_blocks, sel.exit); !st.ok()) {
      return st;
    }
  }
  for (int64_t key = 0; key < M + n; ++key) {
    const int32_t c = sel.key_block[key];
    if (c < 0) continue;
    until[key] = sel.exit[c];
    keep[key] = sel.exit[c] == kForever;
  }
  return absl::OkStatus();
}

void AddTaskTerm(const MemoryConfig& config, const ModelConfig& model, const float* tq,
                 int64_t n_task, const float* k, int64_t n, float* scores,
                 std::vector<float>& logits, std::vector<float>& lse) {
  if (n_task == 0 || config.task_weight == 0.0f) return;
  const int64_t d = model.head_dim, G = model.n_kv_heads, H = model.n_heads, group = H / G;
  const int64_t rows = n_task * group;
  const float inv_sqrt_d = 1.0f / std::sqrt(static_cast<float>(d));
  logits.resize(rows * n);
  lse.resize(rows);
  for (int64_t g = 0; g < G; ++g) {
    // logits[r][j]: task query r (task token x query head of this group) against key j.
    for (int64_t t = 0; t < n_task; ++t) {
      for (int64_t h = 0; h < group; ++h) {
        const float* q = tq + (t * H + g * group + h) * d;
        float* row = logits.data() + (t * group + h) * n;
        for (int64_t j = 0; j < n; ++j) {
          const float* key = k + (j * G + g) * d;
          float dot = 0.0f;
          for (int64_t e = 0; e < d; ++e) dot += q[e] * key[e];
          row[j] = dot * inv_sqrt_d;
        }
      }
    }
    if (config.task_score == TaskScore::kMaxDot) {
      for (int64_t j = 0; j < n; ++j) {
        float best = -std::numeric_limits<float>::infinity();
        for (int64_t r = 0; r < rows; ++r) best = std::max(best, logits[r * n + j]);
        scores[j * G + g] += config.task_weight * best;
      }
      continue;
    }
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = logits.data() + r * n;
      const float top = *std::max_element(row, row + n);
      double sum = 0;
      for (int64_t j = 0; j < n; ++j) sum += std::exp(static_cast<double>(row[j] - top));
      lse[r] = top + static_cast<float>(std::log(sum));
    }
    const float log_uniform = std::log(static_cast<float>(n)) - std::log(static_cast<float>(rows));
    for (int64_t j = 0; j < n; ++j) {
      float top = -std::numeric_limits<float>::infinity();
      for (int64_t r = 0; r < rows; ++r) {
        top = std::max(top, logits[r * n + j] - lse[r]);
      }
      double sum = 0;
      for (int64_t r = 0; r < rows; ++r) {
        sum += std::exp(static_cast<double>(logits[r * n + j] - lse[r] - top));
      }
      scores[j * G + g] +=
          config.task_weight * (top + static_cast<float>(std::log(sum)) + log_uniform);
    }
  }
}

SparseKMemory::SparseKMemory(const ModelConfig& model, const MemoryConfig& config,
                             std::shared_ptr<const ScorerWeights> scorer)
    : model_(model),
      config_(config),
      scorer_(std::move(scorer)),
      n_kv_heads_(model.n_kv_heads),
      heads_(static_cast<size_t>(model.n_layers) * model.n_kv_heads),
      rotated_(heads_.size()) {
  if (!config_.is_dense()) {
    const int64_t capacity = config_.sinks + config_.top_k + config_.window + config_.block_tokens;
    for (auto& h : heads_) {
      h.positions.reserve(capacity);
      h.scores.reserve(capacity);
      h.keys.reserve(capacity * model.head_dim);
      h.values.reserve(capacity * model.head_dim);
    }
  }
}

int64_t SparseKMemory::slot_count(int32_t layer, int32_t kv_head) const {
  return static_cast<int64_t>(heads_[layer * n_kv_heads_ + kv_head].positions.size());
}

int64_t SparseKMemory::resident_bytes() const {
  int64_t bytes = 0;
  for (const auto& h : heads_) {
    bytes += h.positions.capacity() * sizeof(int64_t) + h.scores.capacity() * sizeof(float) +
             (h.keys.capacity() + h.values.capacity()) * sizeof(float);
  }
  for (const auto& r : rotated_) {
    bytes += r.keys.capacity() * sizeof(float) + r.positions.capacity() * sizeof(int64_t);
  }
  return bytes;
}

absl::Status SparseKMemory::AttendAndUpdate(const SegmentLayerInput& in, float* out,
                                            kernels::ThreadPool* pool) {
  const int64_t n = in.n_tokens;
  const int64_t d = model_.head_dim;
  const int32_t G = n_kv_heads_;
  const int32_t H = model_.n_heads;
  const int32_t group = H / G;
  const int64_t P = next_position_;
  const int64_t B = config_.block_tokens;
  const int32_t k_blocks = static_cast<int32_t>(std::min<int64_t>(config_.top_k / B, kForever - 1));
  if (n <= 0 || n >= kForever / 4) {
    return absl::InvalidArgumentError(absl::StrCat("memory: bad segment length ", n));
  }

  // Scores of the segment's keys, [n][G].
  s_.token_scores.assign(n * G, 0.0f);
  if (scorer_ != nullptr) {
    s_.query_pos.resize(n);
    for (int64_t i = 0; i < n; ++i) s_.query_pos[i] = P + i;
    ScoreTokens(*scorer_, in.layer, in.x_norm, n, s_.query_pos.data(), s_.token_scores.data());
  }
  AddTaskScores(in, s_.token_scores.data());

  int64_t max_slots = 0;
  for (int32_t g = 0; g < G; ++g) max_slots = std::max(max_slots, slot_count(in.layer, g));
  const int64_t n_keys = max_slots + n;
  // Scratch grows geometrically: the dense cache adds a key per token, and an exact-size assign
  // would reallocate on every one.
  Grow(s_.from, G * n_keys, true);
  Grow(s_.until, G * n_keys, true);
  Grow(s_.keep, G * n_keys, true);
  s_.from.assign(G * n_keys, 0);
  s_.until.assign(G * n_keys, 0);  // padding keys stay invisible
  s_.keep.assign(G * n_keys, 0);
  const bool soft =
      config_.mask_mode == MaskMode::kSoft && !config_.is_dense() && !frozen_ && k_blocks > 0;
  if (soft) {
    s_.gate_from.assign(G * n_keys, kForever);
    s_.gate_score.assign(G * n_keys, 0.0f);
    s_.tau.assign(n * G, -std::numeric_limits<float>::infinity());
  }
  s_.rope_pos.resize(n_keys);
  s_.query_pos.resize(n);
  s_.q_group.resize(group * d);

  for (int32_t g = 0; g < G; ++g) {
    HeadMemorySnapshot& hm = head(in.layer, g);
    const int64_t M = static_cast<int64_t>(hm.positions.size());
    int32_t* from = s_.from.data() + g * n_keys;
    int32_t* until = s_.until.data() + g * n_keys;
    uint8_t* keep = s_.keep.data() + g * n_keys;

    if (auto st = SelectSegmentKeys(config_, frozen_, P, n, hm.positions, hm.scores,
                                    s_.token_scores.data() + g, G, from, until, keep, s_.sel);
        !st.ok()) {
      return st;
    }
    const size_t n_cand = s_.sel.join.size();
    if (soft && n_cand > 0) {
      // Candidates join in age order, so the joins are non-decreasing and τ of every prefix of
      // them is τ for the queries from that join on.
      s_.tau_prefix.resize(n_cand);
      if (auto st = kernels::SparseKPrefixThresholds(s_.sel.scores, static_cast<double>(k_blocks),
                                                     s_.tau_prefix);
          !st.ok()) {
        return st;
      }
      size_t joined = 0;
      for (int64_t i = 0; i < n; ++i) {
        while (joined < n_cand && s_.sel.join[joined] <= i) ++joined;
        if (joined > 0) s_.tau[i * G + g] = static_cast<float>(s_.tau_prefix[joined - 1]);
      }
      for (int64_t key = 0; key < M + n; ++key) {
        const int32_t c = s_.sel.key_block[key];
        if (c < 0) continue;
        s_.gate_from[g * n_keys + key] = s_.sel.join[c];
        s_.gate_score[g * n_keys + key] = s_.sel.scores[c];
      }
    }
  }

  // Keys and values of memory ∪ segment, per head, in buffers that persist across calls: the
  // values in the head's own slots (the segment's appended, compacted again on fold below) and
  // the keys rotated in `rotated_`, where a slot is re-rotated only when its RoPE position
  // changed (new keys, and in slot order the slots behind an evicted one). Nothing is copied per
  // call but the segment itself. Rows up to n_keys exist (zero padding, invisible).
  const bool slot_order = config_.position_mode == PositionMode::kSlotOrder;
  s_.k_heads.resize(G);
  s_.v_heads.resize(G);
  for (int32_t g = 0; g < G; ++g) {
    HeadMemorySnapshot& hm = head(in.layer, g);
    RotatedKeys& rot = rotated_[in.layer * G + g];
    const int64_t M = static_cast<int64_t>(hm.positions.size());
    if (static_cast<int64_t>(rot.positions.size()) != M) rot.positions.assign(M, -1);
    Grow(hm.values, n_keys * d, config_.is_dense());
    Grow(rot.keys, n_keys * d, config_.is_dense());
    Grow(rot.positions, n_keys, config_.is_dense());
    hm.values.resize(n_keys * d);
    rot.keys.resize(n_keys * d);
    rot.positions.resize(n_keys, -1);
    for (int64_t j = 0; j < n; ++j) {
      std::memcpy(&hm.values[(M + j) * d], in.v + (j * G + g) * d, d * sizeof(float));
      rot.positions[M + j] = -1;
    }
    for (int64_t c = 0; c < M; ++c) s_.rope_pos[c] = slot_order ? c : hm.positions[c];
    for (int64_t j = 0; j < n; ++j) s_.rope_pos[M + j] = slot_order ? M + j : P + j;
    for (int64_t c0 = 0; c0 < M + n;) {
      if (rot.positions[c0] == s_.rope_pos[c0]) {
        ++c0;
        continue;
      }
      int64_t c1 = c0;
      for (; c1 < M + n && rot.positions[c1] != s_.rope_pos[c1]; ++c1) {
        const float* src = c1 < M ? &hm.keys[c1 * d] : in.k + ((c1 - M) * G + g) * d;
        std::memcpy(&rot.keys[c1 * d], src, d * sizeof(float));
        rot.positions[c1] = s_.rope_pos[c1];
      }
      kernels::Rope(&rot.keys[c0 * d], c1 - c0, 1, d, &s_.rope_pos[c0], model_.rope_theta,
                    KernelRope(model_.rope_style));
      c0 = c1;
    }
    s_.k_heads[g] = rot.keys.data();
    s_.v_heads[g] = hm.values.data();
  }
  // Queries of a KV head's group share its positions: P + i, or in slot order M_g + i. When
  // they agree for every head (always for the dense cache), one call rotates all of them.
  const int64_t first_slots = slot_count(in.layer, 0);
  bool same_positions = true;
  for (int32_t g = 1; g < G && slot_order; ++g) {
    same_positions &= slot_count(in.layer, g) == first_slots;
  }
  if (same_positions) {
    for (int64_t i = 0; i < n; ++i) s_.query_pos[i] = (slot_order ? first_slots : P) + i;
    kernels::Rope(in.q, n, H, d, s_.query_pos.data(), model_.rope_theta,
                  KernelRope(model_.rope_style));
  } else {
    for (int32_t g = 0; g < G; ++g) {
      const int64_t M = slot_count(in.layer, g);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t pos = M + i;
        kernels::Rope(in.q + (i * H + g * group) * d, 1, group, d, &pos, model_.rope_theta,
                      KernelRope(model_.rope_style));
      }
    }
  }

  kernels::AttentionArgs args;
  args.q = in.q;
  args.k_heads = s_.k_heads.data();
  args.v_heads = s_.v_heads.data();
  args.visible_from = s_.from.data();
  args.visible_until = s_.until.data();
  args.n_q = n;
  args.n_keys = n_keys;
  args.n_heads = H;
  args.n_kv_heads = G;
  args.head_dim = d;
  args.scale = 1.0f / std::sqrt(static_cast<float>(d));
  args.out = out;
  if (soft) {
    args.score = s_.gate_score.data();
    args.tau = s_.tau.data();
    args.gate_from = s_.gate_from.data();
  }
  kernels::Attention(args, pool);

  // Fold the segment into the memory: kept memory slots, then kept segment keys (both in
  // position order, so the slots stay sorted). hm.values and the rotated keys already hold the
  // segment's rows at M + j.
  for (int32_t g = 0; g < G; ++g) {
    HeadMemorySnapshot& hm = head(in.layer, g);
    RotatedKeys& rot = rotated_[in.layer * G + g];
    const int64_t M = static_cast<int64_t>(hm.positions.size());
    const uint8_t* keep = s_.keep.data() + g * n_keys;
    if (archive_ != nullptr && archive_status_.ok()) ArchiveEvicted(in, g, M, keep);
    auto move_row = [d](std::vector<float>& rows, int64_t to, int64_t from_row) {
      std::memmove(&rows[to * d], &rows[from_row * d], d * sizeof(float));
    };
    int64_t kept = 0;
    for (int64_t c = 0; c < M; ++c) {
      if (!keep[c]) continue;
      if (kept != c) {
        hm.positions[kept] = hm.positions[c];
        hm.scores[kept] = hm.scores[c];
        move_row(hm.keys, kept, c);
        move_row(hm.values, kept, c);
        move_row(rot.keys, kept, c);
        rot.positions[kept] = rot.positions[c];
      }
      ++kept;
    }
    int64_t added = 0;
    for (int64_t j = 0; j < n; ++j) added += keep[M + j];
    Grow(hm.keys, (kept + added) * d, config_.is_dense());
    Grow(hm.positions, kept + added, config_.is_dense());
    Grow(hm.scores, kept + added, config_.is_dense());
    hm.positions.resize(kept + added);
    hm.scores.resize(kept + added);
    hm.keys.resize((kept + added) * d);
    for (int64_t j = 0; j < n; ++j) {
      if (!keep[M + j]) continue;
      hm.positions[kept] = P + j;
      hm.scores[kept] = s_.token_scores[j * G + g];
      std::memcpy(&hm.keys[kept * d], in.k + (j * G + g) * d, d * sizeof(float));
      if (kept != M + j) {
        move_row(hm.values, kept, M + j);
        move_row(rot.keys, kept, M + j);
        rot.positions[kept] = rot.positions[M + j];
      }
      ++kept;
    }
    hm.values.resize(kept * d);
    rot.keys.resize(kept * d);
    rot.positions.resize(kept);
  }
  return absl::OkStatus();
}

void SparseKMemory::ArchiveEvicted(const SegmentLayerInput& in, int32_t g, int64_t M,
                                   const uint8_t* keep) {
  const HeadMemorySnapshot& hm = head(in.layer, g);
  const int64_t d = model_.head_dim, G = n_kv_heads_, B = config_.block_tokens;
  const int64_t P = next_position_;
  ArchivedBlock block;
  auto flush = [&] {
    if (block.positions.empty()) return;
    if (auto s = archive_->Put(std::move(block)); !s.ok()) archive_status_ = s;
    block = ArchivedBlock();
  };
  for (int64_t key = 0; key < M + in.n_tokens; ++key) {
    if (keep[key]) continue;
    const bool from_memory = key < M;
    const int64_t pos = from_memory ? hm.positions[key] : P + (key - M);
    if (!block.positions.empty() && pos / B != block.block_id) flush();
    if (!archive_status_.ok()) return;
    if (block.positions.empty()) {
      block.layer = in.layer;
      block.kv_head = g;
      block.block_id = pos / B;
    }
    const float* k = from_memory ? &hm.keys[key * d] : in.k + ((key - M) * G + g) * d;
    const float* v = from_memory ? &hm.values[key * d] : in.v + ((key - M) * G + g) * d;
    block.positions.push_back(pos);
    block.scores.push_back(from_memory ? hm.scores[key] : s_.token_scores[(key - M) * G + g]);
    block.keys.insert(block.keys.end(), k, k + d);
    block.values.insert(block.values.end(), v, v + d);
  }
  flush();
}

int64_t SparseKMemory::InsertRecalled(int32_t layer, int32_t g,
                                      const std::vector<ArchivedBlock>& blocks) {
  HeadMemorySnapshot& hm = head(layer, g);
  const int64_t d = model_.head_dim;
  HeadMemorySnapshot merged;
  size_t c = 0;
  int64_t added = 0;
  auto take_slot = [&](size_t i) {
    merged.positions.push_back(hm.positions[i]);
    merged.scores.push_back(hm.scores[i]);
    merged.keys.insert(merged.keys.end(), &hm.keys[i * d], &hm.keys[i * d] + d);
    merged.values.insert(merged.values.end(), &hm.values[i * d], &hm.values[i * d] + d);
  };
  for (const ArchivedBlock& b : blocks) {
    for (size_t t = 0; t < b.positions.size(); ++t) {
      while (c < hm.positions.size() && hm.positions[c] < b.positions[t]) take_slot(c++);
      if (c < hm.positions.size() && hm.positions[c] == b.positions[t]) continue;
      merged.positions.push_back(b.positions[t]);
      merged.scores.push_back(b.scores[t]);
      merged.keys.insert(merged.keys.end(), &b.keys[t * d], &b.keys[t * d] + d);
      merged.values.insert(merged.values.end(), &b.values[t * d], &b.values[t * d] + d);
      ++added;
    }
  }
  while (c < hm.positions.size()) take_slot(c++);
  hm = std::move(merged);
  rotated_[layer * n_kv_heads_ + g] = RotatedKeys();  // slots moved: rotate again
  return added;
}

absl::Status SparseKMemory::Rewind(int64_t position) {
  if (!frozen_ && !config_.is_dense()) {
    return absl::FailedPreconditionError("memory: rewinding needs frozen eviction");
  }
  if (position < 0 || position > next_position_) {
    return absl::InvalidArgumentError(absl::StrCat("memory: cannot rewind to position ", position,
                                                   " (next position ", next_position_, ")"));
  }
  const int64_t d = model_.head_dim;
  for (size_t h = 0; h < heads_.size(); ++h) {
    HeadMemorySnapshot& hm = heads_[h];
    const auto first_dropped = std::lower_bound(hm.positions.begin(), hm.positions.end(), position);
    const size_t kept = static_cast<size_t>(first_dropped - hm.positions.begin());
    hm.positions.resize(kept);
    hm.scores.resize(kept);
    hm.keys.resize(kept * d);
    hm.values.resize(kept * d);
    // The kept slots did not move, so their rotations stay valid.
    RotatedKeys& rot = rotated_[h];
    if (rot.positions.size() > kept) {
      rot.positions.resize(kept);
      rot.keys.resize(kept * d);
    }
  }
  next_position_ = position;
  return absl::OkStatus();
}

int64_t SparseKMemory::max_slot_count() const {
  size_t most = 0;
  for (const auto& h : heads_) most = std::max(most, h.positions.size());
  return static_cast<int64_t>(most);
}

void SparseKMemory::SetTaskQueries(std::vector<std::vector<float>> queries, int64_t n_task) {
  task_queries_ = std::move(queries);
  n_task_ = n_task;
}

void SparseKMemory::AddTaskScores(const SegmentLayerInput& in, float* scores) {
  if (n_task_ == 0 || config_.task_weight == 0.0f || task_queries_.empty()) return;
  AddTaskTerm(config_, model_, task_queries_[in.layer].data(), n_task_, in.k, in.n_tokens, scores,
              s_.task_logits, s_.task_lse);
}

void SparseKMemory::ExportTo(MemorySnapshot* snapshot) const {
  snapshot->n_layers = model_.n_layers;
  snapshot->n_kv_heads = model_.n_kv_heads;
  snapshot->head_dim = model_.head_dim;
  snapshot->config_hash = config_.Hash();
  snapshot->token_offset = next_position_;
  snapshot->heads = heads_;
}

absl::Status SparseKMemory::ImportFrom(const MemorySnapshot& snapshot) {
  if (snapshot.n_layers != model_.n_layers || snapshot.n_kv_heads != model_.n_kv_heads ||
      snapshot.head_dim != model_.head_dim ||
      snapshot.heads.size() != static_cast<size_t>(model_.n_layers) * model_.n_kv_heads) {
    return absl::FailedPreconditionError("memory: snapshot shape does not match the model");
  }
  if (snapshot.config_hash != config_.Hash()) {
    return absl::FailedPreconditionError(
        absl::StrCat("memory: snapshot was taken with memory config ", snapshot.config_hash,
                     ", this run uses ", config_.Hash()));
  }
  const int64_t capacity = config_.sinks + config_.top_k + config_.window + config_.block_tokens;
  for (const auto& h : snapshot.heads) {
    const size_t m = h.positions.size();
    if (h.scores.size() != m || h.keys.size() != m * model_.head_dim ||
        h.values.size() != m * model_.head_dim ||
        (!config_.is_dense() && static_cast<int64_t>(m) > capacity) ||
        !std::is_sorted(h.positions.begin(), h.positions.end()) ||
        (m > 0 && (h.positions.front() < 0 || h.positions.back() >= snapshot.token_offset))) {
      return absl::DataLossError("memory: snapshot slots are inconsistent");
    }
  }
  heads_ = snapshot.heads;
  for (auto& r : rotated_) r = RotatedKeys();
  next_position_ = snapshot.token_offset;
  return absl::OkStatus();
}

}  // namespace longread::engine
