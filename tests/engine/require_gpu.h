// Shared by the engine tests that need a CUDA device: without one they skip, unless
// LONGREAD_REQUIRE_GPU=1 (as on the device machine) turns the skip into a failure.
#pragma once

#include <cstdlib>
#include <string>

#include "gtest/gtest.h"
#include "kernels/cuda/cuda_ops.h"

#define REQUIRE_GPU()                                                                  \
  if (!::longread::kernels::cuda::DeviceAvailable()) {                                 \
    const char* require = std::getenv("LONGREAD_REQUIRE_GPU");                         \
    if (require != nullptr && std::string(require) == "1") FAIL() << "no CUDA device"; \
    GTEST_SKIP() << "no CUDA device";                                                  \
  }
