#pragma once

#include "backend/tensor.h"

namespace engine::cpu {

// out = x @ weight^T (+ bias). weight may be fp32, bf16 or fp16 (widened to fp32 as it is
// read); x, out and bias are fp32. Few rows (decode) stream each weight element from memory
// once per call; many rows (prefill) are blocked so weight chunks are reused from L2.
void linear(Tensor out /*[T, N] f32*/, Tensor x /*[T, K] f32*/, Tensor weight /*[N, K]*/,
            const Tensor* bias /*[N] f32 or null*/);

}  // namespace engine::cpu
