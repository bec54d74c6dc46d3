#pragma once

#include "backend/tensor.h"

namespace engine::cpu {

// out[t, :] = table[ids[t], :], widened to fp32 (table may be fp32, bf16 or fp16).
// Throws std::out_of_range for an id outside [0, V).
void embedding(Tensor out /*[T, H] f32*/, Tensor table /*[V, H]*/, Tensor ids /*[T] i32*/);

// out[i, :] = x[indices[i], :] (any dtype, same for out and x). Throws std::out_of_range for an
// index outside [0, T).
void gather_rows(Tensor out /*[S, H]*/, Tensor x /*[T, H]*/, Tensor indices /*[S] i32*/);

}  // namespace engine::cpu
