#pragma once
// Host launchers for dtype conversion of device buffers (kernels in convert.cuh). Plain C++:
// callable from .cpp files of the CUDA backend. Asynchronous on `stream`; launch errors throw
// std::runtime_error (cuda_check.h).

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace engine::cuda {

// dst[i] = bf16(src[i]), rounded to nearest even. src and dst are device pointers that must
// not overlap.
void convert_f32_to_bf16(const float* src,    // [num_elements]
                         __nv_bfloat16* dst,  // [num_elements]
                         int64_t num_elements, cudaStream_t stream);

// dst[i] = float(src[i]); exact.
void convert_bf16_to_f32(const __nv_bfloat16* src,  // [num_elements]
                         float* dst,                // [num_elements]
                         int64_t num_elements, cudaStream_t stream);

}  // namespace engine::cuda
