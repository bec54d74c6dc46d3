#pragma once
// Adds an fp32 bias to every row of a matrix in place. Used after a cuBLASLt matmul whose
// output dtype differs from the bias's (the BIAS epilogue reads the bias in D's dtype, so an
// fp32 bias would have to be rounded first), or when no fused algorithm exists. The sum is
// formed in fp32 and rounded once more: for a bf16/fp16 output at most one extra rounding
// (half an ulp) compared with a fused add; for fp32 the same result.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "common/pack.cuh"

namespace engine::cuda {

// Grid-stride over all num_rows * num_cols elements; consecutive threads take consecutive
// columns, so both the output and the (L1/L2-resident) bias are read coalesced.
template <typename T>
__global__ void bias_add_rows_kernel(T* __restrict__ out,             // [num_rows, num_cols]
                                     const float* __restrict__ bias,  // [num_cols]
                                     int64_t num_rows, int64_t num_cols) {
  const int64_t num_elements = num_rows * num_cols;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < num_elements; i += stride) {
    out[i] = from_float<T>(to_float(out[i]) + bias[i % num_cols]);
  }
}

}  // namespace engine::cuda
