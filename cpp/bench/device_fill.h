#pragma once
// Device-side helpers of engine_bench: random fills (so that no kernel is timed on zeros, which
// can run faster than real data) and an L2 flush that only reads (so that no dirty lines are
// left for the timed kernel to write back).

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "backend/tensor.h"

namespace engine::bench {

// Fills a bf16, f16 or f32 tensor with values uniform in [lo, hi) from a counter-based hash of
// (seed, element index): the same values on every run.
void fill_uniform(Tensor t, uint64_t seed, float lo, float hi, cudaStream_t stream);

// Reads every 16 bytes of data[0, nbytes): with nbytes at least twice the L2 size, the timed
// kernel that follows finds none of its inputs in L2.
void read_through(const void* data, size_t nbytes, cudaStream_t stream);

}  // namespace engine::bench
