#pragma once
// Row gathers: one block per output row, each thread moving packs along the row.

#include <cstdint>

#include "common/pack.cuh"

namespace engine::cuda {

// out[t, :] = Out(table[ids[t], :]). kVec = 8 moves 16 bytes of out per access (two 16-byte
// loads for an fp32 table); kVec = 1 serves rows that are not 16-byte aligned.
template <typename Out, typename Src, int kVec>
__global__ void embedding_kernel(Out* __restrict__ out /*[T, H]*/,
                                 const Src* __restrict__ table /*[V, H]*/,
                                 const int32_t* __restrict__ ids /*[T]*/, int64_t hidden) {
  const int64_t token = blockIdx.x;
  const Src* src = table + int64_t(ids[token]) * hidden;
  Out* dst = out + token * hidden;
  for (int64_t p = threadIdx.x; p < hidden / kVec; p += blockDim.x) {
    float values[kVec];
    load_as_float<Src, kVec>(src + p * kVec, values);
    Pack<Out, kVec> pack;
#pragma unroll
    for (int j = 0; j < kVec; ++j) pack.v[j] = from_float<Out>(values[j]);
    store_pack<Out, kVec>(dst + p * kVec, pack);
  }
}

// out[i, :] = x[indices[i], :] for rows of any dtype, copied in units of Unit (uint4 = 16
// bytes when rows and pointers allow, down to single bytes).
template <typename Unit>
__global__ void gather_rows_kernel(Unit* __restrict__ out /*[S, row_units]*/,
                                   const Unit* __restrict__ x /*[T, row_units]*/,
                                   const int32_t* __restrict__ indices /*[S]*/, int64_t row_units) {
  const int64_t row = blockIdx.x;
  const Unit* src = x + int64_t(indices[row]) * row_units;
  Unit* dst = out + row * row_units;
  for (int64_t u = threadIdx.x; u < row_units; u += blockDim.x) dst[u] = src[u];
}

}  // namespace engine::cuda
