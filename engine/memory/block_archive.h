// Where evicted blocks go: the memory in RAM stays s + k + w slots, but a block that loses its
// place is not lost. At answer time the question's queries score every archived block through a
// small representative (element-wise min/max of its keys) and the best R blocks come back into the
// memory before generation (DESIGN.md §4: a question-blind score cannot know which fact will be
// asked for; the question can). The engine defines the interface and an in-RAM archive; cache/
// implements it on RocksDB with a size cap.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <vector>

#include "absl/status/statusor.h"

namespace longread::engine {

struct ArchivedBlock {
  int32_t layer = 0;
  int32_t kv_head = 0;
  int64_t block_id = 0;            // first position / block_tokens
  std::vector<int64_t> positions;  // ascending
  std::vector<float> scores;
  std::vector<float> keys;    // positions.size() x head_dim, before RoPE
  std::vector<float> values;  // positions.size() x head_dim
};

// Element-wise bounds of a block's keys: for any query q, Σ_e max(q_e·lo_e, q_e·hi_e) bounds
// q·k from above for every key k of the block (the Quest-style representative).
struct BlockBounds {
  std::vector<float> key_min, key_max;  // head_dim each
};

BlockBounds ComputeBounds(const ArchivedBlock& block, int64_t head_dim);

// A block as the GPU memory's writer holds it, straight from its pinned staging rows (not owned):
// bf16 keys and values. Putting it is putting WidenRows(rows) (an fp32 ArchivedBlock holds every
// bf16 value exactly), but an archive that stores bf16 anyway takes the bytes as they are.
struct Bf16BlockRows {
  int32_t layer = 0;
  int32_t kv_head = 0;
  int64_t block_id = 0;
  std::span<const int64_t> positions;  // ascending
  std::span<const float> scores;
  std::span<const uint16_t> keys;    // positions.size() x head_dim bf16 bits, before RoPE
  std::span<const uint16_t> values;  // positions.size() x head_dim bf16 bits
};

// The fp32 block holding exactly these rows (into `out`, whose vectors keep their capacity).
void WidenRows(const Bf16BlockRows& rows, ArchivedBlock* out);
// ComputeBounds of WidenRows(rows), without widening the block.
BlockBounds ComputeBounds(const Bf16BlockRows& rows, int64_t head_dim);

// The recall score of a block for a question: the largest bound over the question's queries
// (`queries`: n_queries x head_dim, un-rotated).
float RecallScore(const BlockBounds& bounds, std::span<const float> queries, int64_t n_queries,
                  int64_t head_dim);

class BlockArchive {
 public:
  virtual ~BlockArchive() = default;
  // Takes a block the memory has just evicted.
  virtual absl::Status Put(ArchivedBlock block) = 0;
  // Puts a block the caller keeps (a recorder, a replay). An archive that only reads the block
  // overrides this to skip the copy.
  virtual absl::Status PutCopyOf(const ArchivedBlock& block) { return Put(block); }
  // Puts the blocks in order, as PutCopyOf one after another would, and stops at the first error;
  // `n_put` (if not null) gets how many were put. An archive may encode them in parallel.
  virtual absl::Status PutBatch(std::span<const ArchivedBlock> blocks, size_t* n_put = nullptr) {
    if (n_put != nullptr) *n_put = 0;
    for (const ArchivedBlock& block : blocks) {
      if (absl::Status s = PutCopyOf(block); !s.ok()) return s;
      if (n_put != nullptr) *n_put += 1;
    }
    return absl::OkStatus();
  }
  // Puts bf16 blocks in order, as PutBatch of their WidenRows would. This one widens; an archive
  // that keeps bf16 overrides it to skip the fp32 round trip.
  virtual absl::Status PutRows(std::span<const Bf16BlockRows> blocks, size_t* n_put = nullptr);
  // The (at most) `r` blocks of (layer, kv_head) with the highest RecallScore, ties to the
  // older block; returned in position order.
  virtual absl::StatusOr<std::vector<ArchivedBlock>> Recall(int32_t layer, int32_t kv_head,
                                                            std::span<const float> queries,
                                                            int64_t n_queries, int64_t r) = 0;
  // The archived blocks of (layer, kv_head) with these block ids (those it holds; ids it does not
  // hold are skipped), in position order.
  virtual absl::StatusOr<std::vector<ArchivedBlock>> Fetch(int32_t layer, int32_t kv_head,
                                                           std::span<const int64_t> block_ids) = 0;
  virtual int64_t stored_bytes() const = 0;
};

// Keeps everything in RAM: for tests and short documents (grows with the document).
class InMemoryBlockArchive : public BlockArchive {
 public:
  InMemoryBlockArchive(int32_t n_layers, int32_t n_kv_heads, int64_t head_dim);
  absl::Status Put(ArchivedBlock block) override;
  absl::StatusOr<std::vector<ArchivedBlock>> Recall(int32_t layer, int32_t kv_head,
                                                    std::span<const float> queries,
                                                    int64_t n_queries, int64_t r) override;
  absl::StatusOr<std::vector<ArchivedBlock>> Fetch(int32_t layer, int32_t kv_head,
                                                   std::span<const int64_t> block_ids) override;
  int64_t stored_bytes() const override { return bytes_; }

 private:
  struct Entry {
    ArchivedBlock block;
    BlockBounds bounds;
  };
  int32_t n_kv_heads_;
  int64_t head_dim_;
  std::vector<std::vector<Entry>> heads_;  // [layer * n_kv_heads + kv_head]
  int64_t bytes_ = 0;
};

// How strongly the question looks at each candidate block: the exact score that recall ranks by
// once the representatives have narrowed the archive to a few candidates. For every query row r
// (`queries`: n_rows x head_dim, un-rotated), softmax_j(q_r·k_j/sqrt(head_dim)) is taken over the
// keys the memory holds (`held_keys`: n_held x head_dim) and every candidate's keys together; a
// block's peak is the largest probability mass one row gives its keys. Normalizing per row, as
// attention does, keeps rows that attend to the sinks from deciding. A max, not a sum: a
// question singles out the block it asks about in a few heads and rows, and a sum over rows or
// heads would drown that in the diffuse mass every other head spreads over the archive (the
// reasoning; the quality bench measures the whole recall, bench/quality/README.md).
// With `held_block_ids` (n_held entries, ascending; -1: leave the key out, e.g. a sink), the
// peaks of the held keys' blocks go to `held_peaks` (block id -> peak, max-merged into what is
// there): a shared choice can then see that a block a head already holds is the one asked for.
std::vector<double> BlockAttentionPeak(std::span<const float> queries, int64_t n_rows,
                                       int64_t head_dim, std::span<const float> held_keys,
                                       int64_t n_held, const std::vector<ArchivedBlock>& candidates,
                                       std::span<const int64_t> held_block_ids = {},
                                       std::map<int64_t, double>* held_peaks = nullptr);

// Picks the top-r of `scores` (higher first, ties to the lower index) and returns their indices
// in ascending order. Shared by archive implementations.
std::vector<int64_t> TopRIndices(std::span<const float> scores, int64_t r);

}  // namespace longread::engine
