// The fp32 verification mode's ops (engine/model's CudaPrecision::kFp32): weights decoded to fp32,
// GEMMs through cuBLASLt in fp32 (CUBLAS_COMPUTE_32F: no TF32, no reduced-precision reductions),
// and the norms, RoPE, SwiGLU and attention on fp32 activations, each computed as the CPU kernel
// computes it, so that the GPU model's greedy continuations equal the CPU engine's. The same
// shapes and conventions as cuda_ops.h; not for speed.
//
// This header needs no CUDA headers.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/ops.h"

namespace longread::kernels::cuda {

// A weight matrix resident on the device as fp32, [rows][cols] row-major.
struct DeviceMatrixF32 {
  int64_t rows = 0;
  int64_t cols = 0;
  DeviceBuffer data;
  const float* f32() const { return data.as<const float>(); }
};

// Uploads w in its file encoding and decodes it on the device to fp32: element for element the
// CPU's DequantizeRow values.
absl::StatusOr<DeviceMatrixF32> UploadMatrixF32(Context& ctx, const MatrixView& w);

// y[t][r] = sum_c W[r][c] * x[t][c], fp32 inputs, products and sums (cuBLASLt, CUBLAS_COMPUTE_32F).
absl::Status MatMulF32(Context& ctx, const DeviceMatrixF32& w, const float* x, int64_t n_tokens,
                       float* y);

// out[t] = table[tokens[t]]; ids outside the table give zero rows.
absl::Status EmbeddingGatherF32(Context& ctx, const DeviceMatrixF32& table, const int32_t* tokens,
                                int64_t n_tokens, float* out);

// residual[t] += delta[t] (skipped when delta is null), then the CPU's RmsNorm of residual[t]
// (a double sum of squares) into out.
absl::Status AddRmsNormF32(Context& ctx, float* residual, const float* delta, const float* weight,
                           int64_t n_tokens, int64_t dim, float eps, float* out);
absl::Status AddResidualF32(Context& ctx, float* residual, const float* delta, int64_t n);

// In place on x[t][h][0..head_dim): the CPU's Rope at positions[t].
absl::Status RopeF32(Context& ctx, float* x, int64_t n_tokens, int64_t n_heads, int64_t head_dim,
                     const int64_t* positions, float theta, RopeStyle style);

// dst[g][slot0 + t] = src[t][g] (rows of head_dim), as ScatterHeads.
absl::Status ScatterHeadsF32(Context& ctx, const float* src, int64_t n_tokens, int64_t n_heads,
                             int64_t head_dim, int64_t capacity, int64_t slot0, float* dst);

// out = gate / (1 + exp(-gate)) * up. out may alias gate or up.
absl::Status SiluMulF32(Context& ctx, const float* gate, const float* up, int64_t n, float* out);

// AttentionArgs in fp32 (head_dim up to 128): a warp per (query, head) walks the visible keys in
// order with an online softmax. A query with no visible key outputs zeros.
struct AttentionF32Args {
  const float* q = nullptr;  // [n_q][n_heads][head_dim], rotated
  const float* k = nullptr;  // [n_kv_heads][kv_head_stride][head_dim], rotated
  const float* v = nullptr;
  const int32_t* visible_from = nullptr;  // [n_kv_heads][n_keys]
  const int32_t* visible_until = nullptr;
  int64_t n_q = 0, n_keys = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0;
  int64_t kv_head_stride = 0;  // 0: n_keys
  float scale = 0;
  float* out = nullptr;  // [n_q][n_heads][head_dim]
};
absl::Status AttentionF32(Context& ctx, const AttentionF32Args& args);

}  // namespace longread::kernels::cuda
