#pragma once
// RMSNorm kernels: one block per row; each thread owns packs of kVec consecutive elements
// (kVec = 8 for 16-byte accesses, 1 for rows that are not 16-byte aligned). The row is read
// twice, once for the sum of squares and once to scale it: the second read hits L1/L2, and a
// row does not have to fit in registers or shared memory whatever its size.

#include <cstdint>

#include "common/pack.cuh"

namespace engine::cuda {

// The sum of v over the block, returned to every thread. blockDim.x must be a multiple of 32.
// Uses `scratch` once: a second call in the same kernel would need a __syncthreads() first.
__device__ __forceinline__ float block_sum(float v, float* scratch /*[32]*/) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < blockDim.x / 32 ? scratch[lane] : 0.0f;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Writes row * inv_rms * weight, reading the row again (each thread reads back exactly the
// packs it touched in the first pass, so an in-place write needs no extra barrier).
template <typename T, int kVec>
__device__ __forceinline__ void scale_row(T* out /*[D]*/, const T* row /*[D]*/,
                                          const float* __restrict__ weight /*[D]*/, int dim,
                                          float inv_rms) {
  for (int p = threadIdx.x; p < dim / kVec; p += blockDim.x) {
    const Pack<T, kVec> x = load_pack<T, kVec>(row + p * kVec);
    float w[kVec];
    load_as_float<float, kVec>(weight + p * kVec, w);
    Pack<T, kVec> y;
#pragma unroll
    for (int j = 0; j < kVec; ++j) y.v[j] = from_float<T>(to_float(x.v[j]) * inv_rms * w[j]);
    store_pack<T, kVec>(out + p * kVec, y);
  }
}

// out may alias x, so neither is __restrict__.
template <typename T, int kVec>
__global__ void rms_norm_kernel(T* out /*[R, D]*/, const T* x /*[R, D]*/,
                                const float* __restrict__ weight /*[D]*/, int dim, float eps) {
  __shared__ float scratch[32];
  const int64_t offset = int64_t(blockIdx.x) * dim;
  float sum_squares = 0.0f;
  for (int p = threadIdx.x; p < dim / kVec; p += blockDim.x) {
    const Pack<T, kVec> v = load_pack<T, kVec>(x + offset + p * kVec);
#pragma unroll
    for (int j = 0; j < kVec; ++j) sum_squares += to_float(v.v[j]) * to_float(v.v[j]);
  }
  const float inv_rms = rsqrtf(block_sum(sum_squares, scratch) / float(dim) + eps);
  scale_row<T, kVec>(out + offset, x + offset, weight, dim, inv_rms);
}

// residual += x, rounded to T (what the engine keeps between layers, as vLLM does), then
// x = rms_norm(residual) * weight computed from that rounded sum.
template <typename T, int kVec>
__global__ void add_rms_norm_kernel(T* __restrict__ x /*[R, D]*/,
                                    T* __restrict__ residual /*[R, D]*/,
                                    const float* __restrict__ weight /*[D]*/, int dim, float eps) {
  __shared__ float scratch[32];
  const int64_t offset = int64_t(blockIdx.x) * dim;
  float sum_squares = 0.0f;
  for (int p = threadIdx.x; p < dim / kVec; p += blockDim.x) {
    const Pack<T, kVec> a = load_pack<T, kVec>(x + offset + p * kVec);
    Pack<T, kVec> r = load_pack<T, kVec>(residual + offset + p * kVec);
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      r.v[j] = from_float<T>(to_float(r.v[j]) + to_float(a.v[j]));
      sum_squares += to_float(r.v[j]) * to_float(r.v[j]);
    }
    store_pack<T, kVec>(residual + offset + p * kVec, r);
  }
  const float inv_rms = rsqrtf(block_sum(sum_squares, scratch) / float(dim) + eps);
  scale_row<T, kVec>(x + offset, residual + offset, weight, dim, inv_rms);
}

}  // namespace engine::cuda
