#pragma once
// Paged attention for mixed batches: each sequence's new tokens (a prefill chunk or one decode
// token) attend causally to its cached context, itself included, read through its block table.
// Pure decode batches (max_query_len == 1) run paged_decode.cuh; every other batch runs the
// tensor-core kernel of paged_prefill.cuh. Asynchronous on `stream`.

#include <cuda_runtime.h>

#include <optional>

#include "backend/backend.h"

namespace engine::cuda {

// Which kernel runs batches with prefill chunks (max_query_len > 1). kAuto: the wgmma kernel on
// Hopper (sm_90) devices when the build holds sm_90a code, the mma.sync kernel elsewhere. Tests
// and benchmarks pin one to check and compare both; kWgmma where it cannot run is an error.
enum class PrefillKernel { kAuto, kMmaSync, kWgmma };

// GQA by index: q head h reads kv head h / (Hq / Hk), no K/V copies. Token i of sequence s sits
// at position seq_lens[s] - query_len(s) + i and sees keys at positions <= its own (and
// > position - sliding_window when given). Any block_size. Scores and softmax in fp32; with
// max_query_len > 1 the probabilities are rounded to the compute dtype for the P V product (as
// FlashAttention does). `scale` must be positive. meta's host fields (num_seqs, max_query_len,
// max_seq_len, max_blocks_per_seq) size the launch; its tensors are on the device. The cache is
// in the compute dtype or fp8 e4m3 (widened exactly on chip; the wgmma kernel reads the compute
// dtype only, so kAuto runs mma.sync for prefill on an fp8 cache); cached values count as stored
// value * scales.
void paged_attention(Tensor out,      // [T, Hq, D] compute dtype
                     Tensor q,        // [T, Hq, D] compute dtype
                     Tensor k_cache,  // [num_blocks, block_size, Hk, D] compute dtype or fp8
                     Tensor v_cache,  // [num_blocks, block_size, Hk, D] as k_cache
                     const AttentionMetadata& meta, float scale, std::optional<int> sliding_window,
                     cudaStream_t stream, PrefillKernel prefill_kernel = PrefillKernel::kAuto,
                     KVCacheScales scales = {});

}  // namespace engine::cuda
