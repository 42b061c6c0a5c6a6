// Weights dequantized once, at upload: the file's blocks go to the device as they are and one
// kernel decodes them to bf16, so a model's upload moves its file size, not its bf16 size.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/launch.h"

namespace longread::kernels::cuda::launch {
namespace {

__device__ float HalfBits(const uint8_t* p) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(p[0] | (p[1] << 8))));
}

// One thread per 32-element block (quantized types) or per element (float types). The element
// values are computed exactly as kernels/cpu/reference.cc computes them, then rounded to bf16.
__global__ void DequantizeKernel(DType type, const uint8_t* src, int64_t rows, int64_t cols,
                                 __nv_bfloat16* dst) {
  const int64_t per_row =
      type == DType::kQ4_0 || type == DType::kQ4_1 || type == DType::kQ8_0 ? cols / 32 : cols;
  const int64_t unit = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (unit >= rows * per_row) return;
  switch (type) {
    case DType::kF32: {
      float f;
      memcpy(&f, src + unit * 4, 4);
      dst[unit] = __float2bfloat16_rn(f);
      return;
    }
    case DType::kF16:
      dst[unit] = __float2bfloat16_rn(HalfBits(src + unit * 2));
      return;
    case DType::kBF16:
      dst[unit] = __ushort_as_bfloat16(
          static_cast<unsigned short>(src[unit * 2] | (src[unit * 2 + 1] << 8)));
      return;
    case DType::kQ8_0: {
      const uint8_t* b = src + unit * 34;
      const float d = HalfBits(b);
      for (int i = 0; i < 32; ++i) {
        dst[unit * 32 + i] =
            __float2bfloat16_rn(static_cast<float>(static_cast<int8_t>(b[2 + i])) * d);
      }
      return;
    }
    case DType::kQ4_0: {
      const uint8_t* b = src + unit * 18;
      const float d = HalfBits(b);
      for (int i = 0; i < 16; ++i) {
        dst[unit * 32 + i] = __float2bfloat16_rn(static_cast<float>((b[2 + i] & 0x0f) - 8) * d);
        dst[unit * 32 + 16 + i] = __float2bfloat16_rn(static_cast<float>((b[2 + i] >> 4) - 8) * d);
      }
      return;
    }
    case DType::kQ4_1: {
      const uint8_t* b = src + unit * 20;
      const float d = HalfBits(b), m = HalfBits(b + 2);
      for (int i = 0; i < 16; ++i) {
        dst[unit * 32 + i] =
            __float2bfloat16_rn(__fmaf_rn(static_cast<float>(b[4 + i] & 0x0f), d, m));
        dst[unit * 32 + 16 + i] =
            __float2bfloat16_rn(__fmaf_rn(static_cast<float>(b[4 + i] >> 4), d, m));
      }
      return;
    }
  }
}

}  // namespace

cudaError_t Dequantize(DType type, const uint8_t* src, int64_t rows, int64_t cols, uint16_t* dst,
                       cudaStream_t stream) {
  const int64_t units = rows * (cols / BlockElements(type));
  constexpr int kThreads = 256;
  DequantizeKernel<<<static_cast<unsigned>((units + kThreads - 1) / kThreads), kThreads, 0,
                     stream>>>(type, src, rows, cols, reinterpret_cast<__nv_bfloat16*>(dst));
  return cudaGetLastError();
}

}  // namespace longread::kernels::cuda::launch
