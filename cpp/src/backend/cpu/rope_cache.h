#pragma once

#include "backend/tensor.h"

namespace engine::cpu {

// Rotates q and k in place, neox style: for i < D/2 the pair (x[i], x[i + D/2]) turns by the
// angle whose cosine is cos_sin[pos, i] and sine cos_sin[pos, D/2 + i], pos = positions[t].
// Then writes k[t] and v[t] into the paged cache at slot s = slot_mapping[t]:
// block s / block_size, offset s % block_size. A negative slot means "padding token, do not
// cache" (CUDA graphs pad steps to fixed sizes). Throws std::out_of_range for a position past
// cos_sin or a slot past the cache.
void rope_and_cache(Tensor q /*[T, Hq, D] f32*/, Tensor k /*[T, Hk, D] f32*/,
                    Tensor v /*[T, Hk, D] f32*/, Tensor cos_sin /*[max_pos, D] f32*/,
                    Tensor positions /*[T] i32*/, Tensor slot_mapping /*[T] i32*/,
                    Tensor k_cache /*[num_blocks, block_size, Hk, D] f32*/,
                    Tensor v_cache /*[num_blocks, block_size, Hk, D] f32*/);

}  // namespace engine::cpu
