#pragma once

#include "backend/tensor.h"

namespace engine::cpu {

// out = silu(x[:, :I]) * x[:, I:], silu(g) = g / (1 + exp(-g)). x holds gate then up, as the
// fused gate_up projection writes them.
void silu_and_mul(Tensor out /*[T, I] f32*/, Tensor x /*[T, 2I] f32*/);

}  // namespace engine::cpu
