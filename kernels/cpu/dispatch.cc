#include <atomic>

#include "kernels/cpu/cpu_internal.h"

namespace longread::kernels::cpu {
namespace {
std::atomic<bool> force_portable{false};
}  // namespace

bool CpuHasAvx2Fma() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
  return has;
#else
  return false;
#endif
}

bool UseAvx2() { return !force_portable.load(std::memory_order_relaxed) && CpuHasAvx2Fma(); }

void ForcePortable(bool force) { force_portable.store(force, std::memory_order_relaxed); }

}  // namespace longread::kernels::cpu
