// Shared by the GPU benches: kernel time measured between CUDA events on the stream the work
// runs on (host timers would count launch queueing, not the kernels).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <vector>

namespace longread::bench {

// Median milliseconds of `reps` runs of `body`, each between two events on `stream`, after
// `warmups` untimed runs (first-launch and cache effects).
template <typename F>
double MedianMs(cudaStream_t stream, int warmups, int reps, F body) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  for (int i = 0; i < warmups; ++i) body();
  std::vector<float> ms(reps);
  for (int i = 0; i < reps; ++i) {
    cudaEventRecord(start, stream);
    body();
    cudaEventRecord(stop, stream);
    cudaEventSynchronize(stop);
    cudaEventElapsedTime(&ms[i], start, stop);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(ms.begin(), ms.end());
  return ms[reps / 2];
}

}  // namespace longread::bench
