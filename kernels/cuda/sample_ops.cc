// The checked entry of the device sampler (sample.cu).
#include "absl/strings/str_cat.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/context_impl.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/launch.h"

namespace longread::kernels::cuda {

absl::Status SampleToken(Context& ctx, const SampleArgs& a) {
  if (a.vocab <= 0 || a.vocab >= INT32_MAX || a.logits == nullptr || a.scratch == nullptr ||
      a.out == nullptr) {
    return absl::InvalidArgumentError("cuda::SampleToken: vocab, logits, scratch and out needed");
  }
  if (a.n_penalized < 0 || a.n_banned < 0 || (a.n_penalized > 0 && a.penalized == nullptr) ||
      (a.n_banned > 0 && a.banned == nullptr)) {
    return absl::InvalidArgumentError("cuda::SampleToken: control lists");
  }
  if (a.temperature > 0.0f && !(a.uniform >= 0.0 && a.uniform < 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda::SampleToken: uniform draw ", a.uniform, " outside [0, 1)"));
  }
  LONGREAD_CUDA_RETURN_IF_ERROR(launch::SampleToken(a, ctx.impl().stream));
  return absl::OkStatus();
}

}  // namespace longread::kernels::cuda
