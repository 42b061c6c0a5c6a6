// The document the fault harness writes and the fault tests recompute: small enough that a
// child process writes hundreds of snapshots a second, large enough to span several SST blocks.
#pragma once

#include "cache/cache_db.h"
#include "cache/synthetic_document.h"

namespace longread::cache {

inline SyntheticShape FaultShape() {
  SyntheticShape shape;
  shape.n_layers = 4;
  shape.n_kv_heads = 2;
  shape.head_dim = 16;
  shape.sink = 2;
  shape.top_k = 24;
  shape.window = 16;
  shape.segment_len = 32;
  shape.model_fingerprint = "fault-model";
  shape.config_hash = 0xfa17;
  return shape;
}

inline constexpr char kFaultDocId[] = "fault-doc";

// A small memtable so that the harness flushes and compacts often (more files for a kill to
// land in) and a restart replays little WAL.
inline CacheDbOptions FaultDbOptions() {
  return {.create_if_missing = true,
          .move_aside_if_corrupt = false,
          .snapshot_block_compression = BlockCompression::kNone,
          .snapshot_write_buffer_bytes = 8u << 20};
}

}  // namespace longread::cache
