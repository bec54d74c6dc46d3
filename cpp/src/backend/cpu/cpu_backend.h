#pragma once
// The CPU backend: host memory (64-byte aligned) and the kernels of this folder, fp32 compute.

#include "backend/backend.h"

namespace engine::cpu {

class CpuBackend final : public Backend {
 public:
  // num_threads > 0: kernels run on that many OpenMP threads; otherwise OpenMP's default
  // (OMP_NUM_THREADS or one per core).
  explicit CpuBackend(int num_threads);

  DeviceType device_type() const override { return DeviceType::kCpu; }
  const char* name() const override { return "cpu"; }
  DType compute_dtype() const override { return DType::kF32; }

  Buffer allocate(size_t nbytes) override;
  void copy_from_host(Tensor dst, const void* src) override;
  void copy_to_host(void* dst, Tensor src) override;

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
  // OpenMP's thread count is per calling thread, and the runner may call from a thread other
  // than the one that built the backend: every kernel entry re-applies it (a cheap store).
  void use_threads() const;

  int num_threads_;
};

}  // namespace engine::cpu
