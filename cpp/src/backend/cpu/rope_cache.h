#pragma once

#include "backend/backend.h"

namespace engine::cpu {

// Splits each token's row of the fused projection qkv into Hq q heads, Hk k heads and Hk v
// heads (in that order, D elements each). RMS-normalises each q and k head by qk_norm when it
// is given, then rotates it neox style: for i < D/2 the pair (x[i], x[i + D/2]) turns by the
// angle whose cosine is cos_sin[pos, i] and sine cos_sin[pos, D/2 + i], pos = positions[t].
// Rotated q goes to q_out[t]; rotated k and raw v go to the paged cache at slot
// s = slot_mapping[t]: block s / block_size, offset s % block_size, divided by scales.k and
// scales.v (an fp8 cache rounds them to nearest even, saturating at +-448). A negative slot means
// "padding token, do not cache" (CUDA graphs pad steps to fixed sizes); its q is still
// written. Hq = q_out.size(1), Hk = k_cache.size(2). Throws std::out_of_range for a position
// past cos_sin or a slot past the cache, std::invalid_argument for shapes that disagree.
void rope_and_cache(Tensor q_out /*[T, Hq, D] f32*/, Tensor qkv /*[T, (Hq + 2 Hk) * D] f32*/,
                    const QKNorm* qk_norm /*weights [D] f32, or null*/,
                    Tensor cos_sin /*[max_pos, D] f32*/, Tensor positions /*[T] i32*/,
                    Tensor slot_mapping /*[T] i32*/,
                    Tensor k_cache /*[num_blocks, block_size, Hk, D] f32 or fp8 e4m3*/,
                    Tensor v_cache /*[num_blocks, block_size, Hk, D] as k_cache*/,
                    KVCacheScales scales = {});

}  // namespace engine::cpu
