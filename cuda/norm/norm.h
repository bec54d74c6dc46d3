#pragma once
// RMSNorm launchers (kernels in norm.cuh). Activations are bf16 or fp16 (the backend's compute
// dtype), weights fp32, accumulation fp32. Asynchronous on `stream`.

#include <cuda_runtime.h>

#include "backend/tensor.h"

namespace engine::cuda {

// out[r, :] = x[r, :] / rms(x[r, :]) * weight; out may alias x.
void rms_norm(Tensor out,     // [R, D] compute dtype
              Tensor x,       // [R, D] compute dtype
              Tensor weight,  // [D] f32
              float eps, cudaStream_t stream);

// residual += x; x = rms_norm(residual) * weight. The sum is rounded to the compute dtype before
// it is normalised, as the separate operations would.
void add_rms_norm(Tensor x,         // [R, D] compute dtype, in/out
                  Tensor residual,  // [R, D] compute dtype, in/out
                  Tensor weight,    // [D] f32
                  float eps, cudaStream_t stream);

}  // namespace engine::cuda
