// Shared by the engine's CUDA code (the model and the memory): early return on a failed status,
// and device scratch buffers that only grow.
#pragma once

#include <cstdint>
#include <utility>

#include "absl/status/status.h"
#include "kernels/cuda/cuda_ops.h"

#define LONGREAD_RETURN_IF_ERROR(expr)      \
  do {                                      \
    if (absl::Status s = (expr); !s.ok()) { \
      return s;                             \
    }                                       \
  } while (0)

namespace longread::engine {

// Grows `buffer` to at least `bytes` (contents are not kept).
inline absl::Status Reserve(kernels::cuda::DeviceBuffer& buffer, int64_t bytes) {
  if (buffer.bytes() >= bytes) return absl::OkStatus();
  auto b = kernels::cuda::DeviceBuffer::Allocate(bytes);
  if (!b.ok()) return b.status();
  buffer = std::move(*b);
  return absl::OkStatus();
}

}  // namespace longread::engine
