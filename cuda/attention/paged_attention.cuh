#pragma once
// Pieces shared by the paged attention kernels (launcher in paged_attention.cu): the decode
// kernel's parameters, dtype conversions, cp.async helpers, and the merge of flash-decoding
// splits. The kernels themselves: paged_decode.cuh (pure decode batches, max_query_len == 1) and
// paged_prefill.cuh (every other batch: prefill chunks and mixed prefill + decode).
//
// Flash-decoding: when a decode batch gives too few CTAs to fill the GPU, the context is split
// across CTAs (blockIdx.z); each writes its rows' unnormalized output, running max and sum in
// fp32 and combine_splits_kernel merges them.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <math_constants.h>

#include <cstdint>
#include <cstring>

namespace engine::cuda::attention {

// combine_splits_kernel: one warp per (token, head) row.
constexpr int kThreads = 128;  // 4 warps
constexpr int kWarps = kThreads / 32;

// The decode kernel's parameters. T: the compute dtype; C: the cache's (T, or __nv_fp8_e4m3).
template <typename T, typename C = T>
struct PagedAttentionParams {
  T* out;                          // [T, Hq, D]; unused when splitting
  const T* q;                      // [T, Hq, D]
  const C* k_cache;                // [num_blocks, block_size, Hk, D]
  const C* v_cache;                // [num_blocks, block_size, Hk, D]
  const int32_t* query_start_loc;  // [B + 1] prefix sums of query lengths
  const int32_t* seq_lens;         // [B] context length after this step
  const int32_t* block_table;      // [B, max_blocks_per_seq]
  float* partial_out;              // [num_splits, T, Hq, D] unnormalized; null without splitting
  float* partial_max;              // [num_splits, T, Hq] running max of scores (log2 units)
  float* partial_sum;              // [num_splits, T, Hq] sum of exp2(score - max)
  int num_tokens, num_q_heads, num_kv_heads, block_size, max_blocks_per_seq;
  int num_head_chunks;  // ceil(group / heads per CTA)
  int keys_per_split;   // context positions per split
  bool has_window;
  int window;
  float scale_log2;  // softmax scale * k scale * log2(e): scores are kept in log2 units for exp2f
  float v_scale;     // the cache's v scale, applied to the output
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

// The bytes one lane copies per cache access in the decode kernel: 8 cached values either way
// (16 bytes of a 16-bit cache, 8 of an fp8 one), so the lane layout does not change with C.
template <typename C>
struct CacheWord {
  using type = uint4;
};
template <>
struct CacheWord<__nv_fp8_e4m3> {
  using type = uint2;
};

// 8 cached values widened to fp32 (exactly: every e4m3 value is a half).
__device__ __forceinline__ void widen8(const uint2& raw, float (&x)[8]) {
  const uint32_t words[2] = {raw.x, raw.y};
#pragma unroll
  for (int w = 0; w < 2; ++w)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const auto pair = static_cast<__nv_fp8x2_storage_t>(words[w] >> (16 * half));
      const float2 f = __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2(pair, __NV_E4M3)));
      x[4 * w + 2 * half] = f.x;  // the lower byte holds the first value
      x[4 * w + 2 * half + 1] = f.y;
    }
}

// 8-byte global -> shared copy (through L1: cp.async.cg takes 16 bytes only); when !valid
// nothing is read and the destination is zeroed.
__device__ __forceinline__ void cp_async_8(void* smem, const void* gmem, bool valid) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const int src_size = valid ? 8 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(dst), "l"(gmem), "r"(src_size)
               : "memory");
}

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
