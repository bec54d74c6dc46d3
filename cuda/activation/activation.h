#pragma once
// SwiGLU's activation (kernel in activation.cuh). Asynchronous on `stream`.

#include <cuda_runtime.h>

#include "backend/tensor.h"

namespace engine::cuda {

// out[t, i] = silu(x[t, i]) * x[t, I + i], computed in fp32.
void silu_and_mul(Tensor out,  // [T, I] compute dtype
                  Tensor x,    // [T, 2I] compute dtype
                  cudaStream_t stream);

}  // namespace engine::cuda
