#pragma once
// Element-wise dtype conversion kernels. Header-only templates so other kernels' launchers
// can reuse them; the host launchers are in convert.h.

#include <cuda_bf16.h>

#include <cstdint>

namespace engine::cuda {

// Grid-stride loop: any grid size covers any num_elements, so the launcher can cap the grid.
template <typename Src, typename Dst, typename Op>
__global__ void convert_kernel(const Src* __restrict__ src,  // [num_elements]
                               Dst* __restrict__ dst,        // [num_elements]
                               int64_t num_elements, Op op) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < num_elements; i += stride) {
    dst[i] = op(src[i]);
  }
}

// Round-to-nearest-even, as torch's .to(torch.bfloat16), so CUDA and CPU weights agree.
struct ToBf16 {
  __device__ __forceinline__ __nv_bfloat16 operator()(float x) const {
    return __float2bfloat16_rn(x);
  }
};

struct FromBf16 {
  __device__ __forceinline__ float operator()(__nv_bfloat16 x) const { return __bfloat162float(x); }
};

}  // namespace engine::cuda
