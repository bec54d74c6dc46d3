#pragma once
// SwiGLU's activation: out = silu(gate) * up, with gate and up the two halves of each row of the
// fused gate_up projection. Grid: x = token, y = chunks of the row; each thread handles packs
// of kVec elements (8 for 16-byte accesses, 1 for rows that are not 16-byte aligned).

#include <cstdint>

#include "common/pack.cuh"

namespace engine::cuda {

template <typename T, int kVec>
__global__ void silu_and_mul_kernel(T* __restrict__ out /*[T, I]*/,
                                    const T* __restrict__ x /*[T, 2I]: gate then up*/,
                                    int64_t inter) {
  const int64_t token = blockIdx.x;
  const T* gate = x + token * 2 * inter;
  const T* up = gate + inter;
  T* row = out + token * inter;
  const int64_t stride = int64_t(gridDim.y) * blockDim.x;
  for (int64_t p = int64_t(blockIdx.y) * blockDim.x + threadIdx.x; p < inter / kVec; p += stride) {
    const Pack<T, kVec> g = load_pack<T, kVec>(gate + p * kVec);
    const Pack<T, kVec> u = load_pack<T, kVec>(up + p * kVec);
    Pack<T, kVec> y;
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const float gf = to_float(g.v[j]);
      // expf, not __expf: the fast one loses accuracy for large |g|, and this kernel is bound
      // by memory, not by the exponential.
      y.v[j] = from_float<T>(gf / (1.0f + expf(-gf)) * to_float(u.v[j]));
    }
    store_pack<T, kVec>(row + p * kVec, y);
  }
}

}  // namespace engine::cuda
