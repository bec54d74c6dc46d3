#pragma once
// Dense GEMMs through cuBLASLt: out = x @ weight^T (+ bias). One Gemm per backend (per device):
// it owns the cuBLASLt handle and a workspace allocated once, and caches the algorithm chosen
// for each shape and dtype combination, so a call allocates nothing.

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <map>
#include <memory>
#include <tuple>

#include "backend/tensor.h"

namespace engine::cuda {

class Gemm {
 public:
  Gemm();
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // x and weight share a dtype (bf16 or f16); out is that dtype or f32 (the logits); fp32
  // accumulation. bias, when given, is f32 and added in fp32 before rounding to out's dtype.
  void linear(Tensor out,          // [T, N]
              Tensor x,            // [T, K]
              Tensor weight,       // [N, K]
              const Tensor* bias,  // [N] f32 or null
              cudaStream_t stream);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace engine::cuda
