#include "engine/memory/cuda_sparsek_memory.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

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
      counts_(static_cast<size_t>(model.n_layers) * model.n_kv_heads, 0),
      counts_pending_(model.n_layers, 0),
      meta_(static_cast<size_t>(model.n_layers) * model.n_kv_heads),
      meta_valid_(model.n_layers, 1),
      keys_(model.n_layers),
      values_(model.n_layers),
      positions_(model.n_layers),
      scores_(model.n_layers) {}

CudaSparseKMemory::~CudaSparseKMemory() {
  {
    std::unique_lock<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (writer_.joinable()) writer_.join();
  side_.Synchronize().IgnoreError();
  ctx_->Synchronize().IgnoreError();
}

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
  LONGREAD_RETURN_IF_ERROR(m->Init());
  if (!config.is_dense()) {
    LONGREAD_RETURN_IF_ERROR(
        m->EnsureCapacity(config.sinks + config.top_k + config.window + config.block_tokens));
  }
  return m;
}

absl::Status CudaSparseKMemory::Init() {
  const int64_t slots = static_cast<int64_t>(counts_.size());
  auto counts = cu::DeviceBuffer::Allocate(slots * 4);
  if (!counts.ok()) return counts.status();
  counts_dev_ = std::move(*counts);
  LONGREAD_RETURN_IF_ERROR(cu::ZeroDevice(*ctx_, counts_dev_.as<void>(), slots * 4));
  auto pinned = cu::PinnedBuffer::Allocate(slots * 4);
  if (!pinned.ok()) return pinned.status();
  counts_pinned_ = std::move(*pinned);
  for (int32_t l = 0; l < model_.n_layers; ++l) {
    auto e = cu::Event::Create();
    if (!e.ok()) return e.status();
    count_events_.push_back(std::move(*e));
  }
  for (Staging& st : staging_) {
    for (cu::Event* e : {&st.staged, &st.freed}) {
      auto created = cu::Event::Create();
      if (!created.ok()) return created.status();
      *e = std::move(*created);
    }
  }
  for (ArchiveSet& set : sets_) {
    auto e = cu::Event::Create();
    if (!e.ok()) return e.status();
    set.copied = std::move(*e);
  }
  auto side = cu::SideStream::Create();
  if (!side.ok()) return side.status();
  side_ = std::move(*side);
  return ctx_->Synchronize();
}

void CudaSparseKMemory::SyncCounts(int32_t layer) const {
  if (!counts_pending_[layer]) return;
  // The copy was enqueued after the layer's fold; an error here surfaces at the next sync.
  count_events_[layer].Synchronize().IgnoreError();
  const int32_t* pinned = counts_pinned_.as<int32_t>() + int64_t{layer} * n_kv_heads_;
  for (int32_t g = 0; g < n_kv_heads_; ++g) counts_[layer * n_kv_heads_ + g] = pinned[g];
  counts_pending_[layer] = 0;
}

void CudaSparseKMemory::SyncMeta(int32_t layer) const {
  SyncCounts(layer);
  if (meta_valid_[layer]) return;
  for (int32_t g = 0; g < n_kv_heads_; ++g) {
    HeadMeta& hm = meta_[layer * n_kv_heads_ + g];
    const int64_t M = counts_[layer * n_kv_heads_ + g], at = g * capacity_;
    hm.positions.resize(M);
    hm.scores.resize(M);
    cu::Download(*ctx_, positions_[layer].as<int64_t>() + at, M * 8, hm.positions.data())
        .IgnoreError();
    cu::Download(*ctx_, scores_[layer].as<float>() + at, M * 4, hm.scores.data()).IgnoreError();
  }
  meta_valid_[layer] = 1;
}

const CudaSparseKMemory::HeadMeta& CudaSparseKMemory::meta(int32_t layer, int32_t g) const {
  SyncMeta(layer);
  return meta_[layer * n_kv_heads_ + g];
}

int64_t CudaSparseKMemory::slot_count(int32_t layer, int32_t kv_head) const {
  SyncCounts(layer);
  return counts_[layer * n_kv_heads_ + kv_head];
}

absl::Status CudaSparseKMemory::UploadCounts(int32_t layer) {
  std::vector<int32_t> counts(n_kv_heads_);
  for (int32_t g = 0; g < n_kv_heads_; ++g) {
    counts[g] = static_cast<int32_t>(counts_[layer * n_kv_heads_ + g]);
  }
  LONGREAD_RETURN_IF_ERROR(cu::Upload(*ctx_, counts.data(), n_kv_heads_ * 4,
                                      counts_dev_.as<int32_t>() + layer * n_kv_heads_));
  return ctx_->Synchronize();  // `counts` is freed on return
}

int64_t CudaSparseKMemory::max_slot_count() const {
  int64_t most = 0;
  for (int32_t l = 0; l < model_.n_layers; ++l) {
    for (int32_t g = 0; g < n_kv_heads_; ++g) most = std::max(most, slot_count(l, g));
  }
  return most;
}

int64_t CudaSparseKMemory::resident_bytes() const {
  int64_t bytes = counts_dev_.bytes();
  for (size_t l = 0; l < keys_.size(); ++l) {
    bytes += keys_[l].bytes() + values_[l].bytes() + positions_[l].bytes() + scores_[l].bytes();
  }
  for (const cu::DeviceBuffer* b : {&spare_keys_,      &spare_values_, &spare_positions_,
                                    &spare_scores_,    &rotated_,      &from_,
                                    &until_,           &keep_,         &rope_positions_,
                                    &query_positions_, &dst_row_,      &key_cand_,
                                    &cand_join_,       &cand_first_,   &cand_exit_,
                                    &cand_score_,      &cand_count_,   &token_scores_,
                                    &src_rows_,        &dst_rows_,     &task_logits_,
                                    &task_lse_}) {
    bytes += b->bytes();
  }
  for (const Staging& st : staging_) {
    bytes += st.keys.bytes() + st.values.bytes() + st.positions.bytes() + st.scores.bytes() +
             st.counts.bytes();
  }
  return bytes;
}

absl::Status CudaSparseKMemory::EnsureCapacity(int64_t slots) {
  if (slots <= capacity_) return absl::OkStatus();
  if (slots >= kForever / 4) return absl::ResourceExhaustedError("cuda memory: too many slots");
  // The host sets are laid out by capacity: let the writer finish with them first.
  HandOverSegment();
  DrainArchive();
  for (ArchiveSet& set : sets_) {
    for (cu::PinnedBuffer* b : {&set.keys, &set.values, &set.positions, &set.scores, &set.counts}) {
      *b = cu::PinnedBuffer();
    }
  }
  for (int32_t l = 0; l < model_.n_layers; ++l) SyncCounts(l);
  cu::Context& ctx = *ctx_;
  const int64_t G = n_kv_heads_, d = model_.head_dim;
  // Geometric growth: a dense or frozen memory gains keys every segment.
  const int64_t cap = std::max(slots, capacity_ + capacity_ / 2);
  const int64_t bytes = G * cap * d * 2;
  for (int32_t l = 0; l < model_.n_layers; ++l) {
    struct Grown {
      std::vector<cu::DeviceBuffer>* buffers;
      int64_t row_bytes;
    };
    for (Grown grown : {Grown{&keys_, d * 2}, Grown{&values_, d * 2}, Grown{&positions_, 8},
                        Grown{&scores_, 4}}) {
      auto b = cu::DeviceBuffer::Allocate(G * cap * grown.row_bytes);
      if (!b.ok()) return b.status();
      // Rows no slot holds are read (and masked) by attention: they must be finite.
      LONGREAD_RETURN_IF_ERROR(cu::ZeroDevice(ctx, b->as<void>(), b->bytes()));
      cu::DeviceBuffer& old = (*grown.buffers)[l];
      for (int64_t g = 0; g < G && capacity_ > 0; ++g) {
        const int64_t held = counts_[l * G + g];
        LONGREAD_RETURN_IF_ERROR(
            cu::CopyDevice(ctx, old.as<char>() + g * capacity_ * grown.row_bytes,
                           held * grown.row_bytes, b->as<char>() + g * cap * grown.row_bytes));
      }
      old = std::move(*b);
    }
  }
  for (cu::DeviceBuffer* b : {&spare_keys_, &spare_values_, &rotated_}) {
    *b = cu::DeviceBuffer();
    LONGREAD_RETURN_IF_ERROR(Reserve(*b, bytes));
    LONGREAD_RETURN_IF_ERROR(cu::ZeroDevice(ctx, b->as<void>(), bytes));
  }
  LONGREAD_RETURN_IF_ERROR(Reserve(spare_positions_, G * cap * 8));
  LONGREAD_RETURN_IF_ERROR(Reserve(spare_scores_, G * cap * 4));
  for (cu::DeviceBuffer* b : {&from_, &until_, &keep_, &dst_row_, &key_cand_, &cand_join_,
                              &cand_first_, &cand_exit_, &cand_score_, &src_rows_, &dst_rows_}) {
    LONGREAD_RETURN_IF_ERROR(Reserve(*b, G * cap * 4));
  }
  LONGREAD_RETURN_IF_ERROR(Reserve(rope_positions_, G * cap * 8));
  LONGREAD_RETURN_IF_ERROR(Reserve(query_positions_, G * cap * 8));
  LONGREAD_RETURN_IF_ERROR(Reserve(cand_count_, G * 4));
  for (Staging& st : staging_) {
    // Allocated when an archive first needs them (EnsureArchiveSets); re-sized here.
    if (st.keys.bytes() == 0) continue;
    st.keys = cu::DeviceBuffer();
    st.values = cu::DeviceBuffer();
    LONGREAD_RETURN_IF_ERROR(Reserve(st.keys, bytes));
    LONGREAD_RETURN_IF_ERROR(Reserve(st.values, bytes));
    LONGREAD_RETURN_IF_ERROR(Reserve(st.positions, G * cap * 8));
    LONGREAD_RETURN_IF_ERROR(Reserve(st.scores, G * cap * 4));
  }
  capacity_ = cap;
  // The old buffers are freed on return: both streams must be done with them.
  LONGREAD_RETURN_IF_ERROR(side_.Synchronize());
  return ctx.Synchronize();
}

absl::Status CudaSparseKMemory::EnsureArchiveSets() {
  const int64_t G = n_kv_heads_, d = model_.head_dim, L = model_.n_layers, cap = capacity_;
  for (Staging& st : staging_) {
    if (st.keys.bytes() != 0) continue;
    LONGREAD_RETURN_IF_ERROR(Reserve(st.keys, G * cap * d * 2));
    LONGREAD_RETURN_IF_ERROR(Reserve(st.values, G * cap * d * 2));
    LONGREAD_RETURN_IF_ERROR(Reserve(st.positions, G * cap * 8));
    LONGREAD_RETURN_IF_ERROR(Reserve(st.scores, G * cap * 4));
    LONGREAD_RETURN_IF_ERROR(Reserve(st.counts, G * 4));
  }
  for (ArchiveSet& set : sets_) {
    if (set.keys.bytes() != 0) continue;
    struct Part {
      cu::PinnedBuffer* buffer;
      int64_t bytes;
    };
    for (Part part : {Part{&set.keys, L * G * cap * d * 2}, Part{&set.values, L * G * cap * d * 2},
                      Part{&set.positions, L * G * cap * 8}, Part{&set.scores, L * G * cap * 4},
                      Part{&set.counts, L * G * 4}}) {
      auto b = cu::PinnedBuffer::Allocate(part.bytes);
      if (!b.ok()) return b.status();
      *part.buffer = std::move(*b);
    }
  }
  if (!writer_.joinable()) writer_ = std::thread([this] { WriterLoop(); });
  return absl::OkStatus();
}

absl::Status CudaSparseKMemory::TokenScores(const DeviceSegmentLayerInput& in) {
  const int64_t n = in.n_tokens, G = n_kv_heads_;
  LONGREAD_RETURN_IF_ERROR(Reserve(token_scores_, n * G * 4));
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
    LONGREAD_RETURN_IF_ERROR(
        cu::LinearScores(*ctx_, scorer_w_.as<float>() + lh * model_.d_model,
                         scorer_b_.as<float>() + lh, scorer_slope_.as<float>() + lh, in.x_norm, n,
                         G, model_.d_model, next_position_, token_scores_.as<float>()));
  } else {
    LONGREAD_RETURN_IF_ERROR(cu::ZeroDevice(*ctx_, token_scores_.as<void>(), n * G * 4));
  }
  if (n_task_ > 0 && config_.task_weight != 0.0f && !task_queries_.empty()) {
    // The task term on the device (the segment's keys stay there), added as the host adds it.
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
    a.scores = token_scores_.as<float>();
    LONGREAD_RETURN_IF_ERROR(cu::TaskTerm(*ctx_, a));
  }
  return absl::OkStatus();
}

absl::Status CudaSparseKMemory::AttendAndUpdate(const DeviceSegmentLayerInput& in, Bf16* out) {
  cu::Context& ctx = *ctx_;
  const int64_t n = in.n_tokens, d = model_.head_dim, P = next_position_;
  const int32_t G = n_kv_heads_, H = model_.n_heads, l = in.layer;
  if (n <= 0 || n >= kForever / 4) {
    return absl::InvalidArgumentError(absl::StrCat("cuda memory: bad segment length ", n));
  }
  SyncCounts(l);
  int64_t most = 0;
  for (int32_t g = 0; g < G; ++g) most = std::max(most, counts_[l * G + g]);
  const int64_t n_keys = most + n;
  LONGREAD_RETURN_IF_ERROR(EnsureCapacity(n_keys));
  LONGREAD_RETURN_IF_ERROR(TokenScores(in));
  const int64_t cap = capacity_;
  Bf16* keys = keys_[l].as<Bf16>();
  Bf16* values = values_[l].as<Bf16>();
  int32_t* counts = counts_dev_.as<int32_t>() + l * G;
  const bool keep_all = frozen_ || config_.is_dense();
  const bool archiving = archive_ != nullptr && !keep_all && ArchiveOk();

  // The segment's keys and values after each head's slots.
  LONGREAD_RETURN_IF_ERROR(cu::AppendSegment(ctx, in.k, in.v, counts, n, G, d, cap, keys, values));

  // Selection on the device. With an archive, the staging area of this layer's parity must have
  // been copied out (by the side stream) before the fold overwrites it.
  const int ring = static_cast<int>(staged_layers_ % 2);
  Staging& st = staging_[ring];
  if (archiving) {
    LONGREAD_RETURN_IF_ERROR(EnsureArchiveSets());
    if (st.used) LONGREAD_RETURN_IF_ERROR(st.freed.MakeWait(ctx.stream()));
  }
  cu::SelectArgs sa;
  sa.sinks = config_.sinks;
  sa.block_tokens = config_.block_tokens;
  sa.window = config_.window;
  sa.k_blocks =
      static_cast<int32_t>(std::min<int64_t>(config_.top_k / config_.block_tokens, kForever - 1));
  sa.mean = config_.block_score == BlockScore::kMean;
  sa.keep_all = keep_all;
  sa.slot_order = config_.position_mode == PositionMode::kSlotOrder;
  sa.first_position = P;
  sa.n = n;
  sa.n_keys = n_keys;
  sa.capacity = cap;
  sa.n_kv_heads = G;
  sa.counts = counts;
  sa.positions = positions_[l].as<int64_t>();
  sa.scores = scores_[l].as<float>();
  sa.token_scores = token_scores_.as<float>();
  sa.from = from_.as<int32_t>();
  sa.until = until_.as<int32_t>();
  sa.keep = keep_.as<uint8_t>();
  sa.rope_positions = rope_positions_.as<int64_t>();
  sa.query_positions = query_positions_.as<int64_t>();
  sa.new_positions = spare_positions_.as<int64_t>();
  sa.new_scores = spare_scores_.as<float>();
  sa.dst_row = dst_row_.as<int32_t>();
  if (archiving) {
    sa.evicted_positions = st.positions.as<int64_t>();
    sa.evicted_scores = st.scores.as<float>();
    sa.evicted_counts = st.counts.as<int32_t>();
  }
  sa.key_cand = key_cand_.as<int32_t>();
  sa.cand_join = cand_join_.as<int32_t>();
  sa.cand_first_key = cand_first_.as<int32_t>();
  sa.cand_exit = cand_exit_.as<int32_t>();
  sa.cand_score = cand_score_.as<float>();
  sa.cand_count = cand_count_.as<int32_t>();
  LONGREAD_RETURN_IF_ERROR(cu::SelectSegmentKeys(ctx, sa));

  // Keys rotated at their RoPE positions (slot order: the slot index; else the document
  // position), queries at M_g + i (or P + i), as the selection wrote them, in one launch. The CPU
  // keeps rotated keys cached across segments and re-rotates the slots whose position changed; in
  // slot order (the default) a compaction moves most slots, so here every key is rotated again
  // each layer-segment (padding rows too: their position is 0, the rotation the identity).
  Bf16* rotated = rotated_.as<Bf16>();
  cu::RopeMemoryArgs ra;
  ra.keys = keys;
  ra.rotated = rotated;
  ra.key_positions = rope_positions_.as<int64_t>();
  ra.n_kv_heads = G;
  ra.n_keys = n_keys;
  ra.capacity = cap;
  ra.q = in.q;
  ra.query_positions = query_positions_.as<int64_t>();
  ra.n_q = n;
  ra.n_heads = H;
  ra.head_dim = d;
  ra.theta = model_.rope_theta;
  ra.style = KernelRope(model_.rope_style);
  LONGREAD_RETURN_IF_ERROR(cu::RopeMemory(ctx, ra));
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

  // Fold: kept rows into the spare buffers (then swapped in), evicted rows to staging.
  cu::MoveRowsArgs mv;
  mv.keys = keys;
  mv.values = values;
  mv.dst_row = dst_row_.as<int32_t>();
  mv.n_kv_heads = G;
  mv.n_keys = n_keys;
  mv.capacity = cap;
  mv.row_elems = d;
  mv.kept_keys = spare_keys_.as<Bf16>();
  mv.kept_values = spare_values_.as<Bf16>();
  if (archiving) {
    mv.staged_keys = st.keys.as<Bf16>();
    mv.staged_values = st.values.as<Bf16>();
  }
  LONGREAD_RETURN_IF_ERROR(cu::MoveKeptAndEvicted(ctx, mv));
  if (archiving) LONGREAD_RETURN_IF_ERROR(StageEvicted(l, ring));
  std::swap(keys_[l], spare_keys_);
  std::swap(values_[l], spare_values_);
  std::swap(positions_[l], spare_positions_);
  std::swap(scores_[l], spare_scores_);

  // The new counts reach the host without a wait: needed at this layer's next segment.
  LONGREAD_RETURN_IF_ERROR(
      cu::DownloadAsync(ctx, counts, G * 4, counts_pinned_.as<int32_t>() + l * G));
  LONGREAD_RETURN_IF_ERROR(count_events_[l].Record(ctx.stream()));
  counts_pending_[l] = 1;
  meta_valid_[l] = 0;
  return absl::OkStatus();
}

absl::Status CudaSparseKMemory::StageEvicted(int32_t layer, int32_t ring) {
  Staging& st = staging_[ring];
  ArchiveSet& set = sets_[current_set_];
  if (segment_layers_.empty()) {  // the segment's first layer: the writer must be done with it
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return !set.busy; });
  }
  const int64_t G = n_kv_heads_, d = model_.head_dim, cap = capacity_;
  LONGREAD_RETURN_IF_ERROR(st.staged.Record(ctx_->stream()));
  LONGREAD_RETURN_IF_ERROR(st.staged.MakeWait(side_.get()));
  cu::EvictedCopyArgs c;
  c.keys = st.keys.as<Bf16>();
  c.values = st.values.as<Bf16>();
  c.positions = st.positions.as<int64_t>();
  c.scores = st.scores.as<float>();
  c.evicted_counts = st.counts.as<int32_t>();
  c.n_kv_heads = G;
  c.capacity = cap;
  c.row_elems = d;
  c.host_keys = set.keys.as<Bf16>() + layer * G * cap * d;
  c.host_values = set.values.as<Bf16>() + layer * G * cap * d;
  c.host_positions = set.positions.as<int64_t>() + layer * G * cap;
  c.host_scores = set.scores.as<float>() + layer * G * cap;
  c.host_counts = set.counts.as<int32_t>() + layer * G;
  LONGREAD_RETURN_IF_ERROR(cu::CopyEvicted(c, side_.get()));
  LONGREAD_RETURN_IF_ERROR(st.freed.Record(side_.get()));
  st.used = true;
  segment_layers_.push_back(layer);
  ++staged_layers_;
  return absl::OkStatus();
}

void CudaSparseKMemory::EndSegment(int64_t n_tokens) {
  next_position_ += n_tokens;
  HandOverSegment();
}

void CudaSparseKMemory::HandOverSegment() {
  ArchiveSet& set = sets_[current_set_];
  if (segment_layers_.empty()) return;
  set.copied.Record(side_.get()).IgnoreError();  // a failed record fails the writer's wait
  {
    std::unique_lock<std::mutex> lock(mu_);
    set.layers = std::move(segment_layers_);
    segment_layers_.clear();
    set.busy = true;
    jobs_.push_back(current_set_);
    ++in_flight_;
  }
  cv_.notify_all();
  current_set_ ^= 1;
}

bool CudaSparseKMemory::ArchiveOk() const {
  std::unique_lock<std::mutex> lock(mu_);
  return archive_status_.ok() && writer_status_.ok();
}

void CudaSparseKMemory::DrainArchive() const {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return in_flight_ == 0; });
  if (!writer_status_.ok()) archive_status_ = writer_status_;
}

void CudaSparseKMemory::WriterLoop() {
  for (;;) {
    int job = 0;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
      if (jobs_.empty()) return;
      job = jobs_.front();
      jobs_.pop_front();
    }
    ArchiveSet& set = sets_[job];
    absl::Status s = set.copied.Synchronize();
    bool failed;
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (!s.ok() && writer_status_.ok()) writer_status_ = s;
      failed = !writer_status_.ok();
    }
    for (int32_t layer : set.layers) {
      if (failed) break;
      PutLayer(set, layer);
      std::unique_lock<std::mutex> lock(mu_);
      failed = !writer_status_.ok();
    }
    {
      std::unique_lock<std::mutex> lock(mu_);
      set.layers.clear();
      set.busy = false;
      --in_flight_;
    }
    cv_.notify_all();
  }
}

// Blocks as the CPU memory puts them: per head, in key order, one block per run of keys of the
// same block id, widened to fp32; the layer's blocks go to the archive as one batch (in that
// order), which an archive may encode on several threads.
void CudaSparseKMemory::PutLayer(const ArchiveSet& set, int32_t layer) {
  const int64_t G = n_kv_heads_, d = model_.head_dim, cap = capacity_, B = config_.block_tokens;
  size_t n_blocks = 0;
  for (int32_t g = 0; g < G; ++g) {
    const int64_t at = (layer * G + g) * cap;
    const int64_t evicted = set.counts.as<int32_t>()[layer * G + g];
    const int64_t* positions = set.positions.as<int64_t>() + at;
    const float* scores = set.scores.as<float>() + at;
    const Bf16* keys = set.keys.as<Bf16>() + at * d;
    const Bf16* values = set.values.as<Bf16>() + at * d;
    ArchivedBlock* block = nullptr;
    for (int64_t e = 0; e < evicted; ++e) {
      const int64_t pos = positions[e];
      if (block == nullptr || pos / B != block->block_id) {
        if (n_blocks == layer_blocks_.size()) {
          ArchivedBlock& fresh = layer_blocks_.emplace_back();
          fresh.positions.reserve(B);
          fresh.scores.reserve(B);
          fresh.keys.reserve(B * d);
          fresh.values.reserve(B * d);
        }
        block = &layer_blocks_[n_blocks++];
        block->layer = layer;
        block->kv_head = g;
        block->block_id = pos / B;
        block->positions.clear();
        block->scores.clear();
        block->keys.clear();
        block->values.clear();
      }
      block->positions.push_back(pos);
      block->scores.push_back(scores[e]);
      const size_t to = block->keys.size();
      block->keys.resize(to + d);
      block->values.resize(to + d);
      float* k = block->keys.data() + to;
      float* v = block->values.data() + to;
      for (int64_t i = 0; i < d; ++i) {
        k[i] = kernels::BFloat16ToFloat(keys[e * d + i]);
        v[i] = kernels::BFloat16ToFloat(values[e * d + i]);
      }
    }
  }
  if (n_blocks == 0) return;
  absl::Status s =
      archive_->PutBatch(std::span<const ArchivedBlock>(layer_blocks_.data(), n_blocks));
  if (s.ok()) return;
  std::unique_lock<std::mutex> lock(mu_);
  if (writer_status_.ok()) writer_status_ = s;
}

void CudaSparseKMemory::set_archive(BlockArchive* archive) {
  HandOverSegment();
  DrainArchive();
  archive_ = archive;
}

const absl::Status& CudaSparseKMemory::archive_status() const {
  DrainArchive();
  return archive_status_;
}

absl::StatusOr<int64_t> CudaSparseKMemory::InsertRecalled(
    int32_t layer, int32_t g, const std::vector<ArchivedBlock>& blocks) {
  cu::Context& ctx = *ctx_;
  const int64_t d = model_.head_dim;
  int64_t incoming = 0;
  for (const ArchivedBlock& b : blocks) incoming += static_cast<int64_t>(b.positions.size());
  HandOverSegment();
  DrainArchive();
  const int64_t M = slot_count(layer, g);
  LONGREAD_RETURN_IF_ERROR(EnsureCapacity(M + incoming));
  const int64_t cap = capacity_;
  SyncMeta(layer);
  HeadMeta& hm = meta_[layer * n_kv_heads_ + g];
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
  LONGREAD_RETURN_IF_ERROR(cu::Upload(ctx, merged.positions.data(), total * 8,
                                      positions_[layer].as<int64_t>() + g * cap));
  LONGREAD_RETURN_IF_ERROR(
      cu::Upload(ctx, merged.scores.data(), total * 4, scores_[layer].as<float>() + g * cap));
  hm = std::move(merged);
  counts_[layer * n_kv_heads_ + g] = total;
  LONGREAD_RETURN_IF_ERROR(UploadCounts(layer));
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
  // Slots keep their rows: dropping the tail is bookkeeping (the counts) only.
  HandOverSegment();
  DrainArchive();
  for (int32_t l = 0; l < model_.n_layers; ++l) {
    SyncMeta(l);
    for (int32_t g = 0; g < n_kv_heads_; ++g) {
      HeadMeta& hm = meta_[l * n_kv_heads_ + g];
      const auto first = std::lower_bound(hm.positions.begin(), hm.positions.end(), position);
      const size_t kept = static_cast<size_t>(first - hm.positions.begin());
      hm.positions.resize(kept);
      hm.scores.resize(kept);
      counts_[l * n_kv_heads_ + g] = static_cast<int64_t>(kept);
    }
    LONGREAD_RETURN_IF_ERROR(UploadCounts(l));
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
  HandOverSegment();
  DrainArchive();
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
  HandOverSegment();
  DrainArchive();
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
      LONGREAD_RETURN_IF_ERROR(cu::Upload(*ctx_, h.positions.data(), M * 8,
                                          positions_[l].as<int64_t>() + g * capacity_));
      LONGREAD_RETURN_IF_ERROR(
          cu::Upload(*ctx_, h.scores.data(), M * 4, scores_[l].as<float>() + g * capacity_));
      meta_[l * n_kv_heads_ + g].positions = h.positions;
      meta_[l * n_kv_heads_ + g].scores = h.scores;
      counts_[l * n_kv_heads_ + g] = M;
    }
    counts_pending_[l] = 0;
    meta_valid_[l] = 1;
    LONGREAD_RETURN_IF_ERROR(UploadCounts(l));
  }
  next_position_ = snapshot.token_offset;
  return ctx_->Synchronize();
}

}  // namespace longread::engine
