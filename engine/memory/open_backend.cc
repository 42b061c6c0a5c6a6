#include "engine/memory/open_backend.h"

#include "absl/strings/str_cat.h"
#include "engine/memory/cpu_backend.h"
#ifdef LONGREAD_HAVE_CUDA
#include "engine/memory/cuda_backend.h"
#include "kernels/cuda/cuda_ops.h"
#endif

namespace longread::engine {
namespace {

[[maybe_unused]] constexpr char kNoCudaBuild[] =
    "--device cuda: this build has no CUDA backend (nvcc was not found when it was built); use "
    "--device cpu";

}  // namespace

bool CudaBackendBuilt() {
#ifdef LONGREAD_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

absl::StatusOr<std::string> ResolveDevice(std::string_view device) {
  if (device == "cpu" || device == "cuda") return std::string(device);
  if (device == "auto") {
#ifdef LONGREAD_HAVE_CUDA
    if (kernels::cuda::DeviceAvailable()) return std::string("cuda");
#endif
    return std::string("cpu");
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--device must be cpu, cuda or auto, not '", std::string(device), "'"));
}

absl::Status CheckDevice(std::string_view device) {
  auto resolved = ResolveDevice(device);
  if (!resolved.ok()) return resolved.status();
  if (*resolved == "cpu") return absl::OkStatus();
#ifdef LONGREAD_HAVE_CUDA
  if (kernels::cuda::DeviceAvailable()) return absl::OkStatus();
  return absl::FailedPreconditionError(
      "--device cuda: no CUDA device is visible to this process (no driver or no GPU); use "
      "--device cpu");
#else
  return absl::FailedPreconditionError(kNoCudaBuild);
#endif
}

absl::StatusOr<std::unique_ptr<ReadingBackend>> OpenReadingBackend(std::string_view device,
                                                                   LlamaModel* model) {
  auto resolved = ResolveDevice(device);
  if (!resolved.ok()) return resolved.status();
  if (*resolved == "cpu") return std::make_unique<CpuReadingBackend>(model);
#ifdef LONGREAD_HAVE_CUDA
  auto cuda = CudaReadingBackend::Create(model);
  if (!cuda.ok()) return cuda.status();
  return std::unique_ptr<ReadingBackend>(std::move(*cuda));
#else
  return absl::FailedPreconditionError(kNoCudaBuild);
#endif
}

bool DeviceMemoryOf(const ReadingBackend& backend, int64_t* free_bytes, int64_t* total_bytes) {
#ifdef LONGREAD_HAVE_CUDA
  if (const auto* cuda = dynamic_cast<const CudaReadingBackend*>(&backend)) {
    return cuda->DeviceMemory(free_bytes, total_bytes).ok();
  }
#endif
  (void)backend;
  (void)free_bytes;
  (void)total_bytes;
  return false;
}

}  // namespace longread::engine
