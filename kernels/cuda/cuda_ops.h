// The CUDA twins of kernels/ops.h and kernels/attention.h: the same ops, shapes and conventions
// (row-major [token][feature], head-major keys, per-key visibility intervals), with bf16 storage,
// fp32 accumulation and fp32 scores. The CPU kernels stay the reference; tests/kernels/cuda
// checks every op here against them.
//
// Every op enqueues on the Context's stream and works on device pointers; nothing here copies
// to or from the host except Upload/Download. A Context is what a CUDA backend owns (stream,
// cuBLASLt handle and workspace, per-shape GEMM plans); weights are uploaded and dequantized to
// bf16 once (UploadMatrix), so the hot path moves no weights and makes no host copies.
//
// This header needs no CUDA headers: engine code compiled by the host compiler includes it.
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/select_args.h"
#include "kernels/dtype.h"
#include "kernels/ops.h"

namespace longread::kernels::cuda {

// A bf16 value as its bits: the host only moves them (kernels/half.h converts).
using Bf16 = uint16_t;

// True when a CUDA device can be used (a driver, and at least one device).
bool DeviceAvailable();

// Device memory, freed on destruction. Move-only.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  static absl::StatusOr<DeviceBuffer> Allocate(int64_t bytes);
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();

  int64_t bytes() const { return bytes_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }

 private:
  void* data_ = nullptr;
  int64_t bytes_ = 0;
};

// One backend's stream, cuBLASLt handle and workspace, and the GEMM plans it has chosen.
class Context {
 public:
  // `gemm` false: a stream and its scratch only, for work that multiplies no weights (one
  // document's memory in a batched pass: its own stream without a 32 MiB cuBLASLt workspace);
  // MatMul on it is FailedPrecondition.
  static absl::StatusOr<std::unique_ptr<Context>> Create(int device = 0, bool gemm = true);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  // Blocks until every op enqueued so far has finished; reports any asynchronous error.
  absl::Status Synchronize();
  void* stream() const;  // the cudaStream_t

  struct Impl;
  Impl& impl() { return *impl_; }

 private:
  explicit Context(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Host <-> device copies on the context's stream. Download synchronizes (its result is needed).
absl::Status Upload(Context& ctx, const void* host, int64_t bytes, void* device);
absl::Status Download(Context& ctx, const void* device, int64_t bytes, void* host);

// Host memory that is page-locked and mapped into the device's address space: copies to it
// run asynchronously, and kernels can write it directly. Move-only.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  static absl::StatusOr<PinnedBuffer> Allocate(int64_t bytes);
  PinnedBuffer(PinnedBuffer&& other) noexcept;
  PinnedBuffer& operator=(PinnedBuffer&& other) noexcept;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  ~PinnedBuffer();

  int64_t bytes() const { return bytes_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }

 private:
  void* data_ = nullptr;
  int64_t bytes_ = 0;
};

// A second stream, for work that must not hold up the Context's (archive copies). Move-only.
class SideStream {
 public:
  static absl::StatusOr<SideStream> Create();
  SideStream() = default;
  SideStream(SideStream&& other) noexcept;
  SideStream& operator=(SideStream&& other) noexcept;
  SideStream(const SideStream&) = delete;
  SideStream& operator=(const SideStream&) = delete;
  ~SideStream();
  void* get() const { return stream_; }  // the cudaStream_t
  absl::Status Synchronize() const;      // no-op on a default-constructed one

 private:
  void* stream_ = nullptr;
};

// A CUDA event (no timing): ordering between streams, and the host waiting for one point of a
// stream rather than for all of it. Move-only.
class Event {
 public:
  static absl::StatusOr<Event> Create();
  Event() = default;
  Event(Event&& other) noexcept;
  Event& operator=(Event&& other) noexcept;
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  ~Event();
  absl::Status Record(void* stream);          // marks what `stream` has enqueued so far
  absl::Status MakeWait(void* stream) const;  // `stream` waits for the mark
  absl::Status Synchronize() const;           // the host waits for the mark

 private:
  void* event_ = nullptr;
};

// Device -> pinned host copy on the context's stream, not waited for (an Event says when).
absl::Status DownloadAsync(Context& ctx, const void* device, int64_t bytes, void* pinned_host);

// A weight matrix resident on the device as bf16, [rows][cols] row-major.
struct DeviceMatrix {
  int64_t rows = 0;
  int64_t cols = 0;
  DeviceBuffer data;
  const Bf16* bf16() const { return data.as<const Bf16>(); }
};

// Uploads w in its file encoding (Q4_0/Q4_1/Q8_0/F16/BF16/F32) and dequantizes it on the device
// to bf16, once: the element values are the CPU's DequantizeRow values rounded to bf16.
absl::StatusOr<DeviceMatrix> UploadMatrix(Context& ctx, const MatrixView& w);

// y[t][r] = sum_c W[r][c] * x[t][c] through cuBLASLt (bf16 inputs, fp32 accumulation), with y
// stored as bf16 or fp32 (logits). x: [n_tokens][w.cols], y: [n_tokens][w.rows].
absl::Status MatMul(Context& ctx, const DeviceMatrix& w, const Bf16* x, int64_t n_tokens, Bf16* y);
absl::Status MatMul(Context& ctx, const DeviceMatrix& w, const Bf16* x, int64_t n_tokens, float* y);

// out[t] = table[tokens[t]] as fp32 (the residual stream stays fp32). Ids outside the table
// give zero rows (the engine validates ids before a forward pass).
absl::Status EmbeddingGather(Context& ctx, const DeviceMatrix& table, const int32_t* tokens,
                             int64_t n_tokens, float* out);

// Fused residual add and RMSNorm: residual[t] += delta[t] (skipped when delta is null), then
// out[t] = residual[t] / sqrt(mean(residual[t]^2) + eps) * weight, in fp32, stored as bf16.
absl::Status AddRmsNorm(Context& ctx, float* residual, const Bf16* delta, const float* weight,
                        int64_t n_tokens, int64_t dim, float eps, Bf16* out);

// residual += delta (the last layer's FFN output, when no norm follows).
absl::Status AddResidual(Context& ctx, float* residual, const Bf16* delta, int64_t n);

// In place on x[o][t][h][0..head_dim) for o < n_outer: the CPU's Rope at positions[t] (angles in
// double). Queries: n_outer = 1; head-major keys [kv_head][key][head_dim]: n_outer = n_kv_heads,
// n_heads = 1, so un-rotated keys are rotated at attention time at the positions the memory
// chooses, as the CPU memory does.
absl::Status Rope(Context& ctx, Bf16* x, int64_t n_outer, int64_t n_tokens, int64_t n_heads,
                  int64_t head_dim, const int64_t* positions, float theta, RopeStyle style);

// One layer-segment's RoPE for the SparseK memory, in one launch: the held and appended keys
// (un-rotated, [n_kv_heads][capacity][head_dim]) rotated into `rotated` (same layout) at
// key_positions[g * n_keys + key] for key < n_keys, and the queries q [n_q][n_heads][head_dim]
// rotated in place, those of KV head g's group at query_positions[t * n_kv_heads + g]. Each row
// equals what Rope gives it (the same rotation, bit for bit).
struct RopeMemoryArgs {
  const Bf16* keys = nullptr;
  Bf16* rotated = nullptr;
  const int64_t* key_positions = nullptr;
  int64_t n_kv_heads = 0, n_keys = 0, capacity = 0;
  Bf16* q = nullptr;
  const int64_t* query_positions = nullptr;
  int64_t n_q = 0, n_heads = 0, head_dim = 0;
  float theta = 0;
  RopeStyle style = RopeStyle::kHalf;
};
absl::Status RopeMemory(Context& ctx, const RopeMemoryArgs& args);

// dst[g][slot0 + t] = src[t][g] for t < n_tokens, g < n_heads (rows of head_dim): a segment's
// keys or values as the projections write them, appended to a head-major memory of `capacity`
// slots per head.
absl::Status ScatterHeads(Context& ctx, const Bf16* src, int64_t n_tokens, int64_t n_heads,
                          int64_t head_dim, int64_t capacity, int64_t slot0, Bf16* dst);

// dst[dst_rows[r]][.] = src[src_rows[r]][.] for r < n_rows, rows of row_elems values: a
// memory's slots moving on the device (append, compaction, staging of evicted rows). The rows
// written must not be read by the same call. Row lists are device int32 arrays.
absl::Status CopyRows(Context& ctx, const Bf16* src, const int32_t* src_rows, Bf16* dst,
                      const int32_t* dst_rows, int64_t n_rows, int64_t row_elems);
// Device-to-device copy and zero fill of `bytes`, on the context's stream.
absl::Status CopyDevice(Context& ctx, const void* src, int64_t bytes, void* dst);
absl::Status ZeroDevice(Context& ctx, void* dst, int64_t bytes);

// The task term of engine/memory's AddTaskTerm on the device, in the host code's operation
// order (no FMA contraction; double sums in order), so the terms equal the host's but for the
// last bit of exp/log: scores[j][g] += the term of key j for KV head g (the host's `+=`).
// task_queries: [n_task][n_heads][head_dim] fp32; k: [n][n_kv_heads][head_dim] bf16 (un-rotated);
// logits: n_kv_heads * rows * n floats and lse: n_kv_heads * rows floats of scratch, rows =
// n_task * n_heads / n_kv_heads. max_dot: TaskScore::kMaxDot, else kSegmentMass.
struct TaskTermArgs {
  const float* task_queries = nullptr;
  const Bf16* k = nullptr;
  int64_t n = 0, n_task = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0;
  bool max_dot = false;
  float weight = 0;
  float* logits = nullptr;
  float* lse = nullptr;
  float* scores = nullptr;  // [n][n_kv_heads]
};
absl::Status TaskTerm(Context& ctx, const TaskTermArgs& args);

// The linear importance scorer (engine/scorer ScoreTokens) on the device, in its operation order:
// out[t][h] = w[h].x[t] + b[h] + slope[h] * (first_position + t) for x [n][d] bf16, w [heads][d],
// b and slope [heads] fp32 on the device.
absl::Status LinearScores(Context& ctx, const float* w, const float* b, const float* slope,
                          const Bf16* x, int64_t n, int64_t heads, int64_t d,
                          int64_t first_position, float* out);

// The SparseK memory's block selection for all KV heads of one layer on the device (SelectArgs,
// select_args.h): the twin of engine/memory's SelectSegmentKeys (the CPU reference, with
// kernels::TopKExitTimes inside) and of the CPU memory's fold. Given the same scores it returns
// the same intervals, keep flags and new slots, bit for bit: block scores are summed in the host's
// order, and the exit times are the heap's (ties to the lower, older candidate).
absl::Status SelectSegmentKeys(Context& ctx, const SelectArgs& args);
// Kept rows to their new slots and evicted rows to staging (MoveRowsArgs).
absl::Status MoveKeptAndEvicted(Context& ctx, const MoveRowsArgs& args);
// keys[g][counts[g] + j] = k[j][g] for j < n (values alike): a segment's keys and values appended
// after each head's held slots, the counts read on the device.
absl::Status AppendSegment(Context& ctx, const Bf16* k, const Bf16* v, const int32_t* counts,
                           int64_t n, int64_t n_kv_heads, int64_t head_dim, int64_t capacity,
                           Bf16* keys, Bf16* values);
// The staged evicted rows into pinned host memory, on `stream` (a SideStream's).
absl::Status CopyEvicted(const EvictedCopyArgs& args, void* stream);

// out = silu(gate) * up in fp32, stored as bf16. out may alias gate or up.
absl::Status SiluMul(Context& ctx, const Bf16* gate, const Bf16* up, int64_t n, Bf16* out);

// The CPU AttentionArgs with bf16 storage (no per-head pointer arrays, no soft SparseK mode yet).
// Key j of KV head g is visible to query i iff visible_from[g*n_keys+j] <= i <
// visible_until[g*n_keys+j]. Values of invisible keys must be finite (they are multiplied by 0).
struct AttentionArgs {
  const Bf16* q = nullptr;  // [n_q][n_heads][head_dim], rotated
  const Bf16* k = nullptr;  // [n_kv_heads][n_keys][head_dim], rotated
  const Bf16* v = nullptr;  // [n_kv_heads][n_keys][head_dim]
  const int32_t* visible_from = nullptr;
  const int32_t* visible_until = nullptr;
  int64_t n_q = 0, n_keys = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0;
  // Keys between two KV heads' first keys in k and v: 0 means n_keys; a cache with room for
  // more keys than it holds passes its capacity.
  int64_t kv_head_stride = 0;
  float scale = 0;      // > 0
  Bf16* out = nullptr;  // [n_q][n_heads][head_dim]
  // Tile shape and register cap (kernels/cuda/launch.h); -1 is the default. For benchmarks.
  int variant = -1;
};

// FlashAttention-style tiles (64 rows of (query, head) pairs x 64 keys, online softmax in fp32,
// bf16 tensor-core products). The rows of one tile are consecutive queries times all query heads
// of one KV head, so each K/V tile is read once for the whole group. Key tiles that no query of
// a row tile can see are skipped from per-tile interval bounds. A query with no visible key
// outputs zeros. head_dim must be 64.
absl::Status Attention(Context& ctx, const AttentionArgs& args);

// out[r] = the index of the largest logits[r][.] (the first one on ties; NaNs never win).
absl::Status ArgMax(Context& ctx, const float* logits, int64_t n_rows, int64_t vocab, int32_t* out);

// Conversions for plumbing and tests.
absl::Status FloatToBf16(Context& ctx, const float* in, int64_t n, Bf16* out);
absl::Status Bf16ToFloat(Context& ctx, const Bf16* in, int64_t n, float* out);

}  // namespace longread::kernels::cuda
