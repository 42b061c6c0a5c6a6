// The fp32 verification mode's ops (cuda_ops_fp32.h) against the CPU kernels on fresh random
// inputs: fp32 on both sides, so the bounds are fp32 rounding (1e-5), not bf16's 1e-2, and the
// weight decoding is exact.
#include <gtest/gtest.h>

#include <climits>
#include <cstring>
#include <random>

#include "kernels/attention.h"
#include "kernels/cuda/cuda_ops_fp32.h"
#include "kernels/half.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace longread::kernels::cuda {
namespace {

constexpr double kFp32Tolerance = 1e-5;

// Q4_1 blocks of random nibbles with finite scales and offsets.
std::vector<uint8_t> RandomQ4_1(int64_t rows, int64_t cols, std::mt19937& rng) {
  const MatrixView shape{DType::kQ4_1, rows, cols, nullptr};
  std::vector<uint8_t> bytes(rows * shape.row_bytes());
  std::uniform_int_distribution<int> byte(0, 255);
  for (auto& b : bytes) b = static_cast<uint8_t>(byte(rng));
  std::uniform_real_distribution<float> scale(1e-3f, 0.1f);
  for (int64_t b = 0; b < rows * cols / 32; ++b) {
    const uint16_t d = FloatToHalf(scale(rng)), m = FloatToHalf(-8 * scale(rng));
    std::memcpy(&bytes[b * 20], &d, 2);
    std::memcpy(&bytes[b * 20 + 2], &m, 2);
  }
  return bytes;
}

class CudaFp32Test : public CudaTest {};

TEST_F(CudaFp32Test, UploadEqualsCpuDequantizationAndMatMulMatchesCpu) {
  std::mt19937 rng(std::random_device{}());
  const int64_t rows = 300, cols = 576;
  const std::vector<uint8_t> bytes = RandomQ4_1(rows, cols, rng);
  const MatrixView w{DType::kQ4_1, rows, cols, bytes.data()};
  auto dev_w = UploadMatrixF32(*ctx_, w);
  ASSERT_TRUE(dev_w.ok()) << dev_w.status();
  std::vector<float> cpu_w(rows * cols);
  for (int64_t r = 0; r < rows; ++r) DequantizeRow(w, r, cpu_w.data() + r * cols);
  const std::vector<float> gpu_w = ToHost<float>(dev_w->data, rows * cols);
  int64_t mismatches = 0;
  for (int64_t i = 0; i < rows * cols; ++i) mismatches += gpu_w[i] != cpu_w[i];
  EXPECT_EQ(mismatches, 0) << "fp32 upload differs from DequantizeRow";

  for (int64_t n : {1, 3, 77}) {
    const std::vector<float> x = RandomFloats(n * cols, rng);
    std::vector<float> ref(n * rows);
    kernels::MatMul(w, x.data(), n, ref.data(), nullptr, DecodeActivations::kFloat32);
    DeviceBuffer dx = ToDevice(x), y = Poisoned<float>(n * rows);
    ASSERT_TRUE(MatMulF32(*ctx_, *dev_w, dx.as<float>(), n, y.as<float>()).ok());
    ExpectClose("fp32 matmul n=" + std::to_string(n), ToHost<float>(y, n * rows), ref,
                kFp32Tolerance);
  }
}

TEST_F(CudaFp32Test, NormRopeSiluAndEmbeddingMatchCpu) {
  std::mt19937 rng(std::random_device{}());
  const int64_t n = 37, dim = 576, heads = 9, hd = 64;
  const float eps = 1e-5f;
  std::vector<float> residual = RandomFloats(n * dim, rng, -3, 3);
  const std::vector<float> delta = RandomFloats(n * dim, rng);
  const std::vector<float> weight = RandomFloats(dim, rng, 0.5f, 1.5f);
  DeviceBuffer dr = ToDevice(residual), dd = ToDevice(delta), dw = ToDevice(weight);
  DeviceBuffer out = Poisoned<float>(n * dim);
  std::vector<float> ref(n * dim);
  kernels::RmsNorm(residual.data(), weight.data(), n, dim, eps, ref.data());
  ASSERT_TRUE(
      AddRmsNormF32(*ctx_, dr.as<float>(), nullptr, dw.as<float>(), n, dim, eps, out.as<float>())
          .ok());
  ExpectClose("fp32 rmsnorm", ToHost<float>(out, n * dim), ref, kFp32Tolerance);
  kernels::Add(residual.data(), delta.data(), n * dim, residual.data());
  kernels::RmsNorm(residual.data(), weight.data(), n, dim, eps, ref.data());
  ASSERT_TRUE(AddRmsNormF32(*ctx_, dr.as<float>(), dd.as<float>(), dw.as<float>(), n, dim, eps,
                            out.as<float>())
                  .ok());
  ExpectClose("fp32 add+rmsnorm", ToHost<float>(out, n * dim), ref, kFp32Tolerance);
  ExpectClose("fp32 add+rmsnorm residual", ToHost<float>(dr, n * dim), residual, 0);

  std::vector<int64_t> positions(n);
  std::uniform_int_distribution<int64_t> pos(0, 8191);
  for (int64_t& p : positions) p = pos(rng);
  for (RopeStyle style : {RopeStyle::kHalf, RopeStyle::kInterleaved}) {
    std::vector<float> x = RandomFloats(n * heads * hd, rng, -2, 2);
    DeviceBuffer dx = ToDevice(x), dp = ToDevice(positions);
    kernels::Rope(x.data(), n, heads, hd, positions.data(), 100000.0f, style);
    ASSERT_TRUE(
        RopeF32(*ctx_, dx.as<float>(), n, heads, hd, dp.as<int64_t>(), 100000.0f, style).ok());
    ExpectClose("fp32 rope", ToHost<float>(dx, n * heads * hd), x, kFp32Tolerance);
  }

  const std::vector<float> gate = RandomFloats(n * dim, rng, -6, 6),
                           up = RandomFloats(n * dim, rng);
  DeviceBuffer dg = ToDevice(gate), du = ToDevice(up), silu = Poisoned<float>(n * dim);
  kernels::SiluMul(gate.data(), up.data(), n * dim, ref.data());
  ASSERT_TRUE(SiluMulF32(*ctx_, dg.as<float>(), du.as<float>(), n * dim, silu.as<float>()).ok());
  ExpectClose("fp32 silu*up", ToHost<float>(silu, n * dim), ref, kFp32Tolerance);

  const int64_t vocab = 50;
  const std::vector<uint8_t> table_bytes = RandomQ4_1(vocab, dim, rng);
  const MatrixView table{DType::kQ4_1, vocab, dim, table_bytes.data()};
  auto dev_table = UploadMatrixF32(*ctx_, table);
  ASSERT_TRUE(dev_table.ok()) << dev_table.status();
  const std::vector<int32_t> ids = {3, 0, 49, 3, 17};
  DeviceBuffer dids = ToDevice(ids), rows = Poisoned<float>(5 * dim);
  ASSERT_TRUE(EmbeddingGatherF32(*ctx_, *dev_table, dids.as<int32_t>(), 5, rows.as<float>()).ok());
  std::vector<float> expected(5 * dim);
  for (int64_t t = 0; t < 5; ++t) DequantizeRow(table, ids[t], expected.data() + t * dim);
  ExpectClose("fp32 embedding", ToHost<float>(rows, 5 * dim), expected, 0);
}

// Keys and values in buffers of `stride` rows per KV head (a cache's spare capacity holding
// other values); `from`/`until` per (KV head, key). Compares with the CPU kernel and checks that
// queries seeing no key output exact zeros.
void CheckAttention(Context& ctx, const std::string& what, int64_t n_q, int64_t n_keys,
                    int64_t stride, int64_t heads, int64_t kv_heads,
                    const std::vector<int32_t>& from, const std::vector<int32_t>& until,
                    std::mt19937& rng) {
  const int64_t hd = 64;
  const std::vector<float> q = RandomFloats(n_q * heads * hd, rng, -2, 2);
  const std::vector<float> k = RandomFloats(kv_heads * n_keys * hd, rng, -2, 2);
  const std::vector<float> v = RandomFloats(kv_heads * n_keys * hd, rng);
  std::vector<float> k_pad(kv_heads * stride * hd, 3.0f), v_pad(k_pad.size(), -5.0f);
  for (int64_t g = 0; g < kv_heads; ++g) {
    std::copy_n(&k[g * n_keys * hd], n_keys * hd, &k_pad[g * stride * hd]);
    std::copy_n(&v[g * n_keys * hd], n_keys * hd, &v_pad[g * stride * hd]);
  }
  kernels::AttentionArgs cpu;
  cpu.q = q.data();
  cpu.k = k.data();
  cpu.v = v.data();
  cpu.visible_from = from.data();
  cpu.visible_until = until.data();
  cpu.n_q = n_q;
  cpu.n_keys = n_keys;
  cpu.n_heads = heads;
  cpu.n_kv_heads = kv_heads;
  cpu.head_dim = hd;
  cpu.scale = 0.125f;
  std::vector<float> ref(n_q * heads * hd);
  cpu.out = ref.data();
  kernels::Attention(cpu, nullptr);

  auto upload = [&](const auto& host) {
    auto b = DeviceBuffer::Allocate(static_cast<int64_t>(host.size() * sizeof(host[0])));
    EXPECT_TRUE(b.ok());
    EXPECT_TRUE(Upload(ctx, host.data(), b->bytes(), b->template as<void>()).ok());
    return std::move(*b);
  };
  DeviceBuffer dq = upload(q), dk = upload(k_pad), dv = upload(v_pad);
  DeviceBuffer dfrom = upload(from), duntil = upload(until);
  DeviceBuffer dout = upload(std::vector<float>(ref.size(), NAN));
  AttentionF32Args gpu;
  gpu.q = dq.as<float>();
  gpu.k = dk.as<float>();
  gpu.v = dv.as<float>();
  gpu.visible_from = dfrom.as<int32_t>();
  gpu.visible_until = duntil.as<int32_t>();
  gpu.n_q = n_q;
  gpu.n_keys = n_keys;
  gpu.n_heads = heads;
  gpu.n_kv_heads = kv_heads;
  gpu.head_dim = hd;
  gpu.kv_head_stride = stride;
  gpu.scale = 0.125f;
  gpu.out = dout.as<float>();
  const absl::Status s = AttentionF32(ctx, gpu);
  ASSERT_TRUE(s.ok()) << s;
  std::vector<float> got(ref.size());
  ASSERT_TRUE(Download(ctx, dout.as<void>(), got.size() * 4, got.data()).ok());
  ExpectClose("fp32 attention " + what, got, ref, kFp32Tolerance);
  int64_t blind = 0;
  for (int64_t i = 0; i < n_q; ++i) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t g = h / (heads / kv_heads);
      bool sees = false;
      for (int64_t j = 0; j < n_keys; ++j) {
        sees = sees || (from[g * n_keys + j] <= i && i < until[g * n_keys + j]);
      }
      if (sees) continue;
      ++blind;
      for (int64_t d = 0; d < hd; ++d) ASSERT_EQ(got[(i * heads + h) * hd + d], 0.0f) << what;
    }
  }
  std::cout << "[info] fp32 attention " << what << ": " << blind << " rows see no key\n";
}

TEST_F(CudaFp32Test, AttentionMatchesCpuDenseCausalOverACache) {
  std::mt19937 rng(std::random_device{}());
  const int64_t n_q = 37, past = 100, heads = 9, kv_heads = 3, n_keys = past + n_q;
  std::vector<int32_t> from, until;
  for (int64_t g = 0; g < kv_heads; ++g) {
    for (int64_t j = 0; j < n_keys; ++j) {
      from.push_back(static_cast<int32_t>(std::max<int64_t>(0, j - past)));
      until.push_back(INT32_MAX);
    }
  }
  CheckAttention(*ctx_, "dense causal", n_q, n_keys, n_keys + 23, heads, kv_heads, from, until,
                 rng);
  // Decode: one query over the cache.
  std::vector<int32_t> from1(kv_heads * (past + 1), 0), until1(from1.size(), INT32_MAX);
  CheckAttention(*ctx_, "decode", 1, past + 1, past + 1, heads, kv_heads, from1, until1, rng);
}

TEST_F(CudaFp32Test, AttentionMatchesCpuOnRandomIntervals) {
  std::mt19937 rng(std::random_device{}());
  const int64_t n_q = 50, n_keys = 300, heads = 6, kv_heads = 2;
  std::uniform_int_distribution<int32_t> at(1, static_cast<int32_t>(n_q));
  std::uniform_int_distribution<int> kind(0, 9);
  std::vector<int32_t> from, until;
  for (int64_t i = 0; i < kv_heads * n_keys; ++i) {
    // From query 1 at the earliest: query 0 sees nothing.
    int32_t a = at(rng), b = at(rng);
    if (a > b) std::swap(a, b);
    const int k = kind(rng);
    if (k == 0) b = a;
    if (k == 1) b = INT32_MAX;
    from.push_back(a);
    until.push_back(b);
  }
  CheckAttention(*ctx_, "random intervals", n_q, n_keys, n_keys, heads, kv_heads, from, until, rng);
}

}  // namespace
}  // namespace longread::kernels::cuda
