#include "engine/memory/runner.h"

#include <algorithm>
#include <functional>
#include <utility>

#include "absl/strings/str_cat.h"

namespace longread::engine {

uint64_t RunnerConfig::Hash() const {
  // Segment length changes which keys share a segment, hence the memory's contents.
  uint64_t h = memory.Hash();
  for (int i = 0; i < 8; ++i) {
    h ^= (static_cast<uint64_t>(segment_tokens) >> (8 * i)) & 0xff;
    h *= 1099511628211ull;
  }
  return h;
}

RecurrentRunner::RecurrentRunner(LlamaModel* model, const RunnerConfig& config,
                                 std::shared_ptr<const ScorerWeights> scorer,
                                 kernels::ThreadPool* pool)
    : model_(model),
      config_(config),
      pool_(pool),
      memory_(model->config(), config.memory, std::move(scorer)) {}

namespace {

// Records each layer's un-rotated queries while a dense memory does the attention.
class QueryCapture : public AttentionMemory {
 public:
  QueryCapture(const ModelConfig& model, std::vector<std::vector<float>>* queries)
      : dense_(model, MemoryConfig::Dense(), nullptr),
        queries_(queries),
        width_(int64_t{model.n_heads} * model.head_dim) {
    queries_->assign(model.n_layers, {});
  }
  absl::Status AttendAndUpdate(const SegmentLayerInput& in, float* out,
                               kernels::ThreadPool* pool) override {
    (*queries_)[in.layer].assign(in.q, in.q + in.n_tokens * width_);  // before RoPE
    return dense_.AttendAndUpdate(in, out, pool);
  }
  void EndSegment(int64_t n) override { dense_.EndSegment(n); }
  int64_t next_position() const override { return dense_.next_position(); }

 private:
  SparseKMemory dense_;
  std::vector<std::vector<float>>* queries_;
  int64_t width_;
};

// Passes attention through to the real memory, showing each layer's input to `observe` first.
class CapturingMemory : public AttentionMemory {
 public:
  CapturingMemory(AttentionMemory* inner, std::function<void(const SegmentLayerInput&)> observe)
      : inner_(inner), observe_(std::move(observe)) {}
  absl::Status AttendAndUpdate(const SegmentLayerInput& in, float* out,
                               kernels::ThreadPool* pool) override {
    observe_(in);
    return inner_->AttendAndUpdate(in, out, pool);
  }
  void EndSegment(int64_t n) override { inner_->EndSegment(n); }
  int64_t next_position() const override { return inner_->next_position(); }

 private:
  AttentionMemory* inner_;
  std::function<void(const SegmentLayerInput&)> observe_;
};

uint64_t MixTokens(uint64_t h, std::span<const int32_t> tokens) {
  for (int32_t t : tokens) {
    for (int i = 0; i < 4; ++i) {
      h ^= (static_cast<uint32_t>(t) >> (8 * i)) & 0xff;
      h *= 1099511628211ull;
    }
  }
  return h;
}

}  // namespace

uint64_t RecurrentRunner::StateHash() const {
  return task_.empty() ? config_.Hash() : MixTokens(config_.Hash() ^ 0x7461736bull, task_);
}

static absl::Status CaptureQueries(LlamaModel* model, std::span<const int32_t> tokens,
                                   kernels::ThreadPool* pool,
                                   std::vector<std::vector<float>>* queries) {
  QueryCapture capture(model->config(), queries);
  return model->Forward(tokens, capture, LogitsMode::kNone, nullptr, pool);
}

absl::StatusOr<int64_t> RecurrentRunner::Recall(std::span<const int32_t> question, int64_t blocks,
                                                int64_t candidates) {
  if (archive_ == nullptr || blocks <= 0 || question.empty()) return 0;
  if (!memory_.archive_status().ok()) return memory_.archive_status();
  if (auto s = Flush(); !s.ok()) return s;
  const ModelConfig& c = model_->config();
  std::vector<std::vector<float>> queries;
  if (auto s = CaptureQueriesInContext(question, &queries); !s.ok()) return s;
  const int64_t n = static_cast<int64_t>(question.size()), d = c.head_dim;
  const int32_t group = c.n_heads / c.n_kv_heads;
  const int64_t fetch = std::max(blocks, candidates);
  // Fetch everything first so that a failing archive leaves the memory untouched.
  std::vector<std::vector<ArchivedBlock>> recalled(static_cast<size_t>(c.n_layers) * c.n_kv_heads);
  std::vector<float> group_queries(n * group * d);
  for (int32_t l = 0; l < c.n_layers; ++l) {
    for (int32_t g = 0; g < c.n_kv_heads; ++g) {
      for (int64_t t = 0; t < n; ++t) {
        const float* src = queries[l].data() + (t * c.n_heads + g * group) * d;
        std::copy(src, src + group * d, group_queries.data() + t * group * d);
      }
      auto got = archive_->Recall(l, g, group_queries, n * group, fetch);
      if (!got.ok()) return got.status();
      std::vector<ArchivedBlock>& chosen = recalled[l * c.n_kv_heads + g];
      if (static_cast<int64_t>(got->size()) <= blocks) {
        chosen = std::move(*got);
        continue;
      }
      const HeadMemorySnapshot& held = memory_.held(l, g);
      const std::vector<double> mass =
          BlockAttentionMass(group_queries, n * group, d, held.keys,
                             static_cast<int64_t>(held.positions.size()), *got);
      const std::vector<float> score(mass.begin(), mass.end());
      for (int64_t i : TopRIndices(score, blocks)) chosen.push_back(std::move((*got)[i]));
    }
  }
  int64_t added = 0;
  for (int32_t l = 0; l < c.n_layers; ++l) {
    for (int32_t g = 0; g < c.n_kv_heads; ++g) {
      added += memory_.InsertRecalled(l, g, recalled[l * c.n_kv_heads + g]);
    }
  }
  return added;
}

absl::Status RecurrentRunner::CaptureQueriesInContext(std::span<const int32_t> tokens,
                                                      std::vector<std::vector<float>>* queries) {
  // A frozen memory only appends the tokens' slots (nothing goes to the archive), so rewinding
  // to where reading stopped leaves the memory as it was.
  const int64_t start = memory_.next_position();
  const bool was_frozen = memory_.eviction_frozen();
  memory_.FreezeEviction();
  const ModelConfig& c = model_->config();
  const int64_t width = int64_t{c.n_heads} * c.head_dim;
  queries->assign(c.n_layers, {});
  CapturingMemory capture(&memory_, [&](const SegmentLayerInput& in) {
    auto& q = (*queries)[in.layer];
    q.insert(q.end(), in.q, in.q + in.n_tokens * width);  // before RoPE
  });
  absl::Status status;
  const size_t L = static_cast<size_t>(config_.segment_tokens);
  for (size_t at = 0; at < tokens.size() && status.ok(); at += L) {
    const auto segment = tokens.subspan(at, std::min(L, tokens.size() - at));
    status = CheckPositions(static_cast<int64_t>(segment.size()));
    if (status.ok()) status = model_->Forward(segment, capture, LogitsMode::kNone, nullptr, pool_);
  }
  if (auto s = memory_.Rewind(start); !s.ok() && status.ok()) status = s;
  memory_.set_eviction_frozen(was_frozen);
  return status;
}

absl::Status RecurrentRunner::SetTask(std::span<const int32_t> task) {
  if (task.empty()) return absl::OkStatus();
  if (tokens_read() > 0 || !pending_.empty()) {
    return absl::FailedPreconditionError("runner: set the task before reading the document");
  }
  std::vector<std::vector<float>> queries;
  if (auto s = CaptureQueries(model_, task, pool_, &queries); !s.ok()) return s;
  memory_.SetTaskQueries(std::move(queries), static_cast<int64_t>(task.size()));
  task_.assign(task.begin(), task.end());
  return absl::OkStatus();
}

absl::Status RecurrentRunner::CheckPositions(int64_t n_tokens) const {
  const ModelConfig& c = model_->config();
  const MemoryConfig& m = config_.memory;
  // The largest position a query can be given must stay inside the trained context.
  const int64_t last_position = m.is_dense() || m.position_mode == PositionMode::kOriginal
                                    ? memory_.next_position() + n_tokens
                                    : memory_.max_slot_count() + n_tokens;
  if (last_position > c.context_length) {
    return absl::OutOfRangeError(absl::StrCat(
        "reading would place a token at position ", last_position,
        " beyond the model's trained context of ", c.context_length,
        m.is_dense() ? " tokens (dense attention); use the SparseK memory for longer inputs"
                     : " tokens; lower --memory-k, --window or --segment-tokens"));
  }
  return absl::OkStatus();
}

absl::Status RecurrentRunner::ReadSegment(std::span<const int32_t> segment, LogitsMode mode,
                                          std::vector<float>* logits) {
  if (auto s = CheckPositions(static_cast<int64_t>(segment.size())); !s.ok()) return s;
  auto s = model_->Forward(segment, memory_, mode, logits, pool_);
  if (s.ok()) ++segments_read_;
  return s;
}

absl::Status RecurrentRunner::Feed(std::span<const int32_t> tokens, const ProgressFn& progress) {
  const int64_t L = config_.segment_tokens;
  size_t used = 0;
  // Read whole segments straight from the input; only a remainder is copied.
  if (!pending_.empty()) {
    const size_t take = std::min(tokens.size(), static_cast<size_t>(L) - pending_.size());
    pending_.insert(pending_.end(), tokens.begin(), tokens.begin() + take);
    used = take;
    if (static_cast<int64_t>(pending_.size()) < L) return absl::OkStatus();
    if (auto s = ReadSegment(pending_, LogitsMode::kNone, nullptr); !s.ok()) return s;
    pending_.clear();
    if (progress) progress(tokens_read());
  }
  while (tokens.size() - used >= static_cast<size_t>(L)) {
    if (auto s = ReadSegment(tokens.subspan(used, L), LogitsMode::kNone, nullptr); !s.ok()) {
      return s;
    }
    used += L;
    if (progress) progress(tokens_read());
  }
  pending_.assign(tokens.begin() + used, tokens.end());
  return absl::OkStatus();
}

absl::Status RecurrentRunner::Flush(const ProgressFn& progress) {
  if (pending_.empty()) return absl::OkStatus();
  if (auto s = ReadSegment(pending_, LogitsMode::kNone, nullptr); !s.ok()) return s;
  pending_.clear();
  if (progress) progress(tokens_read());
  return absl::OkStatus();
}

absl::Status RecurrentRunner::ReadWithLogits(std::span<const int32_t> tokens,
                                             std::vector<float>* logits) {
  if (auto s = Flush(); !s.ok()) return s;
  logits->clear();
  const size_t L = static_cast<size_t>(config_.segment_tokens);
  for (size_t at = 0; at < tokens.size(); at += L) {
    auto segment = tokens.subspan(at, std::min(L, tokens.size() - at));
    if (auto s = ReadSegment(segment, LogitsMode::kAll, &logits_); !s.ok()) return s;
    logits->insert(logits->end(), logits_.begin(), logits_.end());
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> RecurrentRunner::Generate(std::span<const int32_t> prompt,
                                                               const GenerateOptions& options,
                                                               const TokenFn& on_token) {
  if (prompt.empty()) return absl::InvalidArgumentError("generate: empty prompt");
  if (auto s = Flush(); !s.ok()) return s;
  memory_.FreezeEviction();
  const size_t L = static_cast<size_t>(config_.segment_tokens);
  for (size_t at = 0; at < prompt.size(); at += L) {
    const size_t len = std::min(L, prompt.size() - at);
    const bool last = at + len == prompt.size();
    auto s = ReadSegment(prompt.subspan(at, len), last ? LogitsMode::kLast : LogitsMode::kNone,
                         &logits_);
    if (!s.ok()) return s;
  }
  Sampler sampler(options.sampling);
  std::vector<int32_t> out;
  const int32_t vocab = model_->config().vocab_size;
  for (int64_t i = 0; i < options.max_new_tokens; ++i) {
    const int32_t token = sampler.Next(std::span<const float>(logits_.data(), vocab));
    out.push_back(token);
    if (on_token && !on_token(token)) break;
    if (std::find(options.stop_tokens.begin(), options.stop_tokens.end(), token) !=
        options.stop_tokens.end()) {
      break;
    }
    if (i + 1 == options.max_new_tokens) break;
    const int32_t next[1] = {token};
    if (auto s = ReadSegment(next, LogitsMode::kLast, &logits_); !s.ok()) return s;
  }
  return out;
}

MemorySnapshot RecurrentRunner::Snapshot() const {
  MemorySnapshot snapshot;
  memory_.ExportTo(&snapshot);
  snapshot.model_fingerprint = model_->fingerprint();
  snapshot.config_hash = StateHash();
  snapshot.segment_index = segments_read_;
  snapshot.pending_tokens = pending_;
  return snapshot;
}

absl::Status RecurrentRunner::Restore(const MemorySnapshot& snapshot) {
  if (snapshot.model_fingerprint != model_->fingerprint()) {
    return absl::FailedPreconditionError(absl::StrCat("runner: snapshot is of model ",
                                                      snapshot.model_fingerprint,
                                                      ", this run uses ", model_->fingerprint()));
  }
  // A task-aware run must be given the same task (SetTask) before it is restored.
  if (snapshot.config_hash != StateHash()) {
    return absl::FailedPreconditionError(
        absl::StrCat("runner: snapshot was taken with config/task ", snapshot.config_hash,
                     ", this run uses ", StateHash()));
  }
  // The memory checks its own part against its own config hash.
  MemorySnapshot memory_part = snapshot;
  memory_part.config_hash = config_.memory.Hash();
  if (auto s = memory_.ImportFrom(memory_part); !s.ok()) return s;
  pending_ = snapshot.pending_tokens;
  segments_read_ = snapshot.segment_index;
  return absl::OkStatus();
}

}  // namespace longread::engine
