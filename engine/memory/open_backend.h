// Picks a ReadingBackend by name at run time: `--device cpu|cuda|auto` of `longread run` and of
// the worker. The CUDA backend is compiled whenever nvcc is found at build time (CI builds it
// without a GPU); asking for it where no GPU is visible is FailedPrecondition, before any weight
// moves.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "engine/memory/reading_backend.h"
#include "engine/model/llama_model.h"

namespace longread::engine {

// "cpu", "cuda", or "auto" (cuda when this build has CUDA and a device is visible, else cpu).
// InvalidArgument for anything else.
absl::StatusOr<std::string> ResolveDevice(std::string_view device);

// OK when OpenReadingBackend(device, ...) can succeed as far as the device goes (cheap: loads no
// weights): InvalidArgument for an unknown name, FailedPrecondition for cuda without a build
// with CUDA or without a visible GPU.
absl::Status CheckDevice(std::string_view device);

// The backend for `device` over `model` (not owned; outlives the backend).
absl::StatusOr<std::unique_ptr<ReadingBackend>> OpenReadingBackend(std::string_view device,
                                                                   LlamaModel* model);

// True when this build has the CUDA backend (not whether a GPU is visible).
bool CudaBackendBuilt();
// Free and total device bytes of a CUDA backend; false for any other backend.
bool DeviceMemoryOf(const ReadingBackend& backend, int64_t* free_bytes, int64_t* total_bytes);

}  // namespace longread::engine
