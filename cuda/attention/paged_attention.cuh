#pragma once
// Paged attention kernels (launcher in paged_attention.cu).
//
// One CTA per (sequence, query tile, kv head, head chunk, kv split). Its rows are the query
// heads of one kv head's group (GQA: K/V are read once per group, never replicated) times the
// tile's new tokens, at most kMaxRows. K/V stream through shared memory in tiles of
// kKeysPerTile keys, gathered through the block table with cp.async (two stages, so the next
// tile loads while this one is computed), and fold into each row's online softmax in fp32.
//
// Flash-decoding: when a decode batch gives too few CTAs to fill the GPU, the context is split
// across CTAs (blockIdx.z); each writes its rows' unnormalized output, running max and sum in
// fp32 and combine_splits_kernel merges them.
//
// NOTE: the kernel trusts the device metadata (query_start_loc, seq_lens, block_table); the
// launcher can check only shapes without synchronizing. Cache slots past seq_len are never
// read (their shared-memory copies are zero-filled instead), so they may hold anything.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math_constants.h>

#include <cstdint>
#include <cstring>

namespace engine::cuda::attention {

constexpr int kThreads = 128;  // 4 warps
constexpr int kWarps = kThreads / 32;
constexpr int kRowsPerWarp = 4;
constexpr int kMaxRows = kWarps * kRowsPerWarp;  // (query, head) rows per CTA
// One key per lane when scoring; 32 keys x 256 B x (K + V) = 16 KB in flight per stage at
// head_dim 128, enough with 4-5 resident CTAs per SM to cover HBM latency.
constexpr int kKeysPerTile = 32;

template <typename T>
struct PagedAttentionParams {
  T* out;                          // [T, Hq, D]; unused when splitting
  const T* q;                      // [T, Hq, D]
  const T* k_cache;                // [num_blocks, block_size, Hk, D]
  const T* v_cache;                // [num_blocks, block_size, Hk, D]
  const int32_t* query_start_loc;  // [B + 1] prefix sums of query lengths
  const int32_t* seq_lens;         // [B] context length after this step
  const int32_t* block_table;      // [B, max_blocks_per_seq]
  float* partial_out;              // [num_splits, T, Hq, D] unnormalized; null without splitting
  float* partial_max;              // [num_splits, T, Hq] running max of scores (log2 units)
  float* partial_sum;              // [num_splits, T, Hq] sum of exp2(score - max)
  int num_tokens, num_q_heads, num_kv_heads, block_size, max_blocks_per_seq;
  int heads_per_cta;     // query heads of a group one CTA carries (<= kMaxRows)
  int num_head_chunks;   // ceil(group / heads_per_cta)
  int queries_per_tile;  // new tokens per CTA; rows = queries_per_tile * heads_per_cta
  int num_query_tiles;   // ceil(max_query_len / queries_per_tile)
  int keys_per_split;    // context positions per split (a multiple of kKeysPerTile)
  bool has_window;
  int window;
  float scale_log2;  // softmax scale * log2(e): scores are kept in log2 units for exp2f
};

template <typename T>
struct Element;

template <>
struct Element<__nv_bfloat16> {
  static __device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float x) {
    return __float2bfloat16_rn(x);
  }
  static __device__ __forceinline__ float2 to_float2(uint32_t bits) {
    __nv_bfloat162 pair;
    memcpy(&pair, &bits, sizeof(pair));
    return __bfloat1622float2(pair);
  }
};

template <>
struct Element<__half> {
  static __device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
  static __device__ __forceinline__ __half from_float(float x) { return __float2half_rn(x); }
  static __device__ __forceinline__ float2 to_float2(uint32_t bits) {
    __half2 pair;
    memcpy(&pair, &bits, sizeof(pair));
    return __half22float2(pair);
  }
};

// 16-byte global -> shared copy; when !valid nothing is read and the destination is zeroed.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const int src_size = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem),
               "r"(src_size)
               : "memory");
}
// The "memory" clobbers keep the compiler from moving shared-memory reads across the copy and the
// wait: the decode kernel has no barrier between them.
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2)
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  return x;
}
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// Where one CTA works: its sequence, tokens, heads and key range.
struct CtaWork {
  int seq, kv_head, split;
  int token_begin;     // first token of this CTA's tile, in [0, T)
  int context_before;  // cached context before the sequence's first new token
  int query_begin;     // tile's first new token, counted from the sequence's first
  int num_queries, head_begin, num_heads, num_rows;
  int key_begin, key_end;  // context positions [key_begin, key_end) this CTA reads
};

template <typename T>
__device__ __forceinline__ int first_visible_key(const PagedAttentionParams<T>& p, int pos) {
  return p.has_window ? max(0, pos - p.window + 1) : 0;
}

// False when the CTA's query tile lies past its sequence's new tokens.
template <typename T>
__device__ __forceinline__ bool plan_cta(const PagedAttentionParams<T>& p, CtaWork& w) {
  w.seq = blockIdx.x / p.num_query_tiles;
  const int tile = blockIdx.x % p.num_query_tiles;
  w.kv_head = blockIdx.y / p.num_head_chunks;
  const int chunk = blockIdx.y % p.num_head_chunks;
  w.split = blockIdx.z;
  const int seq_token_begin = p.query_start_loc[w.seq];
  const int num_new = p.query_start_loc[w.seq + 1] - seq_token_begin;
  w.query_begin = tile * p.queries_per_tile;
  if (w.query_begin >= num_new) return false;
  w.num_queries = min(num_new - w.query_begin, p.queries_per_tile);
  w.token_begin = seq_token_begin + w.query_begin;
  w.context_before = p.seq_lens[w.seq] - num_new;
  const int group = p.num_q_heads / p.num_kv_heads;
  w.head_begin = w.kv_head * group + chunk * p.heads_per_cta;
  w.num_heads = min(p.heads_per_cta, group - chunk * p.heads_per_cta);
  w.num_rows = w.num_queries * p.heads_per_cta;
  const int first_pos = w.context_before + w.query_begin;
  const int split_begin = w.split * p.keys_per_split;
  w.key_begin = max(first_visible_key(p, first_pos), split_begin);
  w.key_end = min(first_pos + w.num_queries, split_begin + p.keys_per_split);
  return true;
}

// Gathers keys [tile_begin, tile_begin + kKeysPerTile) of the CTA's kv head into shared memory
// through the block table; keys at or past key_end are zero-filled, never read.
template <typename T, int kHeadDim, int kRowStride>
__device__ __forceinline__ void load_kv_tile(const PagedAttentionParams<T>& p, const CtaWork& w,
                                             int tile_begin, T (*k_s)[kRowStride],
                                             T (*v_s)[kRowStride]) {
  constexpr int kChunksPerKey = kHeadDim / 8;  // 16-byte pieces of one key's row
  const int32_t* table = p.block_table + int64_t(w.seq) * p.max_blocks_per_seq;
  for (int c = threadIdx.x; c < kKeysPerTile * kChunksPerKey; c += kThreads) {
    const int key_in_tile = c / kChunksPerKey, piece = c % kChunksPerKey;
    const int key = tile_begin + key_in_tile;
    const bool valid = key < w.key_end;
    int64_t offset = 0;
    if (valid) {
      const int64_t block = table[key / p.block_size];
      const int64_t slot = block * p.block_size + key % p.block_size;
      offset = (slot * p.num_kv_heads + w.kv_head) * kHeadDim + piece * 8;
    }
    cp_async_16(&k_s[key_in_tile][piece * 8], p.k_cache + offset, valid);
    cp_async_16(&v_s[key_in_tile][piece * 8], p.v_cache + offset, valid);
  }
}

// Per-warp state of its rows (row = warp + kWarps * i): lane owns kHeadDim / 32 output dims.
template <int kHeadDim>
struct WarpRows {
  static constexpr int kDimsPerLane = kHeadDim / 32;
  float acc[kRowsPerWarp][kDimsPerLane];
  float max_score[kRowsPerWarp];  // running max (log2 units), warp-uniform
  float sum_exp[kRowsPerWarp];    // this lane's share of the running sum
};

// Folds one tile of keys (lane = key when scoring) into the warp's rows.
template <typename T, int kHeadDim, int kRowStride>
__device__ __forceinline__ void fold_kv_tile(const PagedAttentionParams<T>& p, const CtaWork& w,
                                             int tile_begin, const float (*q_s)[kHeadDim],
                                             const T (*k_s)[kRowStride], const T (*v_s)[kRowStride],
                                             WarpRows<kHeadDim>& st) {
  constexpr int kDimsPerLane = WarpRows<kHeadDim>::kDimsPerLane;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float score[kRowsPerWarp] = {};
#pragma unroll
  for (int c = 0; c < kHeadDim / 8; ++c) {
    // Row stride padded by 16 bytes: the 8 lanes of a 16-byte phase hit distinct banks.
    const uint4 raw = *reinterpret_cast<const uint4*>(&k_s[lane][c * 8]);
    float k[8];
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float2 pair = Element<T>::to_float2(words[e]);
      k[2 * e] = pair.x;
      k[2 * e + 1] = pair.y;
    }
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) {
      if (warp + kWarps * i >= w.num_rows) continue;  // warp-uniform
      // Same address across the warp: a broadcast.
      const float4 q0 = *reinterpret_cast<const float4*>(&q_s[warp + kWarps * i][c * 8]);
      const float4 q1 = *reinterpret_cast<const float4*>(&q_s[warp + kWarps * i][c * 8 + 4]);
      score[i] += q0.x * k[0] + q0.y * k[1] + q0.z * k[2] + q0.w * k[3] + q1.x * k[4] +
                  q1.y * k[5] + q1.z * k[6] + q1.w * k[7];
    }
  }
  const int key = tile_begin + lane;
  float prob[kRowsPerWarp] = {};
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    const int row = warp + kWarps * i;
    if (row >= w.num_rows) continue;
    const int pos = w.context_before + w.query_begin + row / p.heads_per_cta;
    const int lo = max(w.key_begin, first_visible_key(p, pos));
    const int hi = min(w.key_end - 1, pos);
    const float s = (key >= lo && key <= hi) ? score[i] : -CUDART_INF_F;
    const float tile_max = warp_max(s);
    if (tile_max == -CUDART_INF_F) continue;  // no visible key here: state unchanged, prob 0
    const float new_max = fmaxf(st.max_score[i], tile_max);
    const float correction = exp2f(st.max_score[i] - new_max);  // 0 on the first visible tile
    prob[i] = exp2f(s - new_max);
    st.sum_exp[i] = st.sum_exp[i] * correction + prob[i];
    st.max_score[i] = new_max;
#pragma unroll
    for (int d = 0; d < kDimsPerLane; ++d) st.acc[i][d] *= correction;
  }
#pragma unroll 8
  for (int j = 0; j < kKeysPerTile; ++j) {
    float v[kDimsPerLane];
    const T* v_row = &v_s[j][lane * kDimsPerLane];
#pragma unroll
    for (int d = 0; d < kDimsPerLane; d += 2) {
      const float2 pair = Element<T>::to_float2(*reinterpret_cast<const uint32_t*>(v_row + d));
      v[d] = pair.x;
      v[d + 1] = pair.y;
    }
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) {
      if (warp + kWarps * i >= w.num_rows) continue;
      const float pj = __shfl_sync(0xffffffffu, prob[i], j);
#pragma unroll
      for (int d = 0; d < kDimsPerLane; ++d) st.acc[i][d] += pj * v[d];
    }
  }
}

template <typename T, int kHeadDim>
__device__ __forceinline__ void write_rows(const PagedAttentionParams<T>& p, const CtaWork& w,
                                           WarpRows<kHeadDim>& st) {
  constexpr int kDimsPerLane = WarpRows<kHeadDim>::kDimsPerLane;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    const int row = warp + kWarps * i;
    if (row >= w.num_rows || row % p.heads_per_cta >= w.num_heads) continue;
    const float sum = warp_sum(st.sum_exp[i]);
    const int64_t token = w.token_begin + row / p.heads_per_cta;
    const int64_t head = w.head_begin + row % p.heads_per_cta;
    const int64_t dim = lane * kDimsPerLane;
    if (p.partial_out == nullptr) {
      // Every row sees at least its own key, so sum > 0.
      const float inv_sum = 1.0f / sum;
      T* dst = p.out + (token * p.num_q_heads + head) * kHeadDim + dim;
#pragma unroll
      for (int d = 0; d < kDimsPerLane; ++d)
        dst[d] = Element<T>::from_float(st.acc[i][d] * inv_sum);
    } else {
      // A split may see no key of this row: max -inf, sum 0, acc 0, which the combine weighs 0.
      const int64_t index = (int64_t(w.split) * p.num_tokens + token) * p.num_q_heads + head;
      float* dst = p.partial_out + index * kHeadDim + dim;
#pragma unroll
      for (int d = 0; d < kDimsPerLane; ++d) dst[d] = st.acc[i][d];
      if (lane == 0) {
        p.partial_max[index] = st.max_score[i];
        p.partial_sum[index] = sum;
      }
    }
  }
}

template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kThreads)
    paged_attention_kernel(const PagedAttentionParams<T> p) {
  static_assert(kHeadDim % 64 == 0, "lanes own an even number of dims");
  constexpr int kRowStride = kHeadDim + 8;  // 16 bytes of padding per key row
  __shared__ alignas(16) float q_s[kMaxRows][kHeadDim];
  __shared__ alignas(16) T k_s[2][kKeysPerTile][kRowStride];
  __shared__ alignas(16) T v_s[2][kKeysPerTile][kRowStride];

  CtaWork w;
  if (!plan_cta(p, w)) return;  // uniform across the CTA

  // Query rows, pre-scaled into log2 units; rows past num_rows (or heads past the group) are 0.
  for (int e = threadIdx.x; e < kMaxRows * kHeadDim; e += kThreads) {
    const int row = e / kHeadDim, d = e % kHeadDim;
    float value = 0.0f;
    if (row < w.num_rows && row % p.heads_per_cta < w.num_heads) {
      const int64_t token = w.token_begin + row / p.heads_per_cta;
      const int64_t head = w.head_begin + row % p.heads_per_cta;
      value =
          Element<T>::to_float(p.q[(token * p.num_q_heads + head) * kHeadDim + d]) * p.scale_log2;
    }
    q_s[row][d] = value;
  }

  WarpRows<kHeadDim> st;
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    st.max_score[i] = -CUDART_INF_F;
    st.sum_exp[i] = 0.0f;
#pragma unroll
    for (int d = 0; d < WarpRows<kHeadDim>::kDimsPerLane; ++d) st.acc[i][d] = 0.0f;
  }

  const int num_tiles =
      w.key_end > w.key_begin ? (w.key_end - w.key_begin + kKeysPerTile - 1) / kKeysPerTile : 0;
  if (num_tiles > 0) load_kv_tile<T, kHeadDim, kRowStride>(p, w, w.key_begin, k_s[0], v_s[0]);
  cp_async_commit();
  for (int t = 0; t < num_tiles; ++t) {
    const int stage = t & 1;
    if (t + 1 < num_tiles) {
      load_kv_tile<T, kHeadDim, kRowStride>(p, w, w.key_begin + (t + 1) * kKeysPerTile,
                                            k_s[stage ^ 1], v_s[stage ^ 1]);
    }
    cp_async_commit();  // possibly empty, so that "all but the newest group" is always tile t
    cp_async_wait<1>();
    __syncthreads();  // tile t (and q_s) visible to every warp
    fold_kv_tile<T, kHeadDim, kRowStride>(p, w, w.key_begin + t * kKeysPerTile, q_s, k_s[stage],
                                          v_s[stage], st);
    __syncthreads();  // every warp is done with this stage before tile t + 2 overwrites it
  }
  write_rows(p, w, st);
}

// Merges the splits of each (token, head) row: one warp per row, lane owns kHeadDim / 32 dims.
template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kThreads)
    combine_splits_kernel(T* __restrict__ out,                    // [T, Hq, D]
                          const float* __restrict__ partial_out,  // [num_splits, T, Hq, D]
                          const float* __restrict__ partial_max,  // [num_splits, T, Hq]
                          const float* __restrict__ partial_sum,  // [num_splits, T, Hq]
                          int64_t num_rows,                       // T * Hq
                          int num_splits) {
  constexpr int kDimsPerLane = kHeadDim / 32;
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= num_rows) return;
  float max_score = -CUDART_INF_F;
  for (int s = 0; s < num_splits; ++s)
    max_score = fmaxf(max_score, partial_max[s * num_rows + row]);
  float total = 0.0f, acc[kDimsPerLane] = {};
  for (int s = 0; s < num_splits; ++s) {
    const int64_t index = s * num_rows + row;
    const float weight = exp2f(partial_max[index] - max_score);  // 0 for a split with no keys
    total += weight * partial_sum[index];
    const float* src = partial_out + index * kHeadDim + lane * kDimsPerLane;
#pragma unroll
    for (int d = 0; d < kDimsPerLane; ++d) acc[d] += weight * src[d];
  }
  const float inv_total = 1.0f / total;
  T* dst = out + row * kHeadDim + lane * kDimsPerLane;
#pragma unroll
  for (int d = 0; d < kDimsPerLane; ++d) dst[d] = Element<T>::from_float(acc[d] * inv_total);
}

}  // namespace engine::cuda::attention
