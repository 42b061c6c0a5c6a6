// Every CUDA runtime and cuBLASLt call goes through these: a failure becomes an absl::Status
// naming the call, the error and the file:line, and the op returns it.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace longread::kernels::cuda::internal {

inline absl::Status CudaError(cudaError_t e, const char* what, const char* file, int line) {
  return absl::InternalError(absl::StrCat(file, ":", line, ": ", what, ": ", cudaGetErrorName(e),
                                          " (", cudaGetErrorString(e), ")"));
}

inline absl::Status CublasError(cublasStatus_t s, const char* what, const char* file, int line) {
  return absl::InternalError(
      absl::StrCat(file, ":", line, ": ", what, ": cuBLAS status ", static_cast<int>(s)));
}

}  // namespace longread::kernels::cuda::internal

#define LONGREAD_CUDA_RETURN_IF_ERROR(call)                                                   \
  do {                                                                                        \
    const cudaError_t longread_cuda_e = (call);                                               \
    if (longread_cuda_e != cudaSuccess) {                                                     \
      return ::longread::kernels::cuda::internal::CudaError(longread_cuda_e, #call, __FILE__, \
                                                            __LINE__);                        \
    }                                                                                         \
  } while (0)

#define LONGREAD_CUBLAS_RETURN_IF_ERROR(call)                                                     \
  do {                                                                                            \
    const cublasStatus_t longread_cublas_s = (call);                                              \
    if (longread_cublas_s != CUBLAS_STATUS_SUCCESS) {                                             \
      return ::longread::kernels::cuda::internal::CublasError(longread_cublas_s, #call, __FILE__, \
                                                              __LINE__);                          \
    }                                                                                             \
  } while (0)
