#include "engine/memory/runner.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/memory/cpu_backend.h"

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
    : owned_backend_(std::make_unique<CpuReadingBackend>(model)),
      backend_(owned_backend_.get()),
      config_(config),
      pool_(pool),
      state_(static_cast<CpuReadingBackend*>(owned_backend_.get())
                 ->NewCpuDocument(config.memory, std::move(scorer), pool)) {}

RecurrentRunner::RecurrentRunner(ReadingBackend* backend, std::unique_ptr<DocumentState> state,
                                 const RunnerConfig& config, kernels::ThreadPool* pool)
    : backend_(backend), config_(config), pool_(pool), state_(std::move(state)) {}

absl::StatusOr<std::unique_ptr<RecurrentRunner>> RecurrentRunner::Create(
    ReadingBackend* backend, const RunnerConfig& config,
    std::shared_ptr<const ScorerWeights> scorer, kernels::ThreadPool* pool) {
  auto state = backend->NewDocument(config.memory, std::move(scorer), pool);
  if (!state.ok()) return state.status();
  return std::make_unique<RecurrentRunner>(backend, std::move(*state), config, pool);
}

const SparseKMemory& RecurrentRunner::memory() const {
  const SparseKMemory* memory = state_->host_memory();
  if (memory == nullptr) {
    std::fprintf(stderr, "runner: memory() is the CPU memory; this runner reads on %s\n",
                 std::string(backend_->device()).c_str());
    std::abort();
  }
  return *memory;
}

namespace {

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

absl::StatusOr<int64_t> RecurrentRunner::Recall(std::span<const int32_t> question,
                                                const RecallOptions& options) {
  const int64_t blocks = options.blocks;
  if (archive_ == nullptr || blocks <= 0 || question.empty()) return 0;
  if (!state_->archive_status().ok()) return state_->archive_status();
  if (auto s = FlushPending({}, /*batched=*/false); !s.ok()) return s;
  const ModelConfig& c = backend_->config();
  std::vector<std::vector<float>> queries;
  if (auto s = CaptureQueriesInContext(question, &queries); !s.ok()) return s;
  const int64_t n = static_cast<int64_t>(question.size()), d = c.head_dim;
  const int32_t group = c.n_heads / c.n_kv_heads;
  const int64_t n_heads = int64_t{c.n_layers} * c.n_kv_heads;
  auto layer_of = [&](int64_t h) { return static_cast<int32_t>(h / c.n_kv_heads); };
  auto kv_head_of = [&](int64_t h) { return static_cast<int32_t>(h % c.n_kv_heads); };
  // Fetch every head's candidates first so that a failing archive leaves the memory untouched.
  std::vector<std::vector<ArchivedBlock>> got(n_heads);
  std::vector<std::vector<float>> head_queries(n_heads, std::vector<float>(n * group * d));
  for (int64_t h = 0; h < n_heads; ++h) {
    for (int64_t t = 0; t < n; ++t) {
      const float* src = queries[layer_of(h)].data() + (t * c.n_heads + kv_head_of(h) * group) * d;
      std::copy(src, src + group * d, head_queries[h].data() + t * group * d);
    }
    auto fetched = archive_->Recall(layer_of(h), kv_head_of(h), head_queries[h], n * group,
                                    std::max(blocks, options.candidates));
    if (!fetched.ok()) return fetched.status();
    got[h] = std::move(*fetched);
  }
  // The bounds chose the candidates; the exact peak decides among them (unless a head keeps all).
  const bool rank_exactly = options.shared || options.candidates > blocks;
  std::vector<std::vector<double>> peak(n_heads);
  // Shared: the peaks of blocks a head still holds count too (a block the retrieval heads kept
  // is the one to bring to the heads that evicted it); sinks are left out.
  std::vector<std::map<int64_t, double>> held_peak(options.shared ? n_heads : 0);
  if (rank_exactly) {
    if (auto s = state_->FetchHeld(); !s.ok()) return s;
    const int64_t B = config_.memory.block_tokens, sinks = config_.memory.sinks;
    pool_->ParallelFor(n_heads, [&](int64_t begin, int64_t end) {
      std::vector<int64_t> held_ids;
      for (int64_t h = begin; h < end; ++h) {
        const HeadMemorySnapshot& held = state_->held(layer_of(h), kv_head_of(h));
        held_ids.clear();
        if (options.shared) {
          for (int64_t p : held.positions) held_ids.push_back(p < sinks ? -1 : p / B);
        }
        peak[h] = BlockAttentionPeak(head_queries[h], n * group, d, held.keys,
                                     static_cast<int64_t>(held.positions.size()), got[h], held_ids,
                                     options.shared ? &held_peak[h] : nullptr);
      }
    });
  }
  std::vector<std::vector<ArchivedBlock>> recalled(n_heads);
  if (options.shared) {
    // One choice for the whole model: a block's score is its peak over every head.
    std::map<int64_t, double> best;  // block id -> peak (ordered: ties go to the older block)
    // Only a block that some head has archived can be recalled: one that every head still holds
    // would spend the recall on nothing.
    std::set<int64_t> archived;
    for (int64_t h = 0; h < n_heads; ++h) {
      for (const auto& [id, p] : held_peak[h]) {
        double& b = best[id];
        b = std::max(b, p);
      }
      for (size_t i = 0; i < got[h].size(); ++i) {
        archived.insert(got[h][i].block_id);
        double& b = best[got[h][i].block_id];
        b = std::max(b, peak[h][i]);
      }
    }
    std::vector<int64_t> ids;
    std::vector<float> scores;
    for (const auto& [id, score] : best) {
      if (!archived.contains(id)) continue;
      ids.push_back(id);
      scores.push_back(static_cast<float>(score));
    }
    std::vector<int64_t> chosen;
    for (int64_t i : TopRIndices(scores, blocks)) chosen.push_back(ids[i]);
    // Every head that archived a chosen block gets it back: from its candidates when the bounds
    // passed it on, else fetched by id (positions a head still holds are skipped on insertion).
    for (int64_t h = 0; h < n_heads; ++h) {
      std::vector<int64_t> missing = chosen;
      for (ArchivedBlock& b : got[h]) {
        if (std::binary_search(chosen.begin(), chosen.end(), b.block_id)) {
          std::erase(missing, b.block_id);
          recalled[h].push_back(std::move(b));
        }
      }
      if (missing.empty()) continue;
      auto fetched = archive_->Fetch(layer_of(h), kv_head_of(h), missing);
      if (!fetched.ok()) return fetched.status();
      for (ArchivedBlock& b : *fetched) recalled[h].push_back(std::move(b));
      std::sort(recalled[h].begin(), recalled[h].end(),
                [](const auto& a, const auto& b) { return a.positions[0] < b.positions[0]; });
    }
  } else {
    for (int64_t h = 0; h < n_heads; ++h) {
      if (!rank_exactly || static_cast<int64_t>(got[h].size()) <= blocks) {
        recalled[h] = std::move(got[h]);
        continue;
      }
      const std::vector<float> score(peak[h].begin(), peak[h].end());
      for (int64_t i : TopRIndices(score, blocks)) recalled[h].push_back(std::move(got[h][i]));
    }
  }
  int64_t added = 0;
  for (int64_t h = 0; h < n_heads; ++h) {
    auto inserted = state_->InsertRecalled(layer_of(h), kv_head_of(h), recalled[h]);
    if (!inserted.ok()) return inserted.status();
    added += *inserted;
  }
  return added;
}

absl::Status RecurrentRunner::CaptureQueriesInContext(std::span<const int32_t> tokens,
                                                      std::vector<std::vector<float>>* queries) {
  // A frozen memory only appends the tokens' slots (nothing goes to the archive), so rewinding
  // to where reading stopped leaves the memory as it was.
  const int64_t start = state_->next_position();
  const bool was_frozen = state_->eviction_frozen();
  state_->set_eviction_frozen(true);
  const ModelConfig& c = backend_->config();
  const int64_t width = int64_t{c.n_heads} * c.head_dim;
  queries->assign(c.n_layers, {});
  const QueryObserver capture = [&](int32_t layer, int64_t n_tokens, const float* q_in) {
    auto& q = (*queries)[layer];
    q.insert(q.end(), q_in, q_in + n_tokens * width);  // before RoPE
  };
  absl::Status status;
  const size_t L = static_cast<size_t>(config_.segment_tokens);
  for (size_t at = 0; at < tokens.size() && status.ok(); at += L) {
    const auto segment = tokens.subspan(at, std::min(L, tokens.size() - at));
    status = CheckPositions(static_cast<int64_t>(segment.size()));
    if (status.ok()) status = state_->ReadSegment(segment, LogitsMode::kNone, nullptr, &capture);
  }
  if (auto s = state_->Rewind(start); !s.ok() && status.ok()) status = s;
  state_->set_eviction_frozen(was_frozen);
  return status;
}

absl::Status RecurrentRunner::SetTask(std::span<const int32_t> task) {
  if (task.empty()) return absl::OkStatus();
  if (tokens_read() > 0 || !pending_.empty()) {
    return absl::FailedPreconditionError("runner: set the task before reading the document");
  }
  std::vector<std::vector<float>> queries;
  if (auto s = backend_->CaptureQueries(task, pool_, &queries); !s.ok()) return s;
  state_->SetTaskQueries(std::move(queries), static_cast<int64_t>(task.size()));
  task_.assign(task.begin(), task.end());
  return absl::OkStatus();
}

absl::Status RecurrentRunner::CheckPositions(int64_t n_tokens) const {
  const ModelConfig& c = backend_->config();
  const MemoryConfig& m = config_.memory;
  // The largest position a query can be given must stay inside the trained context.
  const int64_t last_position = m.is_dense() || m.position_mode == PositionMode::kOriginal
                                    ? state_->next_position() + n_tokens
                                    : state_->max_slot_count() + n_tokens;
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
                                          std::vector<float>* logits, bool batched) {
  if (auto s = CheckPositions(static_cast<int64_t>(segment.size())); !s.ok()) return s;
  auto s = batched && batcher_ != nullptr ? batcher_->Read(state_.get(), segment, mode, logits)
                                          : state_->ReadSegment(segment, mode, logits, nullptr);
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
    if (auto s = ReadSegment(pending_, LogitsMode::kNone, nullptr, /*batched=*/true); !s.ok()) {
      return s;
    }
    pending_.clear();
    if (progress) progress(tokens_read());
  }
  while (tokens.size() - used >= static_cast<size_t>(L)) {
    if (auto s = ReadSegment(tokens.subspan(used, L), LogitsMode::kNone, nullptr, /*batched=*/true);
        !s.ok()) {
      return s;
    }
    used += L;
    if (progress) progress(tokens_read());
  }
  pending_.assign(tokens.begin() + used, tokens.end());
  return absl::OkStatus();
}

absl::Status RecurrentRunner::Flush(const ProgressFn& progress) {
  return FlushPending(progress, /*batched=*/true);
}

absl::Status RecurrentRunner::FlushPending(const ProgressFn& progress, bool batched) {
  if (pending_.empty()) return absl::OkStatus();
  if (auto s = ReadSegment(pending_, LogitsMode::kNone, nullptr, batched); !s.ok()) return s;
  pending_.clear();
  if (progress) progress(tokens_read());
  return absl::OkStatus();
}

absl::Status RecurrentRunner::ReadWithLogits(std::span<const int32_t> tokens,
                                             std::vector<float>* logits) {
  if (auto s = FlushPending({}, /*batched=*/false); !s.ok()) return s;
  logits->clear();
  const size_t L = static_cast<size_t>(config_.segment_tokens);
  for (size_t at = 0; at < tokens.size(); at += L) {
    auto segment = tokens.subspan(at, std::min(L, tokens.size() - at));
    if (auto s = ReadSegment(segment, LogitsMode::kAll, &logits_); !s.ok()) return s;
    logits->insert(logits->end(), logits_.begin(), logits_.end());
  }
  return absl::OkStatus();
}

absl::Status RecurrentRunner::BeginGenerate(std::span<const int32_t> prompt,
                                            const GenerateOptions& options) {
  generation_.reset();
  if (prompt.empty()) return absl::InvalidArgumentError("generate: empty prompt");
  if (auto s = FlushPending({}, /*batched=*/false); !s.ok()) return s;
  state_->set_eviction_frozen(true);
  const size_t L = static_cast<size_t>(config_.segment_tokens);
  for (size_t at = 0; at < prompt.size(); at += L) {
    const size_t len = std::min(L, prompt.size() - at);
    const bool last = at + len == prompt.size();
    auto s = ReadSegment(prompt.subspan(at, len), last ? LogitsMode::kLast : LogitsMode::kNone,
                         &logits_);
    if (!s.ok()) return s;
  }
  generation_.emplace(Generation{options, Sampler(options.sampling)});
  generation_->sampler.SetPromptTail(prompt);
  return absl::OkStatus();
}

absl::StatusOr<RecurrentRunner::GeneratedToken> RecurrentRunner::NextToken() {
  if (!generation_.has_value() || generation_->done) {
    return absl::FailedPreconditionError("generate: no generation in progress");
  }
  Generation& g = *generation_;
  if (g.options.max_new_tokens <= 0) {
    g.done = true;
    return absl::FailedPreconditionError("generate: max_new_tokens is 0");
  }
  if (g.unread >= 0) {
    const int32_t previous[1] = {g.unread};
    if (auto s = ReadSegment(previous, LogitsMode::kLast, &logits_); !s.ok()) {
      g.done = true;
      return s;
    }
    g.unread = -1;
  }
  const int32_t vocab = backend_->config().vocab_size;
  const int32_t token = g.sampler.Next(std::span<const float>(logits_.data(), vocab));
  ++g.generated;
  const auto& stops = g.options.stop_tokens;
  g.done = std::find(stops.begin(), stops.end(), token) != stops.end() ||
           g.generated >= g.options.max_new_tokens;
  if (!g.done) g.unread = token;
  return GeneratedToken{token, g.done};
}

absl::StatusOr<std::vector<int32_t>> RecurrentRunner::Generate(std::span<const int32_t> prompt,
                                                               const GenerateOptions& options,
                                                               const TokenFn& on_token) {
  if (auto s = BeginGenerate(prompt, options); !s.ok()) return s;
  std::vector<int32_t> out;
  while (options.max_new_tokens > 0) {
    auto next = NextToken();
    if (!next.ok()) return next.status();
    out.push_back(next->token);
    if (on_token && !on_token(next->token)) break;
    if (next->done) break;
  }
  generation_.reset();
  return out;
}

MemorySnapshot RecurrentRunner::Snapshot() const {
  auto snapshot = TakeSnapshot();
  if (!snapshot.ok()) return MemorySnapshot();
  return *std::move(snapshot);
}

absl::StatusOr<MemorySnapshot> RecurrentRunner::TakeSnapshot() const {
  MemorySnapshot snapshot;
  if (auto s = state_->ExportTo(&snapshot); !s.ok()) return s;
  snapshot.model_fingerprint = backend_->fingerprint();
  snapshot.config_hash = StateHash();
  snapshot.segment_index = segments_read_;
  snapshot.pending_tokens = pending_;
  return snapshot;
}

absl::Status RecurrentRunner::Restore(const MemorySnapshot& snapshot) {
  if (snapshot.model_fingerprint != backend_->fingerprint()) {
    return absl::FailedPreconditionError(absl::StrCat("runner: snapshot is of model ",
                                                      snapshot.model_fingerprint,
                                                      ", this run uses ", backend_->fingerprint()));
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
  if (auto s = state_->ImportFrom(memory_part); !s.ok()) return s;
  pending_ = snapshot.pending_tokens;
  segments_read_ = snapshot.segment_index;
  generation_.reset();
  return absl::OkStatus();
}

}  // namespace longread::engine
