#pragma once
// CudaBackend: the Backend interface on one GPU. Activations, the KV cache and weights are in
// the compute dtype (bf16 by default, fp16 selectable); norms, rope tables and biases in fp32;
// logits in fp32. Every kernel is enqueued on the backend's one stream; only copy_to_host and
// synchronize wait for it.

#include <cuda_runtime.h>

#include <memory>
#include <string>

#include "backend/backend.h"
#include "gemm/gemm.h"

namespace engine::cuda {

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device, DType compute_dtype);
  ~CudaBackend() override;

  DeviceType device_type() const override { return DeviceType::kCuda; }
  const char* name() const override { return name_.c_str(); }
  DType compute_dtype() const override { return compute_dtype_; }
  cudaStream_t stream() const { return stream_; }
  std::optional<DeviceMemory> memory_info() const override;

  Buffer allocate(size_t nbytes) override;
  Buffer allocate_host(size_t nbytes) override;  // page-locked
  void copy_from_host(Tensor dst, const void* src) override;
  void copy_from_host_async(Tensor dst, const void* src) override;
  void copy_to_host(void* dst, Tensor src) override;
  void synchronize() override;
  double device_wait_seconds() const override { return device_wait_seconds_; }
  uint64_t record_fence() override;
  void wait_for_fence(uint64_t fence) override;
  bool supports_graphs() const override { return true; }
  std::unique_ptr<CapturedGraph> capture(const std::function<void()>& enqueue) override;

  void embedding(Tensor out, Tensor table, Tensor ids) override;
  void rms_norm(Tensor out, Tensor x, Tensor weight, float eps) override;
  void add_rms_norm(Tensor x, Tensor residual, Tensor weight, float eps) override;
  void linear(Tensor out, Tensor x, Tensor weight, const Tensor* bias) override;
  void rope_and_cache(Tensor q_out, Tensor qkv, const QKNorm* qk_norm, Tensor cos_sin,
                      const AttentionMetadata& meta, KVCacheLayer cache) override;
  void attention(Tensor out, Tensor q, KVCacheLayer cache, const AttentionMetadata& meta,
                 float scale, std::optional<int> sliding_window) override;
  void silu_and_mul(Tensor out, Tensor x) override;
  void gather_rows(Tensor out, Tensor x, Tensor indices) override;

 private:
  // The engine may step from another thread than the one that built it; the current device
  // is per thread, so every entry selects it (a cheap, thread-local call).
  void use_device() const;

  int device_;
  DType compute_dtype_;
  std::string name_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<Gemm> gemm_;
  double device_wait_seconds_ = 0.0;
  // Fence f is recorded in fence_events_[f % kNumFenceEvents]; the engine has at most two
  // steps in flight, of three fences each at most (step, sampling, prompt scores), so a fence
  // is waited for before its event is recorded again.
  static constexpr int kNumFenceEvents = 8;
  cudaEvent_t fence_events_[kNumFenceEvents] = {};
  uint64_t num_fences_ = 0;
};

}  // namespace engine::cuda
