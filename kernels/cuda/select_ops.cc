// The checked API of the device block selection (select.cu) and of the pinned buffers, side
// stream and events that take the archive's copies off the critical path.
#include <utility>

#include "kernels/cuda/check.h"
#include "kernels/cuda/context_impl.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/launch.h"

namespace longread::kernels::cuda {

absl::StatusOr<PinnedBuffer> PinnedBuffer::Allocate(int64_t bytes) {
  PinnedBuffer b;
  if (bytes <= 0) return b;
  LONGREAD_CUDA_RETURN_IF_ERROR(
      cudaHostAlloc(&b.data_, static_cast<size_t>(bytes), cudaHostAllocMapped));
  b.bytes_ = bytes;
  return b;
}

PinnedBuffer::PinnedBuffer(PinnedBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

PinnedBuffer& PinnedBuffer::operator=(PinnedBuffer&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) cudaFreeHost(data_);
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

PinnedBuffer::~PinnedBuffer() {
  if (data_ != nullptr) cudaFreeHost(data_);
}

absl::StatusOr<SideStream> SideStream::Create() {
  SideStream s;
  cudaStream_t stream = nullptr;
  LONGREAD_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  s.stream_ = stream;
  return s;
}

SideStream::SideStream(SideStream&& other) noexcept
    : stream_(std::exchange(other.stream_, nullptr)) {}

SideStream& SideStream::operator=(SideStream&& other) noexcept {
  if (this != &other) {
    if (stream_ != nullptr) cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
    stream_ = std::exchange(other.stream_, nullptr);
  }
  return *this;
}

SideStream::~SideStream() {
  if (stream_ != nullptr) cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
}

absl::Status SideStream::Synchronize() const {
  if (stream_ == nullptr) return absl::OkStatus();
  LONGREAD_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(static_cast<cudaStream_t>(stream_)));
  return absl::OkStatus();
}

absl::StatusOr<Event> Event::Create() {
  Event e;
  cudaEvent_t event = nullptr;
  LONGREAD_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  e.event_ = event;
  return e;
}

Event::Event(Event&& other) noexcept : event_(std::exchange(other.event_, nullptr)) {}

Event& Event::operator=(Event&& other) noexcept {
  if (this != &other) {
    if (event_ != nullptr) cudaEventDestroy(static_cast<cudaEvent_t>(event_));
    event_ = std::exchange(other.event_, nullptr);
  }
  return *this;
}

Event::~Event() {
  if (event_ != nullptr) cudaEventDestroy(static_cast<cudaEvent_t>(event_));
}

absl::Status Event::Record(void* stream) {
  LONGREAD_CUDA_RETURN_IF_ERROR(
      cudaEventRecord(static_cast<cudaEvent_t>(event_), static_cast<cudaStream_t>(stream)));
  return absl::OkStatus();
}

absl::Status Event::MakeWait(void* stream) const {
  LONGREAD_CUDA_RETURN_IF_ERROR(
      cudaStreamWaitEvent(static_cast<cudaStream_t>(stream), static_cast<cudaEvent_t>(event_), 0));
  return absl::OkStatus();
}

absl::Status Event::Synchronize() const {
  LONGREAD_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(static_cast<cudaEvent_t>(event_)));
  return absl::OkStatus();
}

absl::Status DownloadAsync(Context& ctx, const void* device, int64_t bytes, void* pinned_host) {
  if (bytes <= 0) return absl::OkStatus();
  LONGREAD_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(pinned_host, device, bytes, cudaMemcpyDeviceToHost, ctx.impl().stream));
  return absl::OkStatus();
}

absl::Status SelectSegmentKeys(Context& ctx, const SelectArgs& a) {
  if (a.n <= 0 || a.n_kv_heads <= 0 || a.block_tokens <= 0 || a.window <= 0 || a.k_blocks < 0 ||
      a.n_keys < a.n || a.capacity < a.n_keys) {
    return absl::InvalidArgumentError(absl::StrCat("cuda::SelectSegmentKeys: bad shape n ", a.n,
                                                   " n_keys ", a.n_keys, " capacity ", a.capacity));
  }
  LONGREAD_CUDA_RETURN_IF_ERROR(launch::SelectSegment(a, ctx.impl().stream));
  return absl::OkStatus();
}

absl::Status MoveKeptAndEvicted(Context& ctx, const MoveRowsArgs& a) {
  if (a.row_elems % 8 != 0) {
    return absl::InvalidArgumentError("cuda::MoveKeptAndEvicted: rows must be 16-byte multiples");
  }
  LONGREAD_CUDA_RETURN_IF_ERROR(launch::MoveKeptAndEvicted(a, ctx.impl().stream));
  return absl::OkStatus();
}

absl::Status AppendSegment(Context& ctx, const Bf16* k, const Bf16* v, const int32_t* counts,
                           int64_t n, int64_t n_kv_heads, int64_t head_dim, int64_t capacity,
                           Bf16* keys, Bf16* values) {
  if (head_dim % 8 != 0) {
    return absl::InvalidArgumentError("cuda::AppendSegment: head_dim must be a multiple of 8");
  }
  LONGREAD_CUDA_RETURN_IF_ERROR(launch::AppendSegment(k, v, counts, n, n_kv_heads, head_dim,
                                                      capacity, keys, values, ctx.impl().stream));
  return absl::OkStatus();
}

absl::Status CopyEvicted(const EvictedCopyArgs& a, void* stream) {
  if (a.row_elems % 8 != 0) {
    return absl::InvalidArgumentError("cuda::CopyEvicted: rows must be 16-byte multiples");
  }
  LONGREAD_CUDA_RETURN_IF_ERROR(launch::CopyEvicted(a, static_cast<cudaStream_t>(stream)));
  return absl::OkStatus();
}

}  // namespace longread::kernels::cuda
