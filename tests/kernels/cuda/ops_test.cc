// The dense CUDA ops against the CPU kernels on fresh random inputs: weight upload for every
// file encoding (bit-exact after bf16 rounding), the cuBLASLt GEMM, embedding gather, fused
// residual + RMSNorm, RoPE, SwiGLU and argmax.
#include "kernels/ops.h"

#include <gtest/gtest.h>

#include <random>

#include "kernels/cuda/cuda_ops.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace longread::kernels::cuda {
namespace {

// Random bytes of `rows` rows in `type`'s encoding, with sane scales (finite, 1e-3..0.1).
std::vector<uint8_t> RandomWeights(DType type, int64_t rows, int64_t cols, std::mt19937& rng) {
  const MatrixView shape{type, rows, cols, nullptr};
  std::vector<uint8_t> bytes(rows * shape.row_bytes());
  std::uniform_int_distribution<int> byte(0, 255);
  for (auto& b : bytes) b = static_cast<uint8_t>(byte(rng));
  std::uniform_real_distribution<float> scale(1e-3f, 0.1f), value(-1.0f, 1.0f);
  auto put16 = [&](int64_t at, uint16_t v) { std::memcpy(&bytes[at], &v, 2); };
  const int64_t n_blocks = rows * cols / BlockElements(type);
  for (int64_t b = 0; b < n_blocks; ++b) {
    switch (type) {
      case DType::kF32: {
        const float f = value(rng);
        std::memcpy(&bytes[b * 4], &f, 4);
        break;
      }
      case DType::kF16:
        put16(b * 2, FloatToHalf(value(rng)));
        break;
      case DType::kBF16:
        put16(b * 2, FloatToBFloat16(value(rng)));
        break;
      case DType::kQ4_0:
        put16(b * 18, FloatToHalf(scale(rng)));
        break;
      case DType::kQ4_1:
        put16(b * 20, FloatToHalf(scale(rng)));
        put16(b * 20 + 2, FloatToHalf(-8 * scale(rng)));
        break;
      case DType::kQ8_0:
        put16(b * 34, FloatToHalf(scale(rng) / 8));
        break;
    }
  }
  return bytes;
}

// The CPU's decoding of every row, rounded to bf16.
std::vector<float> CpuDequantized(const MatrixView& w) {
  std::vector<float> out(w.rows * w.cols);
  for (int64_t r = 0; r < w.rows; ++r) kernels::DequantizeRow(w, r, out.data() + r * w.cols);
  RoundToBf16(out);
  return out;
}

class CudaOpsTest : public CudaTest, public ::testing::WithParamInterface<DType> {};

TEST_P(CudaOpsTest, UploadMatrixEqualsCpuDequantizationRoundedToBf16) {
  std::mt19937 rng(std::random_device{}());
  const DType type = GetParam();
  const int64_t rows = 67, cols = 96;
  const std::vector<uint8_t> bytes = RandomWeights(type, rows, cols, rng);
  const MatrixView w{type, rows, cols, bytes.data()};
  auto dev = UploadMatrix(*ctx_, w);
  ASSERT_TRUE(dev.ok()) << dev.status();
  const std::vector<float> gpu = Bf16ToHost(dev->data, rows * cols);
  const std::vector<float> cpu = CpuDequantized(w);
  int64_t mismatches = 0;
  for (int64_t i = 0; i < rows * cols; ++i) mismatches += gpu[i] != cpu[i];
  std::cout << "[errors] upload " << DTypeName(type) << ": mismatches=" << mismatches << "\n";
  EXPECT_EQ(mismatches, 0);
}

TEST_P(CudaOpsTest, MatMulMatchesCpu) {
  std::mt19937 rng(std::random_device{}());
  const DType type = GetParam();
  const int64_t rows = 300, cols = 576;
  const std::vector<uint8_t> bytes = RandomWeights(type, rows, cols, rng);
  const MatrixView w{type, rows, cols, bytes.data()};
  auto dev_w = UploadMatrix(*ctx_, w);
  ASSERT_TRUE(dev_w.ok()) << dev_w.status();
  for (int64_t n : {1, 3, 77}) {
    std::vector<float> x = RandomFloats(n * cols, rng);
    const std::vector<uint16_t> x_bits = RoundToBf16(x);
    std::vector<float> ref(n * rows);
    kernels::MatMul(w, x.data(), n, ref.data(), nullptr);
    DeviceBuffer dx = ToDevice(x_bits);
    DeviceBuffer y16 = Poisoned<uint16_t>(n * rows), y32 = Poisoned<float>(n * rows);
    ASSERT_TRUE(MatMul(*ctx_, *dev_w, dx.as<Bf16>(), n, y16.as<Bf16>()).ok());
    ASSERT_TRUE(MatMul(*ctx_, *dev_w, dx.as<Bf16>(), n, y32.as<float>()).ok());
    const std::string what =
        std::string("matmul ") + std::string(DTypeName(type)) + " n=" + std::to_string(n);
    ExpectClose(what + " bf16 out", Bf16ToHost(y16, n * rows), ref, 1e-2);
    ExpectClose(what + " fp32 out", ToHost<float>(y32, n * rows), ref, 1e-2);
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, CudaOpsTest,
                         ::testing::Values(DType::kF32, DType::kF16, DType::kBF16, DType::kQ4_0,
                                           DType::kQ4_1, DType::kQ8_0),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

using CudaElementwiseTest = CudaTest;

TEST_F(CudaElementwiseTest, EmbeddingGatherCopiesTheDequantizedRows) {
  std::mt19937 rng(std::random_device{}());
  const int64_t vocab = 1000, dim = 576, n = 50;
  const std::vector<uint8_t> bytes = RandomWeights(DType::kQ4_1, vocab, dim, rng);
  const MatrixView w{DType::kQ4_1, vocab, dim, bytes.data()};
  auto table = UploadMatrix(*ctx_, w);
  ASSERT_TRUE(table.ok()) << table.status();
  std::vector<int32_t> tokens(n);
  std::uniform_int_distribution<int32_t> id(0, vocab - 1);
  for (auto& t : tokens) t = id(rng);
  tokens[0] = vocab - 1;
  DeviceBuffer dt = ToDevice(tokens);
  DeviceBuffer out = Poisoned<float>(n * dim);
  ASSERT_TRUE(EmbeddingGather(*ctx_, *table, dt.as<int32_t>(), n, out.as<float>()).ok());
  const std::vector<float> gpu = ToHost<float>(out, n * dim);
  const std::vector<float> all = CpuDequantized(w);
  int64_t mismatches = 0;
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t c = 0; c < dim; ++c) mismatches += gpu[t * dim + c] != all[tokens[t] * dim + c];
  }
  EXPECT_EQ(mismatches, 0);
}

TEST_F(CudaElementwiseTest, AddRmsNormMatchesCpu) {
  std::mt19937 rng(std::random_device{}());
  const int64_t n = 37, dim = 576;
  const float eps = 1e-5f;
  std::vector<float> residual = RandomFloats(n * dim, rng, -3, 3);
  std::vector<float> delta = RandomFloats(n * dim, rng);
  const std::vector<uint16_t> delta_bits = RoundToBf16(delta);
  const std::vector<float> weight = RandomFloats(dim, rng, 0.5f, 1.5f);
  DeviceBuffer dr = ToDevice(residual), dd = ToDevice(delta_bits), dw = ToDevice(weight);
  DeviceBuffer out = Poisoned<uint16_t>(n * dim);

  // Norm alone (the first layer's attention norm), then add + norm.
  std::vector<float> ref(n * dim);
  kernels::RmsNorm(residual.data(), weight.data(), n, dim, eps, ref.data());
  ASSERT_TRUE(
      AddRmsNorm(*ctx_, dr.as<float>(), nullptr, dw.as<float>(), n, dim, eps, out.as<Bf16>()).ok());
  ExpectClose("rmsnorm", Bf16ToHost(out, n * dim), ref, 1e-2);

  kernels::Add(residual.data(), delta.data(), n * dim, residual.data());
  kernels::RmsNorm(residual.data(), weight.data(), n, dim, eps, ref.data());
  ASSERT_TRUE(
      AddRmsNorm(*ctx_, dr.as<float>(), dd.as<Bf16>(), dw.as<float>(), n, dim, eps, out.as<Bf16>())
          .ok());
  ExpectClose("add+rmsnorm out", Bf16ToHost(out, n * dim), ref, 1e-2);
  // The residual stream is fp32 and the add is one fp32 addition, as on the CPU.
  ExpectClose("add+rmsnorm residual", ToHost<float>(dr, n * dim), residual, 1e-7);
}

TEST_F(CudaElementwiseTest, RopeMatchesCpuForQueriesAndHeadMajorKeys) {
  std::mt19937 rng(std::random_device{}());
  const int64_t n = 41, heads = 9, hd = 64, kv_heads = 3;
  std::vector<int64_t> positions(n);
  std::uniform_int_distribution<int64_t> pos(0, int64_t{1} << 20);
  for (auto& p : positions) p = pos(rng);
  DeviceBuffer dp = ToDevice(positions);
  for (RopeStyle style : {RopeStyle::kInterleaved, RopeStyle::kHalf}) {
    const std::string name = style == RopeStyle::kHalf ? "half" : "interleaved";
    std::vector<float> q = RandomFloats(n * heads * hd, rng);
    DeviceBuffer dq = ToDevice(RoundToBf16(q));
    kernels::Rope(q.data(), n, heads, hd, positions.data(), 10000.0f, style);
    ASSERT_TRUE(
        Rope(*ctx_, dq.as<Bf16>(), 1, n, heads, hd, dp.as<int64_t>(), 10000.0f, style).ok());
    ExpectClose("rope queries " + name, Bf16ToHost(dq, q.size()), q, 1e-2);

    std::vector<float> k = RandomFloats(kv_heads * n * hd, rng);
    DeviceBuffer dk = ToDevice(RoundToBf16(k));
    for (int64_t g = 0; g < kv_heads; ++g) {
      kernels::Rope(k.data() + g * n * hd, n, 1, hd, positions.data(), 10000.0f, style);
    }
    ASSERT_TRUE(
        Rope(*ctx_, dk.as<Bf16>(), kv_heads, n, 1, hd, dp.as<int64_t>(), 10000.0f, style).ok());
    ExpectClose("rope keys " + name, Bf16ToHost(dk, k.size()), k, 1e-2);
  }
}

// The memory's fused RoPE (keys copied and rotated per head at per-key positions, queries rotated
// in place at their KV head's positions) gives every row exactly what Rope gives it, leaves the
// un-rotated keys and the rows past n_keys alone, and is the CPU's Rope within bf16 rounding.
TEST_F(CudaElementwiseTest, RopeMemoryEqualsRopePerHeadAndTheCpu) {
  std::mt19937 rng(std::random_device{}());
  const int64_t G = 3, H = 9, group = H / G, hd = 64, n_keys = 301, cap = 320, n = 37;
  std::uniform_int_distribution<int64_t> pos(0, int64_t{1} << 20);
  std::vector<int64_t> key_pos(G * n_keys), query_pos(n * G);
  for (auto& p : key_pos) p = rng() % 5 == 0 ? 0 : pos(rng);
  for (auto& p : query_pos) p = pos(rng);
  DeviceBuffer dkp = ToDevice(key_pos), dqp = ToDevice(query_pos);
  for (RopeStyle style : {RopeStyle::kInterleaved, RopeStyle::kHalf}) {
    const std::string name = style == RopeStyle::kHalf ? "half" : "interleaved";
    std::vector<float> k = RandomFloats(G * cap * hd, rng), q = RandomFloats(n * H * hd, rng);
    const std::vector<uint16_t> k_bits = RoundToBf16(k), q_bits = RoundToBf16(q);
    DeviceBuffer dk = ToDevice(k_bits), dq = ToDevice(q_bits);
    DeviceBuffer rotated = Poisoned<uint16_t>(G * cap * hd);
    RopeMemoryArgs a;
    a.keys = dk.as<Bf16>();
    a.rotated = rotated.as<Bf16>();
    a.key_positions = dkp.as<int64_t>();
    a.n_kv_heads = G;
    a.n_keys = n_keys;
    a.capacity = cap;
    a.q = dq.as<Bf16>();
    a.query_positions = dqp.as<int64_t>();
    a.n_q = n;
    a.n_heads = H;
    a.head_dim = hd;
    a.theta = 10000.0f;
    a.style = style;
    ASSERT_TRUE(RopeMemory(*ctx_, a).ok());

    // Rope, one call per head for the keys and one for the queries as [n * G][group] rows.
    DeviceBuffer want_k = ToDevice(k_bits), want_q = ToDevice(q_bits);
    for (int64_t g = 0; g < G; ++g) {
      ASSERT_TRUE(Rope(*ctx_, want_k.as<Bf16>() + g * cap * hd, 1, n_keys, 1, hd,
                       dkp.as<int64_t>() + g * n_keys, 10000.0f, style)
                      .ok());
    }
    ASSERT_TRUE(
        Rope(*ctx_, want_q.as<Bf16>(), 1, n * G, group, hd, dqp.as<int64_t>(), 10000.0f, style)
            .ok());
    const std::vector<uint16_t> got_k = ToHost<uint16_t>(rotated, G * cap * hd);
    const std::vector<uint16_t> ref_k = ToHost<uint16_t>(want_k, G * cap * hd);
    EXPECT_EQ(ToHost<uint16_t>(dk, G * cap * hd), k_bits) << name << ": keys must stay unrotated";
    for (int64_t g = 0; g < G; ++g) {
      for (int64_t key = 0; key < cap; ++key) {
        for (int64_t e = 0; e < hd; ++e) {
          const int64_t at = (g * cap + key) * hd + e;
          if (key < n_keys) {
            ASSERT_EQ(got_k[at], ref_k[at]) << name << " head " << g << " key " << key;
          } else {
            ASSERT_EQ(got_k[at], 0xffff) << name << ": row past n_keys written";
          }
        }
      }
    }
    EXPECT_EQ(ToHost<uint16_t>(dq, n * H * hd), ToHost<uint16_t>(want_q, n * H * hd)) << name;

    // Against the CPU: queries of head h at their group's position, keys at theirs.
    std::vector<float> q_ref = q, k_ref;
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t h = 0; h < H; ++h) {
        kernels::Rope(q_ref.data() + (t * H + h) * hd, 1, 1, hd, &query_pos[t * G + h / group],
                      10000.0f, style);
      }
    }
    ExpectClose("rope memory queries " + name, Bf16ToHost(dq, n * H * hd), q_ref, 1e-2);
    std::vector<float> got_rows;
    for (int64_t g = 0; g < G; ++g) {
      std::vector<float> rows(k.begin() + g * cap * hd, k.begin() + (g * cap + n_keys) * hd);
      kernels::Rope(rows.data(), n_keys, 1, hd, key_pos.data() + g * n_keys, 10000.0f, style);
      k_ref.insert(k_ref.end(), rows.begin(), rows.end());
      for (int64_t i = 0; i < n_keys * hd; ++i) {
        got_rows.push_back(BFloat16ToFloat(got_k[g * cap * hd + i]));
      }
    }
    ExpectClose("rope memory keys " + name, got_rows, k_ref, 1e-2);
  }
}

TEST_F(CudaElementwiseTest, ScatterHeadsAppendsTokenMajorRowsToHeadMajorSlots) {
  std::mt19937 rng(std::random_device{}());
  const int64_t n = 13, heads = 3, hd = 64, capacity = 40, slot0 = 21;
  std::vector<float> src = RandomFloats(n * heads * hd, rng);
  const std::vector<uint16_t> bits = RoundToBf16(src);
  DeviceBuffer ds = ToDevice(bits);
  DeviceBuffer dst = Poisoned<uint16_t>(heads * capacity * hd);
  ASSERT_TRUE(
      ScatterHeads(*ctx_, ds.as<Bf16>(), n, heads, hd, capacity, slot0, dst.as<Bf16>()).ok());
  const std::vector<uint16_t> got = ToHost<uint16_t>(dst, heads * capacity * hd);
  for (int64_t g = 0; g < heads; ++g) {
    for (int64_t slot = 0; slot < capacity; ++slot) {
      for (int64_t d = 0; d < hd; ++d) {
        const uint16_t v = got[(g * capacity + slot) * hd + d];
        if (slot >= slot0 && slot < slot0 + n) {
          ASSERT_EQ(v, bits[((slot - slot0) * heads + g) * hd + d]);
        } else {
          ASSERT_EQ(v, 0xffff) << "slot " << slot << " outside the segment was written";
        }
      }
    }
  }
  EXPECT_FALSE(ScatterHeads(*ctx_, ds.as<Bf16>(), n, heads, hd, capacity, 30, dst.as<Bf16>()).ok());
}

TEST_F(CudaElementwiseTest, SiluMulMatchesCpu) {
  std::mt19937 rng(std::random_device{}());
  const int64_t n = 100003;
  std::vector<float> gate = RandomFloats(n, rng, -6, 6), up = RandomFloats(n, rng, -2, 2);
  DeviceBuffer dg = ToDevice(RoundToBf16(gate)), du = ToDevice(RoundToBf16(up));
  DeviceBuffer out = Poisoned<uint16_t>(n);
  std::vector<float> ref(n);
  kernels::SiluMul(gate.data(), up.data(), n, ref.data());
  ASSERT_TRUE(SiluMul(*ctx_, dg.as<Bf16>(), du.as<Bf16>(), n, out.as<Bf16>()).ok());
  ExpectClose("silu_mul", Bf16ToHost(out, n), ref, 1e-2);
}

TEST_F(CudaElementwiseTest, ArgMaxTakesTheFirstLargest) {
  std::mt19937 rng(std::random_device{}());
  const int64_t rows = 5, vocab = 49152;
  std::vector<float> logits = RandomFloats(rows * vocab, rng, -10, 10);
  std::uniform_int_distribution<int64_t> col(0, vocab - 1);
  // Row 1: a planted tie, the lower index must win. Row 2: NaNs never win (the CPU loop keeps
  // column 0 when it is NaN, so the NaN goes elsewhere).
  const int64_t a = col(rng), b = col(rng);
  logits[vocab + a] = logits[vocab + b] = 50.0f;
  logits[2 * vocab + 1 + col(rng) % (vocab - 1)] = std::nanf("");  // not column 0: see below
  std::vector<int32_t> ref(rows);
  for (int64_t r = 0; r < rows; ++r) {
    int64_t best = 0;
    for (int64_t c = 1; c < vocab; ++c) {
      if (logits[r * vocab + c] > logits[r * vocab + best]) best = c;
    }
    ref[r] = static_cast<int32_t>(best);
  }
  EXPECT_EQ(ref[1], std::min(a, b));
  DeviceBuffer dl = ToDevice(logits);
  DeviceBuffer out = Poisoned<int32_t>(rows);
  ASSERT_TRUE(ArgMax(*ctx_, dl.as<float>(), rows, vocab, out.as<int32_t>()).ok());
  EXPECT_EQ(ToHost<int32_t>(out, rows), ref);
}

}  // namespace
}  // namespace longread::kernels::cuda
