// Tiled attention over memory ∪ segment with per-key visibility intervals: tiles of kQueryTile
// queries (times the query heads that share one KV head) against kKeyTile keys, online softmax,
// and a per-tile interval test that skips key tiles no query of the tile can see.
#include "kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/cpu_internal.h"

namespace longread::kernels {
namespace cpu {
namespace {

constexpr int64_t kQueryTile = 16;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

void PortableTransposeKeys(const float* k, int64_t n, int64_t head_dim, float* kt) {
  for (int64_t j = 0; j < kKeyTile; ++j) {
    for (int64_t d = 0; d < head_dim; ++d) kt[d * kKeyTile + j] = j < n ? k[j * head_dim + d] : 0;
  }
}

void PortableScores(const float* q_tile, int64_t rows, const float* kt, int64_t head_dim,
                    float* scores) {
  for (int64_t r = 0; r < rows; ++r) {
    float* s = scores + r * kKeyTile;
    std::fill(s, s + kKeyTile, 0.0f);
    for (int64_t d = 0; d < head_dim; ++d) {
      const float a = q_tile[r * head_dim + d];
      for (int j = 0; j < kKeyTile; ++j) s[j] += a * kt[d * kKeyTile + j];
    }
  }
}

float PortableSoftmaxRow(float* s, float* row_max, float* row_sum) {
  const float tile_max = *std::max_element(s, s + kKeyTile);
  if (tile_max == kNegInf) return -1.0f;
  const float new_max = std::max(*row_max, tile_max);
  const float correction = std::exp(*row_max - new_max);
  float sum = 0;
  for (int j = 0; j < kKeyTile; ++j) {
    s[j] = s[j] == kNegInf ? 0.0f : std::exp(s[j] - new_max);
    sum += s[j];
  }
  *row_sum = *row_sum * correction + sum;
  *row_max = new_max;
  return correction;
}

void PortableAccumulate(const float* p, int64_t rows, const float* v, int64_t n, int64_t head_dim,
                        float* acc) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < n; ++j) {
      const float pj = p[r * kKeyTile + j];
      if (pj == 0.0f) continue;
      for (int64_t d = 0; d < head_dim; ++d) acc[r * head_dim + d] += pj * v[j * head_dim + d];
    }
  }
}

// Key j of KV head g (and its value), per the layout the caller chose.
inline const float* KeyRow(const AttentionArgs& a, int64_t g, int64_t j) {
  return a.k_heads != nullptr ? a.k_heads[g] + j * a.head_dim
                              : a.k + (g * a.n_keys + j) * a.head_dim;
}
inline const float* ValueRow(const AttentionArgs& a, int64_t g, int64_t j) {
  return a.v_heads != nullptr ? a.v_heads[g] + j * a.head_dim
                              : a.v + (g * a.n_keys + j) * a.head_dim;
}

// Per-thread buffers, grown only when a larger shape arrives.
struct TileScratch {
  std::vector<float> q, kt, scores, acc, row_max, row_sum;

  void Reserve(int64_t rows, int64_t head_dim) {
    auto grow = [](std::vector<float>& v, int64_t n) {
      if (static_cast<int64_t>(v.size()) < n) v.resize(n);
    };
    grow(q, rows * head_dim);
    grow(kt, head_dim * kKeyTile + 8);
    grow(scores, rows * kKeyTile + 8);
    grow(acc, rows * head_dim);
    grow(row_max, rows);
    grow(row_sum, rows);
  }
};

// 32-byte aligned view into a vector reserved with 8 spare floats.
float* Aligned(std::vector<float>& v) {
  auto address = reinterpret_cast<uintptr_t>(v.data());
  return v.data() + ((32 - address % 32) % 32) / sizeof(float);
}

// Keys and values of every key tile, packed once per call for all query tiles: keys transposed
// ([tile][head_dim][kKeyTile]), values copied 32-byte aligned ([tile][kKeyTile][head_dim]).
// Tile t of KV head g is at index g * n_key_tiles + t. Null kt: not packed (a single query
// tile uses every key tile once, so packing would only add a pass over K and V).
struct PackedKv {
  const float* kt;
  const float* v;
  int64_t n_key_tiles;
};

void PackTile(const AttentionArgs& a, const AttentionSteps& steps, int64_t index, float* kt,
              float* v, int64_t n_key_tiles) {
  const int64_t g = index / n_key_tiles;
  const int64_t j0 = (index % n_key_tiles) * kKeyTile;
  const int64_t n = std::min<int64_t>(kKeyTile, a.n_keys - j0);
  const int64_t tile_floats = kKeyTile * a.head_dim;
  steps.transpose_keys(KeyRow(a, g, j0), n, a.head_dim, kt + index * tile_floats);
  const float* values = ValueRow(a, g, j0);
  std::copy(values, values + n * a.head_dim, v + index * tile_floats);
}

void RunTile(const AttentionArgs& a, const AttentionSteps& steps, const PackedKv& kv, int64_t g,
             int64_t tile, TileScratch& scratch) {
  const int64_t group = a.n_heads / a.n_kv_heads;
  const int64_t hd = a.head_dim;
  const int64_t i0 = tile * kQueryTile;
  const int64_t i1 = std::min(a.n_q, i0 + kQueryTile);
  const int64_t rows = (i1 - i0) * group;  // row r = query i0 + r / group, head g*group + r % group
  scratch.Reserve(rows, hd);
  float* q = scratch.q.data();
  float* scores = Aligned(scratch.scores);
  float* acc = scratch.acc.data();
  float* row_max = scratch.row_max.data();
  float* row_sum = scratch.row_sum.data();

  for (int64_t r = 0; r < rows; ++r) {
    const float* src = a.q + ((i0 + r / group) * a.n_heads + g * group + r % group) * hd;
    for (int64_t d = 0; d < hd; ++d) q[r * hd + d] = src[d] * a.scale;
  }
  std::fill(acc, acc + rows * hd, 0.0f);
  std::fill(row_max, row_max + rows, kNegInf);
  std::fill(row_sum, row_sum + rows, 0.0f);

  const int64_t key_base = g * a.n_keys;
  for (int64_t j0 = 0; j0 < a.n_keys; j0 += kKeyTile) {
    const int64_t n = std::min<int64_t>(kKeyTile, a.n_keys - j0);
    bool any_visible = false, all_visible = n == kKeyTile;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t from = a.visible_from[key_base + j0 + j];
      const int64_t until = a.visible_until[key_base + j0 + j];
      any_visible |= std::max(from, i0) < std::min(until, i1);
      all_visible &= from <= i0 && until >= i1;
    }
    if (!any_visible) continue;

    const float* kt_tile;
    const float* v_tile;
    if (kv.kt != nullptr) {
      const int64_t packed = (g * kv.n_key_tiles + j0 / kKeyTile) * kKeyTile * hd;
      kt_tile = kv.kt + packed;
      v_tile = kv.v + packed;
    } else {
      float* kt = Aligned(scratch.kt);
      steps.transpose_keys(KeyRow(a, g, j0), n, hd, kt);
      kt_tile = kt;
      v_tile = ValueRow(a, g, j0);
    }
    steps.scores(q, rows, kt_tile, hd, scores);
    if (!all_visible) {
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = i0 + r / group;
        float* s = scores + r * kKeyTile;
        for (int64_t j = 0; j < kKeyTile; ++j) {
          const bool visible = j < n && a.visible_from[key_base + j0 + j] <= i &&
                               i < a.visible_until[key_base + j0 + j];
          if (!visible) s[j] = kNegInf;
        }
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      float* s = scores + r * kKeyTile;
      const float correction = steps.softmax_row(s, &row_max[r], &row_sum[r]);
      if (correction < 0) {  // nothing visible to this row in this tile
        std::fill(s, s + kKeyTile, 0.0f);
        continue;
      }
      if (correction != 1.0f) {
        float* acc_r = acc + r * hd;
        for (int64_t d = 0; d < hd; ++d) acc_r[d] *= correction;
      }
      if (a.score != nullptr) {
        const int64_t i = i0 + r / group;
        const float tau = a.tau[i * a.n_kv_heads + g];
        for (int64_t j = 0; j < n; ++j) {
          if (i >= a.gate_from[key_base + j0 + j]) {
            s[j] *= std::clamp(a.score[key_base + j0 + j] - tau, 0.0f, 1.0f);
          }
        }
      }
    }
    steps.accumulate(scores, rows, v_tile, n, hd, acc);
  }

  for (int64_t r = 0; r < rows; ++r) {
    float* dst = a.out + ((i0 + r / group) * a.n_heads + g * group + r % group) * hd;
    const float inv = row_sum[r] > 0 ? 1.0f / row_sum[r] : 0.0f;
    for (int64_t d = 0; d < hd; ++d) dst[d] = acc[r * hd + d] * inv;
  }
}

}  // namespace

const AttentionSteps& PortableAttentionSteps() {
  static const AttentionSteps steps{&PortableTransposeKeys, &PortableScores, &PortableSoftmaxRow,
                                    &PortableAccumulate};
  return steps;
}

}  // namespace cpu

void Attention(const AttentionArgs& a, ThreadPool* pool) {
  if (a.n_q <= 0 || a.n_heads <= 0 || a.head_dim <= 0) return;
  if (a.n_kv_heads <= 0 || a.n_heads % a.n_kv_heads != 0) return;
  const cpu::AttentionSteps& steps = cpu::UseAvx2() && a.head_dim % 8 == 0
                                         ? cpu::Avx2AttentionSteps()
                                         : cpu::PortableAttentionSteps();
  const int64_t n_tiles = (a.n_q + cpu::kQueryTile - 1) / cpu::kQueryTile;
  const int64_t n_tasks = n_tiles * a.n_kv_heads;
  const int64_t n_workers = pool == nullptr ? 1 : std::min<int64_t>(pool->size(), n_tasks);

  cpu::PackedKv kv{nullptr, nullptr, 0};
  if (n_tiles > 1) {
    // Grow-only buffers of the calling thread (workers only read them through kv).
    thread_local std::vector<float> packed_k, packed_v;
    const int64_t n_key_tiles = (a.n_keys + cpu::kKeyTile - 1) / cpu::kKeyTile;
    const int64_t packed_floats = a.n_kv_heads * n_key_tiles * cpu::kKeyTile * a.head_dim;
    if (static_cast<int64_t>(packed_k.size()) < packed_floats + 8) {
      packed_k.resize(packed_floats + 8);
      packed_v.resize(packed_floats + 8);
    }
    float* kt = cpu::Aligned(packed_k);
    float* v = cpu::Aligned(packed_v);
    kv = cpu::PackedKv{kt, v, n_key_tiles};
    auto pack = [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) cpu::PackTile(a, steps, i, kt, v, n_key_tiles);
    };
    if (pool == nullptr) {
      pack(0, a.n_kv_heads * n_key_tiles);
    } else {
      pool->ParallelFor(a.n_kv_heads * n_key_tiles, pack);
    }
  }
  // Worker w takes tasks w, w + n_workers, ...: causal tiles grow with the query index, so
  // striding balances the work; each tile is computed the same way whoever runs it.
  auto run = [&](int64_t begin, int64_t end) {
    thread_local cpu::TileScratch scratch;
    for (int64_t w = begin; w < end; ++w) {
      for (int64_t task = w; task < n_tasks; task += n_workers) {
        cpu::RunTile(a, steps, kv, task % a.n_kv_heads, task / a.n_kv_heads, scratch);
      }
    }
  };
  if (pool == nullptr || n_workers == 1) {
    run(0, 1);
  } else {
    pool->ParallelFor(n_workers, run);
  }
}

}  // namespace longread::kernels
