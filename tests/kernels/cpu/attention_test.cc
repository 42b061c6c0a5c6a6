// Attention: reference against a float64 brute force written here, then the tiled path (AVX2 and
// portable) against the same, over random visibility intervals, empty intervals, queries that see
// nothing, soft SparseK gating and grouped-query heads; thread-count independence.
#include "kernels/attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cpu/cpu_internal.h"
#include "kernels/reference.h"
#include "tests/kernels/cpu/test_weights.h"

namespace longread::kernels {
namespace {

using testing::RandomFloats;

struct Case {
  int64_t n_q, n_keys, n_heads, n_kv_heads, head_dim;
  enum Mask { kCausal, kRandom } mask;
  bool soft;
};

struct Inputs {
  std::vector<float> q, k, v, score, tau;
  std::vector<int32_t> from, until;
  std::vector<int32_t> gate_from;
  AttentionArgs args;
};

Inputs MakeInputs(const Case& c, uint32_t seed) {
  Inputs in;
  in.q = RandomFloats(c.n_q * c.n_heads * c.head_dim, seed, -2, 2);
  in.k = RandomFloats(c.n_kv_heads * c.n_keys * c.head_dim, seed + 1, -2, 2);
  in.v = RandomFloats(c.n_kv_heads * c.n_keys * c.head_dim, seed + 2);
  const int64_t total = c.n_kv_heads * c.n_keys;
  in.from.resize(total);
  in.until.resize(total);
  std::mt19937 rng(seed + 3);
  const int64_t past = c.n_keys - c.n_q;  // causal: the last n_q keys are the segment's own
  for (int64_t g = 0; g < c.n_kv_heads; ++g) {
    for (int64_t j = 0; j < c.n_keys; ++j) {
      const int64_t key = g * c.n_keys + j;
      if (c.mask == Case::kCausal) {
        in.from[key] = static_cast<int32_t>(std::max<int64_t>(0, j - past));
        in.until[key] = INT32_MAX;
      } else {
        std::uniform_int_distribution<int32_t> pos(-2, static_cast<int32_t>(c.n_q) + 2);
        int32_t a = pos(rng), b = pos(rng);
        if (rng() % 4 == 0) std::swap(a, b);  // some empty or reversed intervals
        in.from[key] = a;
        in.until[key] = rng() % 8 == 0 ? INT32_MAX : b;
      }
    }
  }
  if (c.soft) {
    in.score = RandomFloats(total, seed + 4, -1, 2);
    in.tau = RandomFloats(c.n_q * c.n_kv_heads, seed + 5, -0.5, 1);
    // Never gated, gated from the start, or from some query on.
    in.gate_from.resize(total);
    for (auto& g : in.gate_from) {
      const uint64_t kind = rng() % 3;
      g = kind == 0 ? INT32_MAX : kind == 1 ? 0 : static_cast<int32_t>(rng() % (c.n_q + 1));
    }
  }
  AttentionArgs& a = in.args;
  a.q = in.q.data();
  a.k = in.k.data();
  a.v = in.v.data();
  a.visible_from = in.from.data();
  a.visible_until = in.until.data();
  if (c.soft) {
    a.score = in.score.data();
    a.tau = in.tau.data();
    a.gate_from = in.gate_from.data();
  }
  a.n_q = c.n_q;
  a.n_keys = c.n_keys;
  a.n_heads = c.n_heads;
  a.n_kv_heads = c.n_kv_heads;
  a.head_dim = c.head_dim;
  a.scale = static_cast<float>(1 / std::sqrt(double(c.head_dim)));
  return in;
}

// Float64 brute force: full logits matrix, masked softmax, gated values.
std::vector<double> BruteForce(const Inputs& in) {
  const AttentionArgs& a = in.args;
  const int64_t group = a.n_heads / a.n_kv_heads;
  std::vector<double> out(a.n_q * a.n_heads * a.head_dim, 0.0);
  for (int64_t i = 0; i < a.n_q; ++i) {
    for (int64_t h = 0; h < a.n_heads; ++h) {
      const int64_t g = h / group;
      std::vector<double> logits;
      std::vector<int64_t> keys;
      for (int64_t j = 0; j < a.n_keys; ++j) {
        const int64_t key = g * a.n_keys + j;
        if (in.from[key] > i || i >= in.until[key]) continue;
        double dot = 0;
        for (int64_t d = 0; d < a.head_dim; ++d) {
          dot += double{in.q[(i * a.n_heads + h) * a.head_dim + d]} * in.k[key * a.head_dim + d];
        }
        logits.push_back(dot / std::sqrt(double(a.head_dim)));
        keys.push_back(key);
      }
      if (keys.empty()) continue;
      const double mx = *std::max_element(logits.begin(), logits.end());
      double denom = 0;
      for (double& l : logits) denom += (l = std::exp(l - mx));
      for (size_t n = 0; n < keys.size(); ++n) {
        double gate = 1;
        if (a.score != nullptr && i >= in.gate_from[keys[n]]) {
          gate = std::min(1.0,
                          std::max(0.0, double{in.score[keys[n]]} - in.tau[i * a.n_kv_heads + g]));
        }
        for (int64_t d = 0; d < a.head_dim; ++d) {
          out[(i * a.n_heads + h) * a.head_dim + d] +=
              logits[n] / denom * gate * in.v[keys[n] * a.head_dim + d];
        }
      }
    }
  }
  return out;
}

const Case kCases[] = {
    {1, 1, 9, 3, 64, Case::kCausal, false},     {3, 70, 9, 3, 64, Case::kCausal, false},
    {17, 17, 4, 4, 64, Case::kCausal, false},   {40, 200, 9, 3, 64, Case::kRandom, false},
    {33, 130, 6, 2, 64, Case::kRandom, true},   {64, 64, 2, 1, 128, Case::kCausal, true},
    {5, 300, 3, 3, 12, Case::kRandom, false},   {20, 65, 8, 2, 32, Case::kRandom, true},
    {300, 400, 9, 3, 64, Case::kCausal, false}, {16, 63, 1, 1, 8, Case::kRandom, false},
};

// Outputs are convex-like combinations of values in [-1, 1]; fp32 logits and exps keep the error
// around 1e-6.
constexpr double kTolerance = 2e-5;

TEST(AttentionTest, ReferenceMatchesBruteForce) {
  uint32_t seed = 1;
  for (const Case& c : kCases) {
    Inputs in = MakeInputs(c, seed += 10);
    std::vector<float> out(c.n_q * c.n_heads * c.head_dim, NAN);
    in.args.out = out.data();
    ref::Attention(in.args);
    const auto want = BruteForce(in);
    for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], want[i], 1e-6) << i;
  }
}

TEST(AttentionTest, TiledMatchesBruteForceAndIsThreadCountIndependent) {
  ThreadPool pool2(2), pool3(3);
  for (bool portable : {false, true}) {
    cpu::ForcePortable(portable);
    uint32_t seed = 1;
    for (const Case& c : kCases) {
      Inputs in = MakeInputs(c, seed += 10);
      const auto want = BruteForce(in);
      const size_t n = c.n_q * c.n_heads * c.head_dim;
      std::vector<float> out1(n, NAN), out2(n, NAN), out3(n, NAN);
      in.args.out = out1.data();
      Attention(in.args, nullptr);
      in.args.out = out2.data();
      Attention(in.args, &pool2);
      in.args.out = out3.data();
      Attention(in.args, &pool3);
      int zero_rows = 0;
      for (size_t i = 0; i < n; ++i) {
        ASSERT_NEAR(out1[i], want[i], kTolerance) << "case n_q=" << c.n_q << " keys=" << c.n_keys
                                                  << " portable=" << portable << " i=" << i;
        zero_rows += want[i] == 0.0 && out1[i] == 0.0f;
      }
      ASSERT_EQ(0, std::memcmp(out1.data(), out2.data(), n * sizeof(float)));
      ASSERT_EQ(0, std::memcmp(out1.data(), out3.data(), n * sizeof(float)));
      (void)zero_rows;
    }
  }
  cpu::ForcePortable(false);
}

TEST(AttentionTest, QueryWithNoVisibleKeyOutputsZeros) {
  Case c{4, 10, 2, 1, 16, Case::kCausal, false};
  Inputs in = MakeInputs(c, 99);
  for (int j = 0; j < 10; ++j) {
    in.from[j] = j % 2 ? 2 : 5;  // query 0 and 1 see nothing; queries 2, 3 see odd keys
    in.until[j] = j % 2 ? 4 : 5;
  }
  std::vector<float> out(4 * 2 * 16, NAN);
  in.args.out = out.data();
  Attention(in.args, nullptr);
  for (int i = 0; i < 2 * 2 * 16; ++i) EXPECT_EQ(out[i], 0.0f);
  const auto want = BruteForce(in);
  for (int i = 2 * 2 * 16; i < 4 * 2 * 16; ++i) {
    EXPECT_NE(out[i], 0.0f);
    EXPECT_NEAR(out[i], want[i], kTolerance);
  }
}

}  // namespace
}  // namespace longread::kernels

namespace longread::kernels {
namespace {

TEST(AttentionTest, NoKeysOutputsZeros) {
  std::vector<float> q(2 * 4 * 8, 1.0f), out(q.size(), NAN);
  AttentionArgs a;
  a.q = q.data();
  a.n_q = 2;
  a.n_keys = 0;
  a.n_heads = 4;
  a.n_kv_heads = 2;
  a.head_dim = 8;
  a.scale = 0.5f;
  a.out = out.data();
  ThreadPool pool(2);
  Attention(a, &pool);
  for (float o : out) EXPECT_EQ(o, 0.0f);
}

}  // namespace
}  // namespace longread::kernels

namespace longread::kernels {
namespace {

// Per-head key/value buffers (each head's rows somewhere else in memory) give bit-identical
// results to the head-major array, on both paths and with one or several query tiles.
TEST(AttentionTest, PerHeadBuffersMatchHeadMajorLayout) {
  ThreadPool pool(2);
  for (bool portable : {false, true}) {
    cpu::ForcePortable(portable);
    uint32_t seed = 500;
    for (const Case& c : kCases) {
      Inputs in = MakeInputs(c, seed += 10);
      const size_t n = c.n_q * c.n_heads * c.head_dim;
      std::vector<float> want(n, NAN), got(n, NAN);
      in.args.out = want.data();
      Attention(in.args, &pool);
      // Copies with heads in reverse order and a gap, so that a wrong head offset shows.
      const int64_t head_floats = c.n_keys * c.head_dim;
      std::vector<float> k(c.n_kv_heads * (head_floats + 16)), v(k.size());
      std::vector<const float*> k_heads(c.n_kv_heads), v_heads(c.n_kv_heads);
      for (int64_t g = 0; g < c.n_kv_heads; ++g) {
        const int64_t at = (c.n_kv_heads - 1 - g) * (head_floats + 16) + 8;
        std::copy_n(in.k.begin() + g * head_floats, head_floats, k.begin() + at);
        std::copy_n(in.v.begin() + g * head_floats, head_floats, v.begin() + at);
        k_heads[g] = k.data() + at;
        v_heads[g] = v.data() + at;
      }
      AttentionArgs a = in.args;
      a.k = nullptr;
      a.v = nullptr;
      a.k_heads = k_heads.data();
      a.v_heads = v_heads.data();
      a.out = got.data();
      Attention(a, &pool);
      ASSERT_EQ(0, std::memcmp(want.data(), got.data(), n * sizeof(float)))
          << "n_q=" << c.n_q << " keys=" << c.n_keys << " portable=" << portable;
      std::vector<float> reference(n, NAN);
      a.out = reference.data();
      ref::Attention(a);
      for (size_t i = 0; i < n; ++i) ASSERT_NEAR(reference[i], want[i], kTolerance) << i;
    }
  }
  cpu::ForcePortable(false);
}

}  // namespace
}  // namespace longread::kernels
