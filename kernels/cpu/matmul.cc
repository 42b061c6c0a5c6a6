// MatMul / DequantizeRow entry points: runtime dispatch between the AVX2 path and the portable
// path, and the portable path itself.
#include <vector>

#include "kernels/cpu/cpu_internal.h"
#include "kernels/ops.h"

namespace longread::kernels {
namespace cpu {
namespace {

// Eight independent partial sums, combined pairwise at the end: the portable twin of an 8-lane
// vector accumulator (and vectorizable by the compiler without reassociation).
float DotPortable(const float* a, const float* b, int64_t n) {
  float partial[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int l = 0; l < 8; ++l) partial[l] += a[i + l] * b[i + l];
  }
  for (int l = 0; i < n; ++i, ++l) partial[l] += a[i] * b[i];
  return ((partial[0] + partial[4]) + (partial[1] + partial[5])) +
         ((partial[2] + partial[6]) + (partial[3] + partial[7]));
}

void MatMulRowsPortable(const MatrixView& w, const float* x, int64_t n_tokens, float* y,
                        int64_t row_begin, int64_t row_end) {
  thread_local std::vector<float> row_buffer;
  if (static_cast<int64_t>(row_buffer.size()) < w.cols) row_buffer.resize(w.cols);
  for (int64_t r = row_begin; r < row_end; ++r) {
    DequantizeRowPortable(w.type, RowPointer(w, r), w.cols, row_buffer.data());
    for (int64_t t = 0; t < n_tokens; ++t) {
      y[t * w.rows + r] = DotPortable(row_buffer.data(), x + t * w.cols, w.cols);
    }
  }
}

}  // namespace

Int8Activations QuantizeActivations(const float* x, int64_t n_tokens, int64_t cols,
                                    void (*quantize)(const float*, int64_t, int8_t*, float*,
                                                     float*)) {
  // The calling thread's grow-only buffers; workers only read them during the MatMul.
  thread_local std::vector<int8_t> q;
  thread_local std::vector<float> d, sum;
  const int64_t n_blocks = n_tokens * (cols / 32);
  if (static_cast<int64_t>(q.size()) < n_tokens * cols) q.resize(n_tokens * cols);
  if (static_cast<int64_t>(d.size()) < n_blocks) {
    d.resize(n_blocks);
    sum.resize(n_blocks);
  }
  for (int64_t t = 0; t < n_tokens; ++t) {
    quantize(x + t * cols, cols, q.data() + t * cols, d.data() + t * (cols / 32),
             sum.data() + t * (cols / 32));
  }
  return Int8Activations{q.data(), d.data(), sum.data()};
}

Int16Activations QuantizeActivations16(const float* x, int64_t n_tokens, int64_t cols,
                                       void (*quantize)(const float*, int64_t, int16_t*, float*,
                                                        float*)) {
  thread_local std::vector<int16_t> q;
  thread_local std::vector<float> d, sum;
  const int64_t n_blocks = n_tokens * (cols / 32);
  if (static_cast<int64_t>(q.size()) < n_tokens * cols) q.resize(n_tokens * cols);
  if (static_cast<int64_t>(d.size()) < n_blocks) {
    d.resize(n_blocks);
    sum.resize(n_blocks);
  }
  for (int64_t t = 0; t < n_tokens; ++t) {
    quantize(x + t * cols, cols, q.data() + t * cols, d.data() + t * (cols / 32),
             sum.data() + t * (cols / 32));
  }
  return Int16Activations{q.data(), d.data(), sum.data()};
}

void MatMulPortable(const MatrixView& w, const float* x, int64_t n_tokens, float* y,
                    ThreadPool* pool, DecodeActivations activations) {
  if (n_tokens <= kInt8MaxTokens && activations == DecodeActivations::kInt16 &&
      HasInt8Dot(w.type)) {
    const Int16Activations act =
        QuantizeActivations16(x, n_tokens, w.cols, &QuantizeRowQ16Portable);
    auto rows = [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        for (int64_t t = 0; t < n_tokens; ++t) {
          y[t * w.rows + r] =
              DotInt16Portable(w.type, RowPointer(w, r), act.q + t * w.cols,
                               act.d + t * (w.cols / 32), act.sum + t * (w.cols / 32), w.cols);
        }
      }
    };
    if (pool == nullptr) {
      rows(0, w.rows);
    } else {
      pool->ParallelFor(w.rows, rows);
    }
    return;
  }
  if (n_tokens <= kInt8MaxTokens && activations == DecodeActivations::kInt8 && HasInt8Dot(w.type)) {
    const Int8Activations act = QuantizeActivations(x, n_tokens, w.cols, &QuantizeRowQ8Portable);
    auto rows = [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        for (int64_t t = 0; t < n_tokens; ++t) {
          y[t * w.rows + r] =
              DotInt8Portable(w.type, RowPointer(w, r), act.q + t * w.cols,
                              act.d + t * (w.cols / 32), act.sum + t * (w.cols / 32), w.cols);
        }
      }
    };
    if (pool == nullptr) {
      rows(0, w.rows);
    } else {
      pool->ParallelFor(w.rows, rows);
    }
    return;
  }
  auto rows = [&](int64_t begin, int64_t end) {
    MatMulRowsPortable(w, x, n_tokens, y, begin, end);
  };
  if (pool == nullptr) {
    rows(0, w.rows);
  } else {
    pool->ParallelFor(w.rows, rows);
  }
}

}  // namespace cpu

void MatMul(const MatrixView& w, const float* x, int64_t n_tokens, float* y, ThreadPool* pool,
            DecodeActivations activations) {
  if (activations == DecodeActivations::kDefault) activations = DefaultDecodeActivations();
  if (n_tokens <= 0 || w.rows <= 0) return;
  if (cpu::UseAvx2()) {
    cpu::MatMulAvx2(w, x, n_tokens, y, pool, activations);
  } else {
    cpu::MatMulPortable(w, x, n_tokens, y, pool, activations);
  }
}

void DequantizeRow(const MatrixView& w, int64_t row, float* out) {
  if (cpu::UseAvx2()) {
    cpu::DequantizeRowAvx2(w.type, cpu::RowPointer(w, row), w.cols, out);
  } else {
    cpu::DequantizeRowPortable(w.type, cpu::RowPointer(w, row), w.cols, out);
  }
}

}  // namespace longread::kernels
