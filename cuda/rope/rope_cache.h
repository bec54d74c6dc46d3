#pragma once
// RoPE fused with the paged KV-cache write (kernel in rope_cache.cuh). Asynchronous on `stream`.

#include <cuda_runtime.h>

#include "backend/tensor.h"

namespace engine::cuda {

// Rotates q and k in place, neox style (pairs i and i + D/2, angle from cos_sin[pos]), then
// writes k and v of token t into cache slot slot_mapping[t] (block = slot / block_size,
// offset = slot % block_size); a negative slot means "do not cache" (padding). T = q.size(0).
void rope_and_cache(Tensor q,             // [T, Hq, D] compute dtype, in/out
                    Tensor k,             // [T, Hk, D] compute dtype, in/out
                    Tensor v,             // [T, Hk, D] compute dtype
                    Tensor cos_sin,       // [max_pos, D] f32: cos in [:, :D/2], sin in [:, D/2:]
                    Tensor positions,     // [>= T] i32
                    Tensor slot_mapping,  // [>= T] i32
                    Tensor k_cache,       // [num_blocks, block_size, Hk, D] compute dtype
                    Tensor v_cache,       // [num_blocks, block_size, Hk, D] compute dtype
                    cudaStream_t stream);

}  // namespace engine::cuda
