#include "engine/memory/cuda_sparsek_memory.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/half.h"

namespace longread::engine {
namespace {

namespace cu = kernels::cuda;
using cu::Bf16;

constexpr int32_t kForever = std::numeric_limits<int32_t>::max();

#define LONGREAD_RETURN_IF_ERROR(expr)      \
  do {                                      \
    if (absl::Status s = (expr); !s.ok()) { \
      return s;                             \
    }                                       \
  } while (0)

kernels::RopeStyle KernelRope(RopeStyle style) {
  return style == RopeStyle::kHalf ? kernels::RopeStyle::kHalf : kernels::RopeStyle::kInterleaved;
}

absl::Status Reserve(cu::DeviceBuffer& buffer, int64_t bytes) {
  if (buffer.bytes() >= bytes) return absl::OkStatus();
  auto b = cu::DeviceBuffer::Allocate(bytes);
  if (!b.ok()) return b.status();
  buffer = std::move(*b);
  return absl::OkStatus();
}

// Downloads n bf16 values and widens them on the host.
absl::Status DownloadFloats(cu::Context& ctx, const Bf16* device, int64_t n,
                            std::vector<uint16_t>& bits, std::vector<float>& out) {
  bits.resize(n);
  out.resize(n);
  LONGREAD_RETURN_IF_ERROR(cu::Download(ctx, device, n * 2, bits.data()));
  for (int64_t i = 0; i < n; ++i) out[i] = kernels::BFloat16ToFloat(bits[i]);
  return absl::OkStatus();
}

absl::Status UploadAsBf16(cu::Context& ctx, const float* host, int64_t n,
                          std::vector<uint16_t>& bits, Bf16* device) {
  bits.resize(n);
  for (int64_t i = 0; i < n; ++i) bits[i] = kernels::FloatToBFloat16(host[i]);
  return cu::Upload(ctx, bits.data(), n * 2, device);
}

}  // namespace

CudaSparseKMemory::CudaSparseKMemory(cu::Context* ctx, const ModelConfig& model,
                                     const MemoryConfig& config,
                                     std::shared_ptr<const ScorerWeights> scorer)
    : ctx_(ctx),
      model_(model),
      config_(config),
      scorer_(std::move(scorer)),
      n_kv_heads_(model.n_kv_heads),
      meta_(static_cast<size_t>(model.n_layers) * model.n_kv_heads),
      keys_(model.n_layers),
      values_(model.n_layers) {}

absl::StatusOr<std::unique_ptr<CudaSparseKMemory>> CudaSparseKMemory::Create(
    cu::Context* ctx, const ModelConfig& model, const MemoryConfig& config,
    std::shared_ptr<const ScorerWeights> scorer) {
  LONGREAD_RETURN_IF_ERROR(config.Validate());
  if (config.mask_mode == MaskMode::kSoft && !config.is_dense()) {
    return absl::UnimplementedError(
        "cuda memory: mask mode 'soft' has no CUDA attention kernel yet; use 'hard'");
  }
  if (model.head_dim != 64 || model.n_heads % model.n_kv_heads != 0) {
    return absl::UnimplementedError("cuda memory: only head_dim 64 has an attention kernel");
  }
  std::unique_ptr<CudaSparseKMemory> m(new CudaSparseKMemory(ctx, model, config, scorer));
  if (!config.is_dense()) {
    LONGREAD_RETURN_IF_ERROR(
        m->EnsureCapacity(config.sinks + config.top_k + config.window + config.block_tokens));
  }
  return m;
}

int64_t CudaSparseKMemory::max_slot_count() const {
  size_t most = 0;
  for (const auto& h : meta_) most = std::max(most, h.positions.size());
  return static_cast<int64_t>(most);
}

int64_t CudaSparseKMemory::resident_bytes() const {
  int64_t bytes = 0;
  for (size_t l = 0; l < keys_.size(); ++l) bytes += keys_[l].bytes() + values_[l].bytes();
  for (const cu::DeviceBuffer* b :
       {&spare_keys_, &spare_values_, &rotated_, &staging_keys_, &staging_values_, &from_, &until_,
        &rope_positions_, &query_positions_, &src_rows_, &dst_rows_, &task_logits_, &task_lse_,
        &task_out_}) {
    bytes += b->bytes();
  }
  return bytes;
}

absl::Status CudaSparseKMemory::EnsureCapacity(int64_t slots) {
  if (slots <= capacity_) return absl::OkStatus();
  if (slots >= kForever / 4) return absl::ResourceExhaustedError("cuda memory: too many slots");
  cu::Context& ctx = *ctx_;
  const int64_t G = n_kv_heads_, d = model_.head_dim;
  // Geometric growth: a dense or frozen memory gains keys every segment.
  const int64_t cap = std::max(slots, capacity_ + capacity_ / 2);
  const int64_t bytes = G * cap * d * 2;
  for (int32_t l = 0; l < model_.n_layers; ++l) {
    for (auto* buffers : {&keys_, &values_}) {
      auto b = cu::DeviceBuffer::Allocate(bytes);
      if (!b.ok()) return b.status();
      // Rows no slot holds are read (and masked) by attention: they must be finite.
      LONGREAD_RETURN_IF_ERROR(cu::ZeroDevice(ctx, b->as<void>(), bytes));
      cu::DeviceBuffer& old = (*buffers)[l];
      for (int64_t g = 0; g < G && capacity_ > 0; ++g) {
        const int64_t held = slot_count(l, static_cast<int32_t>(g));
        LONGREAD_RETURN_IF_ERROR(cu::CopyDevice(ctx, old.as<Bf16>() + g * capacity_ * d,
                                                held * d * 2, b->as<Bf16>() + g * cap * d));
      }
      old = std::move(*b);
    }
  }
  for (cu::DeviceBuffer* b : {&spare_keys_, &spare_values_, &rotated_}) {
    *b = cu::DeviceBuffer();
    LONGREAD_RETURN_IF_ERROR(Reserve(*b, bytes));
    LONGREAD_RETURN_IF_ERROR(cu::ZeroDevice(ctx, b->as<void>(), bytes));
  }
  LONGREAD_RETURN_IF_ERROR(Reserve(staging_keys_, bytes));
  LONGREAD_RETURN_IF_ERROR(Reserve(staging_values_, bytes));
  LONGREAD_RETURN_IF_ERROR(Reserve(from_, G * cap * 4));
  LONGREAD_RETURN_IF_ERROR(Reserve(until_, G * cap * 4));
  LONGREAD_RETURN_IF_ERROR(Reserve(rope_positions_, G * cap * 8));
  LONGREAD_RETURN_IF_ERROR(Reserve(query_positions_, G * cap * 8));
  LONGREAD_RETURN_IF_ERROR(Reserve(src_rows_, G * cap * 4));
  LONGREAD_RETURN_IF_ERROR(Reserve(dst_rows_, G * cap * 4));
  capacity_ = cap;
  // The old buffers are freed on return: the stream must be done with them.
  return ctx.Synchronize();
}

absl::Status CudaSparseKMemory::TokenScores(const DeviceSegmentLayerInput& in) {
  const int64_t n = in.n_tokens, G = n_kv_heads_;
  s_.token_scores.assign(n * G, 0.0f);
  if (scorer_ != nullptr) {
    if (scorer_w_.bytes() == 0) {  // the scorer's fp32 weights, once
      for (auto [host, dev] :
           {std::pair{&scorer_->w, &scorer_w_}, std::pair{&scorer_->b, &scorer_b_},
            std::pair{&scorer_->slope, &scorer_slope_}}) {
        LONGREAD_RETURN_IF_ERROR(Reserve(*dev, static_cast<int64_t>(host->size() * 4)));
        LONGREAD_RETURN_IF_ERROR(cu::Upload(*ctx_, host->data(), dev->bytes(), dev->as<void>()));
      }
    }
    const int64_t lh = int64_t{in.layer} * G;
    LONGREAD_RETURN_IF_ERROR(Reserve(task_out_, n * G * 4));
    LONGREAD_RETURN_IF_ERROR(
        cu::LinearScores(*ctx_, scorer_w_.as<float>() + lh * model_.d_model,
                         scorer_b_.as<float>() + lh, scorer_slope_.as<float>() + lh, in.x_norm, n,
                         G, model_.d_model, next_position_, task_out_.as<float>()));
    LONGREAD_RETURN_IF_ERROR(
        cu::Download(*ctx_, task_out_.as<void>(), n * G * 4, s_.token_scores.data()));
  }
  if (n_task_ > 0 && config_.task_weight != 0.0f && !task_queries_.empty()) {
    // The task term on the device (the segment's keys stay there); only [n][G] terms come back.
    const int64_t H = model_.n_heads, d = model_.head_dim, rows = n_task_ * (H / G);
    if (task_queries_dev_.empty()) {
      for (const std::vector<float>& layer : task_queries_) {
        auto b = cu::DeviceBuffer::Allocate(static_cast<int64_t>(layer.size() * sizeof(float)));
        if (!b.ok()) return b.status();
        LONGREAD_RETURN_IF_ERROR(cu::Upload(*ctx_, layer.data(), b->bytes(), b->as<void>()));
        task_queries_dev_.push_back(std::move(*b));
      }
    }
    LONGREAD_RETURN_IF_ERROR(Reserve(task_logits_, G * rows * n * 4));
    LONGREAD_RETURN_IF_ERROR(Reserve(task_lse_, G * rows * 4));
    LONGREAD_RETURN_IF_ERROR(Reserve(task_out_, n * G * 4));
    cu::TaskTermArgs a;
    a.task_queries = task_queries_dev_[in.layer].as<float>();
    a.k = in.k;
    a.n = n;
    a.n_task = n_task_;
    a.n_heads = H;
    a.n_kv_heads = G;
    a.head_dim = d;
    a.max_dot = config_.task_score == TaskScore::kMaxDot;
    a.weight = config_.task_weight;
    a.logits = task_logits_.as<float>();
    a.lse = task_lse_.as<float>();
    a.out = task_out_.as<float>();
    LONGREAD_RETURN_IF_ERROR(cu::TaskTerm(*ctx_, a));
    s_.keys.resize(n * G);
    LONGREAD_RETURN_IF_ERROR(cu::Download(*ctx_, task_out_.as<void>(), n * G * 4, s_.keys.data()));
    for (int64_t i = 0; i < n * G; ++i) s_.token_scores[i] += s_.keys[i];
  }
  return absl::OkStatus();
}

absl::Status CudaSparseKMemory::AttendAndUpdate(const DeviceSegmentLayerInput& in, Bf16* out) {
  cu::Context& ctx = *ctx_;
  const int64_t n = in.n_tokens, d = model_.head_dim, P = next_position_;
  const int32_t G = n_kv_heads_, H = model_.n_heads, group = H / G;
  if (n <= 0 || n >= kForever / 4) {
    return absl::InvalidArgumentError(absl::StrCat("cuda memory: bad segment length ", n));
  }
  LONGREAD_RETURN_IF_ERROR(TokenScores(in));
  const int64_t n_keys = max_slot_count() + n;
  LONGREAD_RETURN_IF_ERROR(EnsureCapacity(n_keys));
  const int64_t cap = capacity_;
  Bf16* keys = keys_[in.layer].as<Bf16>();
  Bf16* values = values_[in.layer].as<Bf16>();

  // Visibility, as the CPU memory computes it (padding keys stay invisible: until = 0).
  s_.from.assign(G * n_keys, 0);
  s_.until.assign(G * n_keys, 0);
  s_.keep.assign(G * n_keys, 0);
  for (int32_t g = 0; g < G; ++g) {
    const HeadMeta& hm = meta(in.layer, g);
    LONGREAD_RETURN_IF_ERROR(
        SelectSegmentKeys(config_, frozen_, P, n, hm.positions, hm.scores,
                          s_.token_scores.data() + g, G, s_.from.data() + g * n_keys,
                          s_.until.data() + g * n_keys, s_.keep.data() + g * n_keys, s_.sel));
  }

  // Append the segment's keys and values after each head's slots: row j*G+g of the projections
  // goes to row g*cap + M_g + j.
  s_.src_rows.resize(n * G);
  s_.dst_rows.resize(n * G);
  for (int32_t g = 0; g < G; ++g) {
    const int64_t M = slot_count(in.layer, g);
    for (int64_t j = 0; j < n; ++j) {
      s_.src_rows[g * n + j] = static_cast<int32_t>(j * G + g);
      s_.dst_rows[g * n + j] = static_cast<int32_t>(g * cap + M + j);
    }
  }
  LONGREAD_RETURN_IF_ERROR(cu::Upload(ctx, s_.src_rows.data(), n * G * 4, src_rows_.as<void>()));
  LONGREAD_RETURN_IF_ERROR(cu::Upload(ctx, s_.dst_rows.data(), n * G * 4, dst_rows_.as<void>()));
  LONGREAD_RETURN_IF_ERROR(
      cu::CopyRows(ctx, in.k, src_rows_.as<int32_t>(), keys, dst_rows_.as<int32_t>(), n * G, d));
  LONGREAD_RETURN_IF_ERROR(
      cu::CopyRows(ctx, in.v, src_rows_.as<int32_t>(), values, dst_rows_.as<int32_t>(), n * G, d));

  // Keys rotated at their RoPE positions (slot order: the slot index; else the document
  // position), queries at M_g + i (or P + i). The CPU keeps rotated keys cached across segments;
  // here every key is rotated again each layer-segment (cheap next to attention).
  const bool slot_order = config_.position_mode == PositionMode::kSlotOrder;
  s_.rope_positions.assign(G * n_keys, 0);
  s_.query_positions.resize(n * G);
  for (int32_t g = 0; g < G; ++g) {
    const HeadMeta& hm = meta(in.layer, g);
    const int64_t M = static_cast<int64_t>(hm.positions.size());
    int64_t* pos = s_.rope_positions.data() + g * n_keys;
    for (int64_t c = 0; c < M; ++c) pos[c] = slot_order ? c : hm.positions[c];
    for (int64_t j = 0; j < n; ++j) pos[M + j] = slot_order ? M + j : P + j;
    for (int64_t i = 0; i < n; ++i) s_.query_positions[i * G + g] = (slot_order ? M : P) + i;
  }
  LONGREAD_RETURN_IF_ERROR(
      cu::Upload(ctx, s_.rope_positions.data(), G * n_keys * 8, rope_positions_.as<void>()));
  LONGREAD_RETURN_IF_ERROR(
      cu::Upload(ctx, s_.query_positions.data(), n * G * 8, query_positions_.as<void>()));
  const kernels::RopeStyle rope = KernelRope(model_.rope_style);
  Bf16* rotated = rotated_.as<Bf16>();
  for (int32_t g = 0; g < G; ++g) {
    const int64_t rows = slot_count(in.layer, g) + n;
    LONGREAD_RETURN_IF_ERROR(
        cu::CopyDevice(ctx, keys + g * cap * d, rows * d * 2, rotated + g * cap * d));
    LONGREAD_RETURN_IF_ERROR(cu::Rope(ctx, rotated + g * cap * d, 1, rows, 1, d,
                                      rope_positions_.as<int64_t>() + g * n_keys, model_.rope_theta,
                                      rope));
  }
  // q is [n][H][d] = [n * G][group][d]: row (i, g) at query_positions[i * G + g].
  LONGREAD_RETURN_IF_ERROR(cu::Rope(ctx, in.q, 1, n * G, group, d, query_positions_.as<int64_t>(),
                                    model_.rope_theta, rope));

  LONGREAD_RETURN_IF_ERROR(cu::Upload(ctx, s_.from.data(), G * n_keys * 4, from_.as<void>()));
  LONGREAD_RETURN_IF_ERROR(cu::Upload(ctx, s_.until.data(), G * n_keys * 4, until_.as<void>()));
  cu::AttentionArgs a;
  a.q = in.q;
  a.k = rotated;
  a.v = values;
  a.visible_from = from_.as<int32_t>();
  a.visible_until = until_.as<int32_t>();
  a.n_q = n;
  a.n_keys = n_keys;
  a.n_heads = H;
  a.n_kv_heads = G;
  a.head_dim = d;
  a.kv_head_stride = cap;
  a.scale = 1.0f / std::sqrt(static_cast<float>(d));
  a.out = out;
  LONGREAD_RETURN_IF_ERROR(cu::Attention(ctx, a));

  if (archive_ != nullptr && archive_status_.ok()) LONGREAD_RETURN_IF_ERROR(ArchiveEvicted(in));

  // Fold: kept memory slots then kept segment keys, in position order, compacted into the spare
  // buffers, which then become the layer's.
  s_.src_rows.clear();
  s_.dst_rows.clear();
  for (int32_t g = 0; g < G; ++g) {
    HeadMeta& hm = meta(in.layer, g);
    const int64_t M = static_cast<int64_t>(hm.positions.size());
    const uint8_t* keep = s_.keep.data() + g * n_keys;
    int64_t kept = 0;
    for (int64_t key = 0; key < M + n; ++key) {
      if (!keep[key]) continue;
      s_.src_rows.push_back(static_cast<int32_t>(g * cap + key));
      s_.dst_rows.push_back(static_cast<int32_t>(g * cap + kept));
      if (key < M) {
        hm.positions[kept] = hm.positions[key];
        hm.scores[kept] = hm.scores[key];
      } else {
        hm.positions.resize(std::max<int64_t>(kept + 1, hm.positions.size()));
        hm.scores.resize(hm.positions.size());
        hm.positions[kept] = P + (key - M);
        hm.scores[kept] = s_.token_scores[(key - M) * G + g];
      }
      ++kept;
    }
    hm.positions.resize(kept);
    hm.scores.resize(kept);
  }
  const int64_t moved = static_cast<int64_t>(s_.src_rows.size());
  LONGREAD_RETURN_IF_ERROR(cu::Upload(ctx, s_.src_rows.data(), moved * 4, src_rows_.as<void>()));
  LONGREAD_RETURN_IF_ERROR(cu::Upload(ctx, s_.dst_rows.data(), moved * 4, dst_rows_.as<void>()));
  LONGREAD_RETURN_IF_ERROR(cu::CopyRows(ctx, keys, src_rows_.as<int32_t>(), spare_keys_.as<Bf16>(),
                                        dst_rows_.as<int32_t>(), moved, d));
  LONGREAD_RETURN_IF_ERROR(cu::CopyRows(ctx, values, src_rows_.as<int32_t>(),
                                        spare_values_.as<Bf16>(), dst_rows_.as<int32_t>(), moved,
                                        d));
  std::swap(keys_[in.layer], spare_keys_);
  std::swap(values_[in.layer], spare_values_);
  return absl::OkStatus();
}

absl::Status CudaSparseKMemory::ArchiveEvicted(const DeviceSegmentLayerInput& in) {
  cu::Context& ctx = *ctx_;
  const int64_t n = in.n_tokens, d = model_.head_dim, P = next_position_, B = config_.block_tokens;
  const int32_t G = n_kv_heads_;
  const int64_t cap = capacity_, n_keys = max_slot_count() + n;
  s_.src_rows.clear();
  s_.dst_rows.clear();
  for (int32_t g = 0; g < G; ++g) {
    const int64_t M = slot_count(in.layer, g);
    for (int64_t key = 0; key < M + n; ++key) {
      if (s_.keep[g * n_keys + key]) continue;
      s_.dst_rows.push_back(static_cast<int32_t>(s_.src_rows.size()));
      s_.src_rows.push_back(static_cast<int32_t>(g * cap + key));
    }
  }
  const int64_t evicted = static_cast<int64_t>(s_.src_rows.size());
  if (evicted == 0) return absl::OkStatus();
  LONGREAD_RETURN_IF_ERROR(cu::Upload(ctx, s_.src_rows.data(), evicted * 4, src_rows_.as<void>()));
  LONGREAD_RETURN_IF_ERROR(cu::Upload(ctx, s_.dst_rows.data(), evicted * 4, dst_rows_.as<void>()));
  LONGREAD_RETURN_IF_ERROR(cu::CopyRows(ctx, keys_[in.layer].as<Bf16>(), src_rows_.as<int32_t>(),
                                        staging_keys_.as<Bf16>(), dst_rows_.as<int32_t>(), evicted,
                                        d));
  LONGREAD_RETURN_IF_ERROR(cu::CopyRows(ctx, values_[in.layer].as<Bf16>(), src_rows_.as<int32_t>(),
                                        staging_values_.as<Bf16>(), dst_rows_.as<int32_t>(),
                                        evicted, d));
  std::vector<float> k_rows, v_rows;
  LONGREAD_RETURN_IF_ERROR(
      DownloadFloats(ctx, staging_keys_.as<Bf16>(), evicted * d, s_.bits, k_rows));
  LONGREAD_RETURN_IF_ERROR(
      DownloadFloats(ctx, staging_values_.as<Bf16>(), evicted * d, s_.bits, v_rows));

  // Blocks as the CPU memory puts them: per head, in key order, one block per run of keys of
  // the same block id.
  int64_t row = 0;
  for (int32_t g = 0; g < G && archive_status_.ok(); ++g) {
    const HeadMeta& hm = meta(in.layer, g);
    const int64_t M = static_cast<int64_t>(hm.positions.size());
    ArchivedBlock block;
    auto flush = [&] {
      if (block.positions.empty()) return;
      if (auto s = archive_->Put(std::move(block)); !s.ok()) archive_status_ = s;
      block = ArchivedBlock();
    };
    for (int64_t key = 0; key < M + n; ++key) {
      if (s_.keep[g * n_keys + key]) continue;
      const bool from_memory = key < M;
      const int64_t pos = from_memory ? hm.positions[key] : P + (key - M);
      if (!block.positions.empty() && pos / B != block.block_id) flush();
      if (!archive_status_.ok()) return absl::OkStatus();
      if (block.positions.empty()) {
        block.layer = in.layer;
        block.kv_head = g;
        block.block_id = pos / B;
      }
      block.positions.push_back(pos);
      block.scores.push_back(from_memory ? hm.scores[key] : s_.token_scores[(key - M) * G + g]);
      block.keys.insert(block.keys.end(), &k_rows[row * d], &k_rows[row * d] + d);
      block.values.insert(block.values.end(), &v_rows[row * d], &v_rows[row * d] + d);
      ++row;
    }
    flush();
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> CudaSparseKMemory::InsertRecalled(
    int32_t layer, int32_t g, const std::vector<ArchivedBlock>& blocks) {
  cu::Context& ctx = *ctx_;
  const int64_t d = model_.head_dim;
  int64_t incoming = 0;
  for (const ArchivedBlock& b : blocks) incoming += static_cast<int64_t>(b.positions.size());
  const int64_t M = slot_count(layer, g);
  LONGREAD_RETURN_IF_ERROR(EnsureCapacity(M + incoming));
  const int64_t cap = capacity_;
  HeadMeta& hm = meta(layer, g);
  // The merge of CPU InsertRecalled; recalled rows are uploaded after the held ones (rows M..)
  // and the merged order is a row list into the spare buffers, copied back.
  HeadMeta merged;
  std::vector<float> new_keys, new_values;
  s_.src_rows.clear();
  size_t c = 0;
  int64_t added = 0;
  auto take_slot = [&](size_t i) {
    merged.positions.push_back(hm.positions[i]);
    merged.scores.push_back(hm.scores[i]);
    s_.src_rows.push_back(static_cast<int32_t>(g * cap + static_cast<int64_t>(i)));
  };
  for (const ArchivedBlock& b : blocks) {
    for (size_t t = 0; t < b.positions.size(); ++t) {
      while (c < hm.positions.size() && hm.positions[c] < b.positions[t]) take_slot(c++);
      if (c < hm.positions.size() && hm.positions[c] == b.positions[t]) continue;
      merged.positions.push_back(b.positions[t]);
      merged.scores.push_back(b.scores[t]);
      s_.src_rows.push_back(static_cast<int32_t>(g * cap + M + added));
      new_keys.insert(new_keys.end(), &b.keys[t * d], &b.keys[t * d] + d);
      new_values.insert(new_values.end(), &b.values[t * d], &b.values[t * d] + d);
      ++added;
    }
  }
  while (c < hm.positions.size()) take_slot(c++);
  const int64_t total = static_cast<int64_t>(merged.positions.size());
  Bf16* keys = keys_[layer].as<Bf16>();
  Bf16* values = values_[layer].as<Bf16>();
  LONGREAD_RETURN_IF_ERROR(
      UploadAsBf16(ctx, new_keys.data(), added * d, s_.bits, keys + (g * cap + M) * d));
  LONGREAD_RETURN_IF_ERROR(
      UploadAsBf16(ctx, new_values.data(), added * d, s_.bits, values + (g * cap + M) * d));
  s_.dst_rows.resize(total);
  for (int64_t i = 0; i < total; ++i) s_.dst_rows[i] = static_cast<int32_t>(g * cap + i);
  LONGREAD_RETURN_IF_ERROR(cu::Upload(ctx, s_.src_rows.data(), total * 4, src_rows_.as<void>()));
  LONGREAD_RETURN_IF_ERROR(cu::Upload(ctx, s_.dst_rows.data(), total * 4, dst_rows_.as<void>()));
  for (auto [held, spare] :
       {std::pair{keys, spare_keys_.as<Bf16>()}, std::pair{values, spare_values_.as<Bf16>()}}) {
    LONGREAD_RETURN_IF_ERROR(
        cu::CopyRows(ctx, held, src_rows_.as<int32_t>(), spare, dst_rows_.as<int32_t>(), total, d));
    LONGREAD_RETURN_IF_ERROR(
        cu::CopyDevice(ctx, spare + g * cap * d, total * d * 2, held + g * cap * d));
  }
  hm = std::move(merged);
  LONGREAD_RETURN_IF_ERROR(ctx.Synchronize());
  return added;
}

absl::Status CudaSparseKMemory::Rewind(int64_t position) {
  if (!frozen_ && !config_.is_dense()) {
    return absl::FailedPreconditionError("memory: rewinding needs frozen eviction");
  }
  if (position < 0 || position > next_position_) {
    return absl::InvalidArgumentError(absl::StrCat("memory: cannot rewind to position ", position,
                                                   " (next position ", next_position_, ")"));
  }
  // Slots keep their rows: dropping the tail is bookkeeping only.
  for (HeadMeta& hm : meta_) {
    const auto first = std::lower_bound(hm.positions.begin(), hm.positions.end(), position);
    const size_t kept = static_cast<size_t>(first - hm.positions.begin());
    hm.positions.resize(kept);
    hm.scores.resize(kept);
  }
  next_position_ = position;
  return absl::OkStatus();
}

void CudaSparseKMemory::SetTaskQueries(std::vector<std::vector<float>> queries, int64_t n_task) {
  task_queries_ = std::move(queries);
  n_task_ = n_task;
  task_queries_dev_.clear();  // uploaded at the next segment
}

absl::Status CudaSparseKMemory::ExportTo(MemorySnapshot* snapshot) {
  const int64_t d = model_.head_dim;
  snapshot->n_layers = model_.n_layers;
  snapshot->n_kv_heads = model_.n_kv_heads;
  snapshot->head_dim = model_.head_dim;
  snapshot->config_hash = config_.Hash();
  snapshot->token_offset = next_position_;
  snapshot->heads.assign(meta_.size(), HeadMemorySnapshot());
  for (int32_t l = 0; l < model_.n_layers; ++l) {
    for (int32_t g = 0; g < n_kv_heads_; ++g) {
      const HeadMeta& hm = meta(l, g);
      HeadMemorySnapshot& out = snapshot->heads[l * n_kv_heads_ + g];
      const int64_t M = static_cast<int64_t>(hm.positions.size());
      out.positions = hm.positions;
      out.scores = hm.scores;
      LONGREAD_RETURN_IF_ERROR(
          DownloadFloats(*ctx_, keys_[l].as<Bf16>() + g * capacity_ * d, M * d, s_.bits, out.keys));
      LONGREAD_RETURN_IF_ERROR(DownloadFloats(*ctx_, values_[l].as<Bf16>() + g * capacity_ * d,
                                              M * d, s_.bits, out.values));
    }
  }
  return absl::OkStatus();
}

absl::Status CudaSparseKMemory::ImportFrom(const MemorySnapshot& snapshot) {
  // The CPU memory's checks (shape, config hash, consistent and sorted slots).
  SparseKMemory check(model_, config_, nullptr);
  LONGREAD_RETURN_IF_ERROR(check.ImportFrom(snapshot));
  int64_t most = 0;
  for (const auto& h : snapshot.heads) {
    most = std::max<int64_t>(most, static_cast<int64_t>(h.positions.size()));
  }
  LONGREAD_RETURN_IF_ERROR(EnsureCapacity(most));
  const int64_t d = model_.head_dim;
  for (int32_t l = 0; l < model_.n_layers; ++l) {
    for (int32_t g = 0; g < n_kv_heads_; ++g) {
      const HeadMemorySnapshot& h = snapshot.heads[l * n_kv_heads_ + g];
      const int64_t M = static_cast<int64_t>(h.positions.size());
      LONGREAD_RETURN_IF_ERROR(UploadAsBf16(*ctx_, h.keys.data(), M * d, s_.bits,
                                            keys_[l].as<Bf16>() + g * capacity_ * d));
      LONGREAD_RETURN_IF_ERROR(UploadAsBf16(*ctx_, h.values.data(), M * d, s_.bits,
                                            values_[l].as<Bf16>() + g * capacity_ * d));
      meta(l, g).positions = h.positions;
      meta(l, g).scores = h.scores;
    }
  }
  next_position_ = snapshot.token_offset;
  return ctx_->Synchronize();
}

}  // namespace longread::engine
