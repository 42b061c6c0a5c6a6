// A deterministic stand-in for the engine's memory, for tests, the fault harness and the
// benchmark (the real runner was not ready when cache/ was written). After n segments of L tokens
// each head holds: `sink` first positions, the top-k older positions by a per-(head, position)
// score, and the last `window` positions, the SparseK layout of DESIGN.md. Slot keys and values
// are gaussian from a hash of (head, position, dim), keys with per-dimension scales like real
// pre-RoPE keys (a few dims much larger than the rest). Everything is a pure function of the
// shape and n, so a verifier can recompute snapshot n bit for bit.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "engine/memory/snapshot.h"

namespace longread::cache {

struct SyntheticShape {
  int32_t n_layers = 30;
  int32_t n_kv_heads = 3;
  int32_t head_dim = 64;
  int32_t sink = 4;
  int32_t top_k = 1024;
  int32_t window = 512;
  int32_t segment_len = 1024;
  std::string model_fingerprint = "synthetic-model";
  uint64_t config_hash = 0x5eed;
};

class SyntheticDocument {
 public:
  explicit SyntheticDocument(SyntheticShape shape, uint64_t seed = 0);

  // Reads segments until `segment_index` segments are done (only forward).
  void AdvanceTo(int64_t segment_index);
  int64_t segment_index() const { return segment_index_; }
  engine::MemorySnapshot Snapshot() const;

 private:
  float Score(size_t head, int64_t position) const;

  SyntheticShape shape_;
  uint64_t seed_;
  int64_t segment_index_ = 0;
  std::vector<std::vector<std::pair<float, int64_t>>> top_k_;  // per head: (score, position)
  std::vector<std::vector<float>> key_scale_;                  // per head, per dim
};

}  // namespace longread::cache
