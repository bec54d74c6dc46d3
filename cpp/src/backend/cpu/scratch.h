#pragma once
// Per-thread scratch memory for kernels (packed weight panels, attention row state). OpenMP
// keeps its worker threads alive, so each grows once to the largest size asked and is reused:
// no allocation, page faults or frees inside the hot loops.

#include <cstddef>

namespace engine::cpu {

// At least num_floats floats, 64-byte aligned, owned by the calling thread. A later call from
// the same thread may return the same memory, so callers must not hold two at once.
float* thread_scratch(size_t num_floats);

// Allocates nbytes (rounded up to 64) aligned to 64 bytes; free with std::free.
void* aligned_allocate(size_t nbytes);

}  // namespace engine::cpu
