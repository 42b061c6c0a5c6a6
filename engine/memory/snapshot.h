// The recurrent runner's whole state as plain data: what the memory holds after a segment plus
// where reading stopped. The engine produces and consumes it; cache/ persists it (the engine does
// not know how). Keys and values are the memory's own fp32 numbers, so a resumed run is
// bit-identical to an uninterrupted one.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace longread::engine {

// The memory of one (layer, KV head): its slots sorted by original position. A slot's content
// never changes after the key was created, so the position identifies a slot across snapshots of
// the same document (the basis of delta snapshots).
struct HeadMemorySnapshot {
  std::vector<int64_t> positions;  // original token positions in the document, ascending
  std::vector<float> scores;       // scorer output u_j (relative to `score_origin`)
  std::vector<float> keys;         // positions.size() x head_dim, before RoPE
  std::vector<float> values;       // positions.size() x head_dim
};

struct MemorySnapshot {
  static constexpr uint32_t kFormatVersion = 1;

  std::string model_fingerprint;  // identifies the weights (see engine::Model::fingerprint)
  uint64_t config_hash = 0;       // hash of the memory/runner configuration (s, k, w, L, ...)
  int32_t n_layers = 0;
  int32_t n_kv_heads = 0;
  int32_t head_dim = 0;

  // Runner state.
  int64_t segment_index = 0;            // segments fully read
  int64_t token_offset = 0;             // document tokens fully read (== next token's position)
  double score_origin = 0.0;            // scores are stored relative to this moving origin
  std::vector<int32_t> pending_tokens;  // tokenized, not yet read (a partial segment)
  std::string pending_utf8;             // bytes of an incomplete UTF-8 character of the input

  // n_layers * n_kv_heads entries, layer-major: heads[layer * n_kv_heads + kv_head].
  std::vector<HeadMemorySnapshot> heads;
};

}  // namespace longread::engine
