// Shared by the CUDA kernel tests: a Context per test (skipped without a device unless
// LONGREAD_REQUIRE_GPU=1, which turns the skip into a failure), device copies of host vectors,
// bf16 rounding, and the error measures the tests bound.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/half.h"

namespace longread::kernels::cuda {

class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!DeviceAvailable()) {
      const char* require = std::getenv("LONGREAD_REQUIRE_GPU");
      if (require != nullptr && std::string(require) == "1") {
        FAIL() << "no CUDA device, and LONGREAD_REQUIRE_GPU=1";
      }
      GTEST_SKIP() << "no CUDA device";
    }
    auto ctx = Context::Create();
    ASSERT_TRUE(ctx.ok()) << ctx.status();
    ctx_ = std::move(*ctx);
  }

  // A device copy of `host`.
  template <typename T>
  DeviceBuffer ToDevice(const std::vector<T>& host) {
    auto b = DeviceBuffer::Allocate(static_cast<int64_t>(host.size() * sizeof(T)));
    EXPECT_TRUE(b.ok()) << b.status();
    EXPECT_TRUE(Upload(*ctx_, host.data(), b->bytes(), b->as<void>()).ok());
    return std::move(*b);
  }
  // A device buffer of n elements, every byte 0xff (NaN as bf16 and fp32): outputs a kernel
  // forgets to write stay NaN and fail the comparison.
  template <typename T>
  DeviceBuffer Poisoned(int64_t n) {
    std::vector<uint8_t> poison(n * sizeof(T), 0xff);
    return ToDevice(poison);
  }
  template <typename T>
  std::vector<T> ToHost(const DeviceBuffer& b, int64_t n) {
    std::vector<T> host(n);
    const absl::Status s = Download(*ctx_, b.as<void>(), n * int64_t{sizeof(T)}, host.data());
    EXPECT_TRUE(s.ok()) << s;
    return host;
  }
  // bf16 device data as floats.
  std::vector<float> Bf16ToHost(const DeviceBuffer& b, int64_t n) {
    const std::vector<uint16_t> bits = ToHost<uint16_t>(b, n);
    std::vector<float> out(n);
    for (int64_t i = 0; i < n; ++i) out[i] = BFloat16ToFloat(bits[i]);
    return out;
  }

  std::unique_ptr<Context> ctx_;
};

inline std::vector<float> RandomFloats(int64_t n, std::mt19937& rng, float lo = -1, float hi = 1) {
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

// Rounds every value to bf16 (in place) and returns the bits: the GPU and the CPU reference then
// see the same inputs.
inline std::vector<uint16_t> RoundToBf16(std::vector<float>& v) {
  std::vector<uint16_t> bits(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    bits[i] = FloatToBFloat16(v[i]);
    v[i] = BFloat16ToFloat(bits[i]);
  }
  return bits;
}

struct Errors {
  double relative_l2 = 0;   // ||out - ref|| / ||ref||
  double max_abs = 0;       // max |out - ref|
  double max_relative = 0;  // max |out - ref| / max |ref|
  bool all_finite = true;
};

inline Errors Compare(const std::vector<float>& out, const std::vector<float>& ref) {
  Errors e;
  double diff2 = 0, ref2 = 0, ref_max = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(out[i])) e.all_finite = false;
    const double d = static_cast<double>(out[i]) - ref[i];
    diff2 += d * d;
    ref2 += static_cast<double>(ref[i]) * ref[i];
    e.max_abs = std::max(e.max_abs, std::abs(d));
    ref_max = std::max(ref_max, std::abs(static_cast<double>(ref[i])));
  }
  e.relative_l2 = ref2 > 0 ? std::sqrt(diff2 / ref2) : std::sqrt(diff2);
  e.max_relative = ref_max > 0 ? e.max_abs / ref_max : e.max_abs;
  return e;
}

// Prints the errors (the device run's log is where the numbers are read) and checks them.
inline void ExpectClose(const std::string& what, const std::vector<float>& out,
                        const std::vector<float>& ref, double tolerance) {
  ASSERT_EQ(out.size(), ref.size());
  const Errors e = Compare(out, ref);
  std::cout << "[errors] " << what << ": relative_l2=" << e.relative_l2 << " max_abs=" << e.max_abs
            << " max_rel=" << e.max_relative << "\n";
  EXPECT_TRUE(e.all_finite) << what << ": non-finite output (an element left unwritten?)";
  EXPECT_LE(e.relative_l2, tolerance) << what;
  EXPECT_LE(e.max_relative, tolerance) << what;
}

}  // namespace longread::kernels::cuda
