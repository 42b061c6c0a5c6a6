#include "kernels/cuda/cublaslt_api.h"

#include <dlfcn.h>

#include <mutex>
#include <string>

#include "absl/strings/str_cat.h"

namespace longread::kernels::cuda {
namespace {

CublasLt table;
absl::Status load_status;

template <typename Fn>
bool Resolve(void* lib, const char* name, Fn* fn) {
  *fn = reinterpret_cast<Fn>(dlsym(lib, name));
  return *fn != nullptr;
}

absl::Status Load() {
  const std::string versioned = absl::StrCat("libcublasLt.so.", CUBLAS_VER_MAJOR);
  void* lib = dlopen(versioned.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) lib = dlopen("libcublasLt.so", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat("cannot load ", versioned,
                                                      " (the CUDA toolkit's cuBLASLt; is it on ",
                                                      "LD_LIBRARY_PATH?): ", dlerror()));
  }
  CublasLt t;
  const bool ok =
      Resolve(lib, "cublasLtCreate", &t.Create) && Resolve(lib, "cublasLtDestroy", &t.Destroy) &&
      Resolve(lib, "cublasLtMatmul", &t.Matmul) &&
      Resolve(lib, "cublasLtMatmulAlgoGetHeuristic", &t.MatmulAlgoGetHeuristic) &&
      Resolve(lib, "cublasLtMatmulDescCreate", &t.MatmulDescCreate) &&
      Resolve(lib, "cublasLtMatmulDescDestroy", &t.MatmulDescDestroy) &&
      Resolve(lib, "cublasLtMatmulDescSetAttribute", &t.MatmulDescSetAttribute) &&
      Resolve(lib, "cublasLtMatmulPreferenceCreate", &t.MatmulPreferenceCreate) &&
      Resolve(lib, "cublasLtMatmulPreferenceDestroy", &t.MatmulPreferenceDestroy) &&
      Resolve(lib, "cublasLtMatmulPreferenceSetAttribute", &t.MatmulPreferenceSetAttribute) &&
      Resolve(lib, "cublasLtMatrixLayoutCreate", &t.MatrixLayoutCreate) &&
      Resolve(lib, "cublasLtMatrixLayoutDestroy", &t.MatrixLayoutDestroy);
  if (!ok) {
    return absl::FailedPreconditionError(
        absl::StrCat(versioned, " lacks an entry point: ", dlerror()));
  }
  table = t;  // the library stays open for the life of the process
  return absl::OkStatus();
}

}  // namespace

absl::Status LoadCublasLt() {
  static std::once_flag once;
  std::call_once(once, [] { load_status = Load(); });
  return load_status;
}

const CublasLt& Lt() { return table; }

}  // namespace longread::kernels::cuda
