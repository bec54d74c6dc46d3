#pragma once

#include <optional>

#include "backend/backend.h"

namespace engine::cpu {

// Causal paged attention for a batch mixing decodes and prefill chunks. Sequence b owns the
// new tokens [query_start_loc[b], query_start_loc[b + 1]); they are the last ones of its
// seq_lens[b] context tokens, whose K/V are already in the cache (rope_and_cache ran first).
// The key at context index j lives in block block_table[b, j / block_size] at offset
// j % block_size. New token i attends to keys [max(0, p - window + 1), p] where p is its own
// context index (all of [0, p] without a window). q head h reads kv head h / (Hq / Hk).
// Cached K and V count as stored value * scales (an fp8 cache is widened block by block).
// One pass over the keys with an online softmax: no [T, S] score matrix is formed.
void paged_attention(Tensor out /*[T, Hq, D] f32*/, Tensor q /*[T, Hq, D] f32*/,
                     Tensor k_cache /*[num_blocks, block_size, Hk, D] f32 or fp8 e4m3*/,
                     Tensor v_cache /*[num_blocks, block_size, Hk, D] as k_cache*/,
                     Tensor query_start_loc /*[B + 1] i32*/, Tensor seq_lens /*[B] i32*/,
                     Tensor block_table /*[B, max_blocks_per_seq] i32*/, float scale,
                     std::optional<int> sliding_window, KVCacheScales scales = {});

}  // namespace engine::cpu
