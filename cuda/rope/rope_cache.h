#pragma once
// RoPE fused with the split of the qkv projection, the optional per-head q/k RMSNorm and the
// paged KV-cache write (kernel in rope_cache.cuh). One launch. Asynchronous on `stream`.

#include <cuda_runtime.h>

#include "backend/backend.h"

namespace engine::cuda {

// Splits each token's qkv row into Hq q heads, Hk k heads and Hk v heads (D elements each, in
// that order); RMS-normalises each q and k head over D by qk_norm when given; rotates q and k
// neox style (pairs i and i + D/2, angle from cos_sin[positions[t]]); writes rotated q into
// q_out, rotated k and raw v into cache slot slot_mapping[t] (block = slot / block_size,
// offset = slot % block_size), times 1 / scales.k and 1 / scales.v; a negative slot means "do not
// cache" (padding), its q is still written. Computes in fp32, rounds each output once (to fp8
// e4m3 in an fp8 cache: nearest even, saturating at +-448). T = q_out.size(0), Hk =
// k_cache.size(2). q_out must not overlap qkv.
void rope_and_cache(Tensor q_out,           // [T, Hq, D] compute dtype, out
                    Tensor qkv,             // [T, (Hq + 2 Hk) * D] compute dtype
                    const QKNorm* qk_norm,  // q_weight, k_weight [D] f32; or null
                    Tensor cos_sin,         // [max_pos, D] f32: cos in [:, :D/2], sin in [:, D/2:]
                    Tensor positions,       // [>= T] i32
                    Tensor slot_mapping,    // [>= T] i32
                    Tensor k_cache,  // [num_blocks, block_size, Hk, D] compute dtype or fp8 e4m3
                    Tensor v_cache,  // [num_blocks, block_size, Hk, D] as k_cache
                    cudaStream_t stream, KVCacheScales scales = {});

}  // namespace engine::cuda
