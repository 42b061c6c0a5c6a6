// Device buffers, the Context (stream, cuBLASLt handle, workspace) and the cuBLASLt GEMM.
#include <utility>

#include "kernels/cuda/check.h"
#include "kernels/cuda/context_impl.h"
#include "kernels/cuda/cublaslt_api.h"
#include "kernels/cuda/cuda_ops.h"

namespace longread::kernels::cuda {
namespace {

// cuBLASLt's recommended workspace on Hopper.
constexpr int64_t kWorkspaceBytes = int64_t{32} << 20;

}  // namespace

bool DeviceAvailable() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

absl::StatusOr<DeviceBuffer> DeviceBuffer::Allocate(int64_t bytes) {
  DeviceBuffer b;
  if (bytes <= 0) return b;
  LONGREAD_CUDA_RETURN_IF_ERROR(cudaMalloc(&b.data_, static_cast<size_t>(bytes)));
  b.bytes_ = bytes;
  return b;
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) cudaFree(data_);
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

DeviceBuffer::~DeviceBuffer() {
  if (data_ != nullptr) cudaFree(data_);
}

Context::Context(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Context::~Context() {
  for (auto& [key, plan] : impl_->plans) {
    Lt().MatrixLayoutDestroy(plan.a);
    Lt().MatrixLayoutDestroy(plan.b);
    Lt().MatrixLayoutDestroy(plan.c);
    Lt().MatmulDescDestroy(plan.desc);
  }
  if (impl_->lt != nullptr) Lt().Destroy(impl_->lt);
  if (impl_->stream != nullptr) cudaStreamDestroy(impl_->stream);
}

absl::StatusOr<std::unique_ptr<Context>> Context::Create(int device, bool gemm) {
  if (absl::Status s = LoadCublasLt(); !s.ok()) return s;
  auto impl = std::make_unique<Impl>();
  impl->device = device;
  LONGREAD_CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
  LONGREAD_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&impl->stream, cudaStreamNonBlocking));
  std::unique_ptr<Context> ctx(new Context(std::move(impl)));
  if (!gemm) return ctx;
  LONGREAD_CUBLAS_RETURN_IF_ERROR(Lt().Create(&ctx->impl_->lt));
  auto ws = DeviceBuffer::Allocate(kWorkspaceBytes);
  if (!ws.ok()) return ws.status();
  ctx->impl_->workspace = std::move(*ws);
  return ctx;
}

absl::Status Context::Synchronize() {
  LONGREAD_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(impl_->stream));
  return absl::OkStatus();
}

void* Context::stream() const { return impl_->stream; }

absl::Status Upload(Context& ctx, const void* host, int64_t bytes, void* device) {
  if (bytes <= 0) return absl::OkStatus();
  LONGREAD_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, ctx.impl().stream));
  // Pageable host memory: the copy has been staged before cudaMemcpyAsync returns, so the caller
  // may reuse `host` at once.
  return absl::OkStatus();
}

absl::Status Download(Context& ctx, const void* device, int64_t bytes, void* host) {
  if (bytes <= 0) return absl::OkStatus();
  LONGREAD_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, ctx.impl().stream));
  return ctx.Synchronize();
}

namespace {

// Row-major Y[n][rows] = X[n][cols] W^T is, in cuBLAS's column-major terms,
// Y^T (rows x n) = op(A) B with A = W^T stored as a cols x rows column-major matrix (so op = T)
// and B = X^T stored as cols x n.
absl::StatusOr<const GemmPlan*> Plan(Context& ctx, int64_t rows, int64_t cols, int64_t n,
                                     cudaDataType_t out_type) {
  Context::Impl& impl = ctx.impl();
  const auto key = std::make_tuple(rows, cols, n, static_cast<int>(out_type));
  if (auto it = impl.plans.find(key); it != impl.plans.end()) return &it->second;
  GemmPlan p;
  auto cleanup = [&p] {
    if (p.a != nullptr) Lt().MatrixLayoutDestroy(p.a);
    if (p.b != nullptr) Lt().MatrixLayoutDestroy(p.b);
    if (p.c != nullptr) Lt().MatrixLayoutDestroy(p.c);
    if (p.desc != nullptr) Lt().MatmulDescDestroy(p.desc);
  };
  auto build = [&]() -> absl::Status {
    LONGREAD_CUBLAS_RETURN_IF_ERROR(Lt().MatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t trans_a = CUBLAS_OP_T;
    LONGREAD_CUBLAS_RETURN_IF_ERROR(Lt().MatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA,
                                                                &trans_a, sizeof(trans_a)));
    LONGREAD_CUBLAS_RETURN_IF_ERROR(Lt().MatrixLayoutCreate(&p.a, CUDA_R_16BF, cols, rows, cols));
    LONGREAD_CUBLAS_RETURN_IF_ERROR(Lt().MatrixLayoutCreate(&p.b, CUDA_R_16BF, cols, n, cols));
    LONGREAD_CUBLAS_RETURN_IF_ERROR(Lt().MatrixLayoutCreate(&p.c, out_type, rows, n, rows));
    cublasLtMatmulPreference_t pref = nullptr;
    LONGREAD_CUBLAS_RETURN_IF_ERROR(Lt().MatmulPreferenceCreate(&pref));
    const uint64_t ws = static_cast<uint64_t>(impl.workspace.bytes());
    cublasStatus_t s = Lt().MatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    if (s == CUBLAS_STATUS_SUCCESS) {
      s = Lt().MatmulAlgoGetHeuristic(impl.lt, p.desc, p.a, p.b, p.c, p.c, pref, 1, &result,
                                      &found);
    }
    Lt().MatmulPreferenceDestroy(pref);
    LONGREAD_CUBLAS_RETURN_IF_ERROR(s);
    if (found == 0) {
      return absl::UnimplementedError(
          absl::StrCat("cuBLASLt has no algorithm for ", rows, "x", cols, " x ", n, " tokens"));
    }
    p.algo = result.algo;
    return absl::OkStatus();
  };
  if (absl::Status s = build(); !s.ok()) {
    cleanup();
    return s;
  }
  return &impl.plans.emplace(key, p).first->second;
}

absl::Status RunGemm(Context& ctx, const DeviceMatrix& w, const Bf16* x, int64_t n, void* y,
                     cudaDataType_t out_type) {
  if (n <= 0 || w.rows <= 0) return absl::OkStatus();
  if (ctx.impl().lt == nullptr) {
    return absl::FailedPreconditionError("cuda: MatMul on a context made without GEMM support");
  }
  auto plan = Plan(ctx, w.rows, w.cols, n, out_type);
  if (!plan.ok()) return plan.status();
  const float alpha = 1.0f, beta = 0.0f;
  Context::Impl& impl = ctx.impl();
  LONGREAD_CUBLAS_RETURN_IF_ERROR(Lt().Matmul(
      impl.lt, (*plan)->desc, &alpha, w.bf16(), (*plan)->a, x, (*plan)->b, &beta, y, (*plan)->c, y,
      (*plan)->c, &(*plan)->algo, impl.workspace.as<void>(), impl.workspace.bytes(), impl.stream));
  return absl::OkStatus();
}

}  // namespace

absl::Status MatMul(Context& ctx, const DeviceMatrix& w, const Bf16* x, int64_t n_tokens, Bf16* y) {
  return RunGemm(ctx, w, x, n_tokens, y, CUDA_R_16BF);
}

absl::Status MatMul(Context& ctx, const DeviceMatrix& w, const Bf16* x, int64_t n_tokens,
                    float* y) {
  return RunGemm(ctx, w, x, n_tokens, y, CUDA_R_32F);
}

}  // namespace longread::kernels::cuda
