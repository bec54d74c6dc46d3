#pragma once
// Paged attention for mixed batches (kernels in paged_attention.cuh): each sequence's new
// tokens (a prefill chunk or one decode token) attend causally to its cached context, itself
// included, read through its block table. Asynchronous on `stream`.

#include <cuda_runtime.h>

#include <optional>

#include "backend/backend.h"

namespace engine::cuda {

// GQA by index: q head h reads kv head h / (Hq / Hk), no K/V copies. Token i of sequence s sits
// at position seq_lens[s] - query_len(s) + i and sees keys at positions <= its own (and
// > position - sliding_window when given). Softmax in fp32. meta's host fields (num_seqs,
// max_query_len, max_seq_len, max_blocks_per_seq) size the launch; its tensors are on the
// device.
void paged_attention(Tensor out,      // [T, Hq, D] compute dtype
                     Tensor q,        // [T, Hq, D] compute dtype
                     Tensor k_cache,  // [num_blocks, block_size, Hk, D] compute dtype
                     Tensor v_cache,  // [num_blocks, block_size, Hk, D] compute dtype
                     const AttentionMetadata& meta, float scale,
                     std::optional<int> sliding_window, cudaStream_t stream);

}  // namespace engine::cuda
