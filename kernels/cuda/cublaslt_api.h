// cuBLASLt through dlopen, not linked. Linked, libcublasLt (~94 KB of thread-local storage) is in
// the initial link map, so its TLS is static TLS that every thread's stack must hold; civetweb
// (prometheus-cpp's /metrics server) starts its threads with 100 KB stacks, and pthread_create
// then fails with EINVAL: any binary linking cuBLASLt could not serve /metrics. Opened at run
// time, by the first Context, its TLS is dynamic and a binary that never asks for CUDA never
// loads it.
#pragma once

#include <cublasLt.h>

#include "absl/status/status.h"

namespace longread::kernels::cuda {

// The cuBLASLt entry points this directory uses, named as in cublasLt.h.
struct CublasLt {
  decltype(&::cublasLtCreate) Create = nullptr;
  decltype(&::cublasLtDestroy) Destroy = nullptr;
  decltype(&::cublasLtMatmul) Matmul = nullptr;
  decltype(&::cublasLtMatmulAlgoGetHeuristic) MatmulAlgoGetHeuristic = nullptr;
  decltype(&::cublasLtMatmulDescCreate) MatmulDescCreate = nullptr;
  decltype(&::cublasLtMatmulDescDestroy) MatmulDescDestroy = nullptr;
  decltype(&::cublasLtMatmulDescSetAttribute) MatmulDescSetAttribute = nullptr;
  decltype(&::cublasLtMatmulPreferenceCreate) MatmulPreferenceCreate = nullptr;
  decltype(&::cublasLtMatmulPreferenceDestroy) MatmulPreferenceDestroy = nullptr;
  decltype(&::cublasLtMatmulPreferenceSetAttribute) MatmulPreferenceSetAttribute = nullptr;
  decltype(&::cublasLtMatrixLayoutCreate) MatrixLayoutCreate = nullptr;
  decltype(&::cublasLtMatrixLayoutDestroy) MatrixLayoutDestroy = nullptr;
};

// Opens libcublasLt.so.<major of the headers> (then libcublasLt.so) once per process and
// resolves every entry point; FailedPrecondition when it cannot.
absl::Status LoadCublasLt();
// The table LoadCublasLt filled (call only after it succeeded).
const CublasLt& Lt();

}  // namespace longread::kernels::cuda
