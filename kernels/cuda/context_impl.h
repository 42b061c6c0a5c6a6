// The Context's internals, shared by the .cc and .cu files of this directory.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <tuple>

#include "kernels/cuda/cuda_ops.h"

namespace longread::kernels::cuda {

// A cuBLASLt plan for one (rows, cols, n_tokens, output type, input type): descriptors and the
// chosen algo.
struct GemmPlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

struct Context::Impl {
  int device = 0;
  cudaStream_t stream = nullptr;
  cublasLtHandle_t lt = nullptr;
  DeviceBuffer workspace;
  DeviceBuffer attention_bounds;  // grow-only scratch of Attention's per-tile interval bounds
  std::map<std::tuple<int64_t, int64_t, int64_t, int, int>, GemmPlan> plans;
};

}  // namespace longread::kernels::cuda
