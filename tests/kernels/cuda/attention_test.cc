// cuda::Attention against the CPU kernel (kernels/attention.h) on the same bf16-rounded inputs:
// dense causal over a cache, random visibility intervals (empty ones included), the SparseK
// memory's pattern (sinks, selected blocks evicted mid-segment, a sliding window), GQA groups of
// 1 and 3, shapes that are not tile multiples, and queries that see nothing (exact zeros).
#include "kernels/attention.h"

#include <gtest/gtest.h>

#include <climits>
#include <random>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/launch.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace longread::kernels::cuda {
namespace {

struct Case {
  int64_t n_q, n_keys, n_heads, n_kv_heads;
  std::vector<int32_t> from, until;  // [n_kv_heads][n_keys]
};

// Dense causal attention over `past` cached keys followed by the n_q segment keys.
Case DenseCausal(int64_t n_q, int64_t past, int64_t heads, int64_t kv_heads) {
  Case c{n_q, past + n_q, heads, kv_heads, {}, {}};
  for (int64_t g = 0; g < kv_heads; ++g) {
    for (int64_t j = 0; j < c.n_keys; ++j) {
      c.from.push_back(static_cast<int32_t>(std::max<int64_t>(0, j - past)));
      c.until.push_back(INT32_MAX);
    }
  }
  return c;
}

// Every key an arbitrary interval over [0, n_q]; a tenth of them empty.
Case RandomIntervals(int64_t n_q, int64_t n_keys, int64_t heads, int64_t kv_heads,
                     std::mt19937& rng) {
  Case c{n_q, n_keys, heads, kv_heads, {}, {}};
  std::uniform_int_distribution<int32_t> at(0, static_cast<int32_t>(n_q));
  std::uniform_int_distribution<int> kind(0, 9);
  for (int64_t i = 0; i < kv_heads * n_keys; ++i) {
    int32_t a = at(rng), b = at(rng);
    if (a > b) std::swap(a, b);
    const int k = kind(rng);
    if (k == 0) b = a;          // never visible
    if (k == 1) b = INT32_MAX;  // visible to the end
    c.from.push_back(a);
    c.until.push_back(b);
  }
  return c;
}

// The SparseK memory's pattern for one segment: `sinks` keys always visible; `memory` selected
// keys that leave at random queries (evicted by better segment blocks); the segment's keys
// visible from their own query for `window` queries, a random half of their blocks of 32 kept
// longer (selected).
Case SparseKPattern(int64_t n_q, int64_t sinks, int64_t memory, int64_t window, int64_t heads,
                    int64_t kv_heads, std::mt19937& rng) {
  Case c{n_q, sinks + memory + n_q, heads, kv_heads, {}, {}};
  std::uniform_int_distribution<int32_t> at(0, static_cast<int32_t>(n_q));
  std::bernoulli_distribution coin(0.5);
  for (int64_t g = 0; g < kv_heads; ++g) {
    for (int64_t j = 0; j < sinks; ++j) {
      c.from.push_back(0);
      c.until.push_back(INT32_MAX);
    }
    for (int64_t b = 0; b < memory; b += 32) {
      const int32_t exit = coin(rng) ? INT32_MAX : at(rng);
      for (int64_t j = b; j < std::min(b + 32, memory); ++j) {
        c.from.push_back(0);
        c.until.push_back(exit);
      }
    }
    for (int64_t b = 0; b < n_q; b += 32) {
      const bool kept = coin(rng);
      const int32_t leaves = static_cast<int32_t>(std::min(b + 31 + window, INT64_C(1) << 30));
      const int32_t exit = kept ? std::max(leaves, at(rng)) : leaves;
      for (int64_t j = b; j < std::min(b + 32, n_q); ++j) {
        c.from.push_back(static_cast<int32_t>(j));
        c.until.push_back(exit);
      }
    }
  }
  return c;
}

class CudaAttentionTest : public CudaTest {
 protected:
  // pad > 0: the device keys and values sit in buffers of n_keys + pad rows per KV head (a cache
  // with spare capacity, kv_head_stride), the spare rows holding other finite values.
  void Check(const std::string& what, const Case& c, std::mt19937& rng, int64_t pad = 0) {
    const int64_t hd = 64;
    std::vector<float> q = RandomFloats(c.n_q * c.n_heads * hd, rng, -2, 2);
    std::vector<float> k = RandomFloats(c.n_kv_heads * c.n_keys * hd, rng, -2, 2);
    std::vector<float> v = RandomFloats(c.n_kv_heads * c.n_keys * hd, rng);
    std::vector<uint16_t> k_bits = RoundToBf16(k), v_bits = RoundToBf16(v);
    if (pad > 0) {
      const int64_t stride = c.n_keys + pad;
      std::vector<uint16_t> k_pad(c.n_kv_heads * stride * hd, FloatToBFloat16(3.0f));
      std::vector<uint16_t> v_pad(k_pad.size(), FloatToBFloat16(-5.0f));
      for (int64_t g = 0; g < c.n_kv_heads; ++g) {
        std::copy_n(&k_bits[g * c.n_keys * hd], c.n_keys * hd, &k_pad[g * stride * hd]);
        std::copy_n(&v_bits[g * c.n_keys * hd], c.n_keys * hd, &v_pad[g * stride * hd]);
      }
      k_bits = std::move(k_pad);
      v_bits = std::move(v_pad);
    }
    DeviceBuffer dq = ToDevice(RoundToBf16(q)), dk = ToDevice(k_bits), dv = ToDevice(v_bits);
    DeviceBuffer dfrom = ToDevice(c.from), duntil = ToDevice(c.until);
    DeviceBuffer out = Poisoned<uint16_t>(c.n_q * c.n_heads * hd);

    kernels::AttentionArgs cpu;
    cpu.q = q.data();
    cpu.k = k.data();
    cpu.v = v.data();
    cpu.visible_from = c.from.data();
    cpu.visible_until = c.until.data();
    cpu.n_q = c.n_q;
    cpu.n_keys = c.n_keys;
    cpu.n_heads = c.n_heads;
    cpu.n_kv_heads = c.n_kv_heads;
    cpu.head_dim = hd;
    cpu.scale = 0.125f;
    std::vector<float> ref(c.n_q * c.n_heads * hd);
    cpu.out = ref.data();
    kernels::Attention(cpu, nullptr);

    // Every tile variant (kernels/cuda/launch.h) computes the same function.
    std::vector<float> got;
    for (int variant = -1; variant < launch::kAttentionVariants; ++variant) {
      AttentionArgs gpu;
      gpu.q = dq.as<Bf16>();
      gpu.k = dk.as<Bf16>();
      gpu.v = dv.as<Bf16>();
      gpu.visible_from = dfrom.as<int32_t>();
      gpu.visible_until = duntil.as<int32_t>();
      gpu.n_q = c.n_q;
      gpu.n_keys = c.n_keys;
      gpu.n_heads = c.n_heads;
      gpu.n_kv_heads = c.n_kv_heads;
      gpu.head_dim = hd;
      gpu.kv_head_stride = pad > 0 ? c.n_keys + pad : 0;
      gpu.scale = 0.125f;
      gpu.out = out.as<Bf16>();
      gpu.variant = variant;
      const absl::Status s = Attention(*ctx_, gpu);
      ASSERT_TRUE(s.ok()) << s;
      got = Bf16ToHost(out, ref.size());
      ExpectClose("attention " + what + " variant " + std::to_string(variant), got, ref, 1e-2);
      out = Poisoned<uint16_t>(c.n_q * c.n_heads * hd);
    }

    // Queries that see no key output exact zeros on both sides.
    const int64_t group = c.n_heads / c.n_kv_heads;
    int64_t blind_rows = 0;
    for (int64_t i = 0; i < c.n_q; ++i) {
      for (int64_t h = 0; h < c.n_heads; ++h) {
        const int64_t g = h / group;
        bool sees = false;
        for (int64_t j = 0; j < c.n_keys && !sees; ++j) {
          sees = c.from[g * c.n_keys + j] <= i && i < c.until[g * c.n_keys + j];
        }
        if (sees) continue;
        ++blind_rows;
        for (int64_t d = 0; d < hd; ++d) {
          ASSERT_EQ(got[(i * c.n_heads + h) * hd + d], 0.0f) << what << " query " << i;
        }
      }
    }
    std::cout << "[info] " << what << ": " << blind_rows << " (query, head) rows see no key\n";
  }
};

TEST_F(CudaAttentionTest, DenseCausalOverACache) {
  std::mt19937 rng(std::random_device{}());
  Check("dense causal n_q=300 past=100 9/3", DenseCausal(300, 100, 9, 3), rng);
  Check("dense causal n_q=1 past=2000 9/3 (decode)", DenseCausal(1, 2000, 9, 3), rng);
  Check("dense causal n_q=129 past=0 2/2", DenseCausal(129, 0, 2, 2), rng);
  // More keys than the kernel's key ordering sorts: those variants visit keys in memory order.
  Check("dense causal n_q=20 past=16400 9/3", DenseCausal(20, 16400, 9, 3), rng);
}

TEST_F(CudaAttentionTest, KeysInABufferWithSpareCapacity) {
  std::mt19937 rng(std::random_device{}());
  Check("dense causal n_q=100 past=150 9/3 stride +77", DenseCausal(100, 150, 9, 3), rng, 77);
  Check("random n_q=70 keys=300 9/3 stride +5", RandomIntervals(70, 300, 9, 3, rng), rng, 5);
}

TEST_F(CudaAttentionTest, RandomIntervals) {
  std::mt19937 rng(std::random_device{}());
  Check("random n_q=200 keys=517 9/3", RandomIntervals(200, 517, 9, 3, rng), rng);
  Check("random n_q=65 keys=64 4/1", RandomIntervals(65, 64, 4, 1, rng), rng);
  Check("random n_q=7 keys=1000 9/3", RandomIntervals(7, 1000, 9, 3, rng), rng);
  // As many keys as the key ordering sorts (64 chunks of 256 per head), and enough rows for it.
  Check("random n_q=90 keys=16384 9/3", RandomIntervals(90, 16384, 9, 3, rng), rng);
}

TEST_F(CudaAttentionTest, SparseKMemoryPattern) {
  std::mt19937 rng(std::random_device{}());
  Check("sparsek s=4 k=256 w=128 n_q=512 9/3", SparseKPattern(512, 4, 256, 128, 9, 3, rng), rng);
  Check("sparsek s=4 k=2048 w=1024 n_q=1024 9/3",
        SparseKPattern(1024, 4, 2048 + 1024, 1024, 9, 3, rng), rng);
}

TEST_F(CudaAttentionTest, NoKeysGivesZeros) {
  std::mt19937 rng(std::random_device{}());
  std::vector<float> q = RandomFloats(10 * 9 * 64, rng);
  DeviceBuffer dq = ToDevice(RoundToBf16(q));
  DeviceBuffer out = Poisoned<uint16_t>(10 * 9 * 64);
  AttentionArgs a;
  a.q = dq.as<Bf16>();
  a.k = a.v = dq.as<Bf16>();  // never read
  a.n_q = 10;
  a.n_heads = 9;
  a.n_kv_heads = 3;
  a.head_dim = 64;
  a.scale = 0.125f;
  a.out = out.as<Bf16>();
  ASSERT_TRUE(Attention(*ctx_, a).ok());
  for (float x : Bf16ToHost(out, 10 * 9 * 64)) ASSERT_EQ(x, 0.0f);
}

TEST_F(CudaAttentionTest, RejectsHeadDimOtherThan64) {
  AttentionArgs a;
  a.n_q = 1;
  a.n_heads = a.n_kv_heads = 1;
  a.head_dim = 128;
  EXPECT_EQ(Attention(*ctx_, a).code(), absl::StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace longread::kernels::cuda
