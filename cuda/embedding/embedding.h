#pragma once
// Row gathers (kernels in embedding.cuh). Asynchronous on `stream`; ids are not range-checked
// on the device (the engine validates token ids before they reach a step).

#include <cuda_runtime.h>

#include "backend/tensor.h"

namespace engine::cuda {

// out[t, :] = table[ids[t], :], converted to out's dtype.
void embedding(Tensor out,    // [T, H] compute dtype
               Tensor table,  // [V, H] f32, bf16 or f16
               Tensor ids,    // [T] i32
               cudaStream_t stream);

// out[i, :] = x[indices[i], :]
void gather_rows(Tensor out,      // [S, H]
                 Tensor x,        // [T, H], same dtype as out
                 Tensor indices,  // [S] i32
                 cudaStream_t stream);

}  // namespace engine::cuda
