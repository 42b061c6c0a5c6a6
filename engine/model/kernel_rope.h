// The model file's RoPE layout as the kernels name it: shared by every engine part that rotates
// (the CPU and CUDA memories, the CUDA model, calibration).
#pragma once

#include "engine/model_files/model_config.h"
#include "kernels/ops.h"

namespace longread::engine {

inline kernels::RopeStyle KernelRope(RopeStyle style) {
  return style == RopeStyle::kHalf ? kernels::RopeStyle::kHalf : kernels::RopeStyle::kInterleaved;
}

}  // namespace longread::engine
