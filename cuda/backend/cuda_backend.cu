#include "backend/cuda_backend.h"

#include <chrono>
#include <deque>
#include <stdexcept>

#include "activation/activation.h"
#include "attention/paged_attention.h"
#include "common/cuda_check.h"
#include "embedding/embedding.h"
#include "norm/norm.h"
#include "rope/rope_cache.h"
#include "runtime/logits_sampler.h"
#include "sampling/sampler.h"

namespace engine {
namespace cuda {

CudaBackend::CudaBackend(int device, DType compute_dtype)
    : device_(device), compute_dtype_(compute_dtype), name_("cuda:" + std::to_string(device)) {
  if (compute_dtype != DType::kBF16 && compute_dtype != DType::kF16) {
    throw std::invalid_argument(
        std::string("the CUDA backend computes in bfloat16 or float16, not ") +
        dtype_name(compute_dtype));
  }
  use_device();
  EMBER_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  for (cudaEvent_t& event : fence_events_) {
    EMBER_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  }
  gemm_ = std::make_unique<Gemm>();
}

CudaBackend::~CudaBackend() {
  gemm_.reset();
  if (stream_ != nullptr) {
    cudaStreamSynchronize(stream_);
    cudaStreamDestroy(stream_);
  }
  for (cudaEvent_t event : fence_events_) {
    if (event != nullptr) cudaEventDestroy(event);
  }
}

void CudaBackend::use_device() const { EMBER_CUDA_CHECK(cudaSetDevice(device_)); }

std::optional<DeviceMemory> CudaBackend::memory_info() const {
  use_device();
  DeviceMemory memory;
  EMBER_CUDA_CHECK(cudaMemGetInfo(&memory.free_bytes, &memory.total_bytes));
  return memory;
}

Buffer CudaBackend::allocate(size_t nbytes) {
  use_device();
  void* data = nullptr;
  if (nbytes > 0) {
    const cudaError_t status = cudaMalloc(&data, nbytes);
    if (status != cudaSuccess) {
      cudaGetLastError();
      throw std::runtime_error("out of GPU memory on " + name_ + " allocating " +
                               std::to_string(nbytes) +
                               " bytes; lower max_model_len, max_num_seqs, "
                               "max_num_batched_tokens or the KV-cache size");
    }
  }
  const int device = device_;
  return Buffer(data, nbytes, [device](void* p) {
    cudaSetDevice(device);
    cudaFree(p);
  });
}

Buffer CudaBackend::allocate_host(size_t nbytes) {
  use_device();
  void* data = nullptr;
  if (nbytes > 0) EMBER_CUDA_CHECK(cudaMallocHost(&data, nbytes));
  return Buffer(data, nbytes, [](void* p) { cudaFreeHost(p); });
}

void CudaBackend::copy_from_host_async(Tensor dst, const void* src) {
  use_device();
  EMBER_CUDA_CHECK(cudaMemcpyAsync(dst.data, src, dst.nbytes(), cudaMemcpyHostToDevice, stream_));
}

void CudaBackend::copy_from_host(Tensor dst, const void* src) {
  use_device();
  // Pageable sources are staged before this returns, so the caller may reuse them at once.
  EMBER_CUDA_CHECK(cudaMemcpyAsync(dst.data, src, dst.nbytes(), cudaMemcpyHostToDevice, stream_));
}

void CudaBackend::copy_to_host(void* dst, Tensor src) {
  use_device();
  EMBER_CUDA_CHECK(cudaMemcpyAsync(dst, src.data, src.nbytes(), cudaMemcpyDeviceToHost, stream_));
  synchronize();
}

void CudaBackend::synchronize() {
  use_device();
  const auto start = std::chrono::steady_clock::now();
  EMBER_CUDA_CHECK(cudaStreamSynchronize(stream_));
  device_wait_seconds_ +=
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

uint64_t CudaBackend::record_fence() {
  use_device();
  const uint64_t fence = ++num_fences_;
  EMBER_CUDA_CHECK(cudaEventRecord(fence_events_[fence % kNumFenceEvents], stream_));
  return fence;
}

void CudaBackend::wait_for_fence(uint64_t fence) {
  if (fence == 0 || fence > num_fences_) {
    throw std::logic_error("wait_for_fence: fence " + std::to_string(fence) +
                           " was never recorded (" + std::to_string(num_fences_) + " so far)");
  }
  use_device();
  const auto start = std::chrono::steady_clock::now();
  // NOTE: an event re-recorded since marks later work on the same stream, so waiting for it
  // also covers the older fence (it only waits longer).
  EMBER_CUDA_CHECK(cudaEventSynchronize(fence_events_[fence % kNumFenceEvents]));
  device_wait_seconds_ +=
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

namespace {

class CudaGraph final : public CapturedGraph {
 public:
  CudaGraph(cudaGraphExec_t exec, cudaStream_t stream) : exec_(exec), stream_(stream) {}
  ~CudaGraph() override { cudaGraphExecDestroy(exec_); }
  void replay() override { EMBER_CUDA_CHECK(cudaGraphLaunch(exec_, stream_)); }

 private:
  cudaGraphExec_t exec_;
  cudaStream_t stream_;
};

}  // namespace

std::unique_ptr<CapturedGraph> CudaBackend::capture(const std::function<void()>& enqueue) {
  use_device();
  // NOTE: thread-local mode, so another thread's unrelated CUDA calls do not break the capture;
  // enqueue itself must not allocate, synchronize or copy from pageable memory.
  EMBER_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  cudaGraph_t graph = nullptr;
  try {
    enqueue();
  } catch (...) {
    cudaStreamEndCapture(stream_, &graph);
    if (graph != nullptr) cudaGraphDestroy(graph);
    cudaGetLastError();
    throw;
  }
  EMBER_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
  cudaGraphExec_t exec = nullptr;
  const cudaError_t status = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  EMBER_CUDA_CHECK(status);
  return std::make_unique<CudaGraph>(exec, stream_);
}

void CudaBackend::embedding(Tensor out, Tensor table, Tensor ids) {
  use_device();
  cuda::embedding(out, table, ids, stream_);
}

void CudaBackend::rms_norm(Tensor out, Tensor x, Tensor weight, float eps) {
  use_device();
  cuda::rms_norm(out, x, weight, eps, stream_);
}

void CudaBackend::add_rms_norm(Tensor x, Tensor residual, Tensor weight, float eps) {
  use_device();
  cuda::add_rms_norm(x, residual, weight, eps, stream_);
}

void CudaBackend::linear(Tensor out, Tensor x, Tensor weight, const Tensor* bias) {
  use_device();
  gemm_->linear(out, x, weight, bias, stream_);
}

void CudaBackend::rope_and_cache(Tensor q_out, Tensor qkv, const QKNorm* qk_norm, Tensor cos_sin,
                                 const AttentionMetadata& meta, KVCacheLayer cache) {
  use_device();
  cuda::rope_and_cache(q_out, qkv, qk_norm, cos_sin, meta.positions, meta.slot_mapping, cache.k,
                       cache.v, stream_, cache.scales);
}

void CudaBackend::attention(Tensor out, Tensor q, KVCacheLayer cache, const AttentionMetadata& meta,
                            float scale, std::optional<int> sliding_window) {
  use_device();
  cuda::paged_attention(out, q, cache.k, cache.v, meta, scale, sliding_window, stream_,
                        cuda::PrefillKernel::kAuto, cache.scales);
}

void CudaBackend::silu_and_mul(Tensor out, Tensor x) {
  use_device();
  cuda::silu_and_mul(out, x, stream_);
}

void CudaBackend::gather_rows(Tensor out, Tensor x, Tensor indices) {
  use_device();
  cuda::gather_rows(out, x, indices, stream_);
}

namespace {

// Samples on the device, on the backend's stream: only ids and logprobs reach the host.
class CudaLogitsSampler final : public LogitsSampler {
 public:
  CudaLogitsSampler(CudaBackend& backend, int max_rows, int max_score_rows, int vocab_size)
      : backend_(backend), sampler_(max_rows, vocab_size, max_score_rows) {}

  void launch(const Tensor& logits, const std::vector<SamplingRow>& rows) override {
    sampler_.launch(logits, rows, backend_.stream());
    fences_.push_back(backend_.record_fence());
  }

  // Waits for the oldest launch only: a step enqueued after it keeps the device busy meanwhile.
  std::vector<SampleResult> collect() override {
    if (fences_.empty()) throw std::logic_error("CudaLogitsSampler::collect: nothing launched");
    backend_.wait_for_fence(fences_.front());  // counted as device wait
    fences_.pop_front();
    return sampler_.collect();
  }

  void write_sampled_ids(const Tensor& input_ids, const Tensor& pending) override {
    sampler_.write_sampled_ids(input_ids, pending, backend_.stream());
  }

  void launch_scores(const Tensor& logits, std::span<const int> token_ids,
                     std::span<const int> num_top) override {
    sampler_.launch_scores(logits, token_ids, num_top, backend_.stream());
    score_fences_.push_back(backend_.record_fence());
  }

  std::vector<TokenLogprobs> collect_scores() override {
    if (score_fences_.empty()) {
      throw std::logic_error("CudaLogitsSampler::collect_scores: nothing launched");
    }
    backend_.wait_for_fence(score_fences_.front());
    score_fences_.pop_front();
    return sampler_.collect_scores();
  }

 private:
  CudaBackend& backend_;
  GpuSampler sampler_;
  std::deque<uint64_t> fences_;        // one per launch not yet collected
  std::deque<uint64_t> score_fences_;  // one per launch_scores not yet collected
};

}  // namespace
}  // namespace cuda

std::unique_ptr<LogitsSampler> make_cuda_logits_sampler(Backend& backend, int max_rows,
                                                        int max_score_rows, int vocab_size) {
  auto* cuda_backend = dynamic_cast<cuda::CudaBackend*>(&backend);
  if (cuda_backend == nullptr) {
    throw std::logic_error(std::string("the CUDA sampler needs the CUDA backend, got ") +
                           backend.name());
  }
  return std::make_unique<cuda::CudaLogitsSampler>(*cuda_backend, max_rows, max_score_rows,
                                                   vocab_size);
}

std::unique_ptr<Backend> make_cuda_backend(int device, DType compute_dtype) {
  return std::make_unique<cuda::CudaBackend>(device, compute_dtype);
}

}  // namespace engine
