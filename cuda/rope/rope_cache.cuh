#pragma once
// RoPE (neox style) fused with the paged KV-cache write: one block per token rotates all its q
// and k heads in one pass, writes each rotated k pack straight from registers into the cache,
// and copies v. A thread owns kVec consecutive pairs (i, i + D/2) of one head: 16-byte accesses
// when D/2 is a multiple of 8, single elements otherwise.
// Positions and slots are not range-checked on the device (the runner builds them).

#include <cstdint>

#include "common/pack.cuh"

namespace engine::cuda {

template <typename T, int kVec>
__global__ void rope_and_cache_kernel(
    T* __restrict__ q /*[T, Hq, D]*/, T* __restrict__ k /*[T, Hk, D]*/,
    const T* __restrict__ v /*[T, Hk, D]*/,
    const float* __restrict__ cos_sin /*[max_pos, D]: cos in [:, :D/2], sin in [:, D/2:]*/,
    const int32_t* __restrict__ positions /*[>= T]*/,
    const int32_t* __restrict__ slot_mapping /*[>= T]; negative = do not cache*/,
    T* __restrict__ k_cache /*[num_blocks * block_size, Hk, D]*/,
    T* __restrict__ v_cache /*[num_blocks * block_size, Hk, D]*/, int num_q_heads, int num_kv_heads,
    int head_dim) {
  const int64_t token = blockIdx.x;
  const int half = head_dim / 2;
  const int packs_per_half = half / kVec;
  const float* cos = cos_sin + int64_t(positions[token]) * head_dim;
  const float* sin = cos + half;
  const int64_t slot = slot_mapping[token];
  // A slot is block * block_size + offset, and a block is block_size consecutive [Hk, D] rows,
  // so slot * Hk * D is the row's element offset whatever block_size is.
  const int64_t kv_row = int64_t(num_kv_heads) * head_dim;

  const int num_rotations = (num_q_heads + num_kv_heads) * packs_per_half;
  for (int i = threadIdx.x; i < num_rotations; i += blockDim.x) {
    const int head = i / packs_per_half;
    const int first = (i % packs_per_half) * kVec;
    const bool is_q = head < num_q_heads;
    const int kv_head = head - num_q_heads;
    T* x = is_q ? q + (token * num_q_heads + head) * head_dim
                : k + token * kv_row + int64_t(kv_head) * head_dim;
    const Pack<T, kVec> a = load_pack<T, kVec>(x + first);
    const Pack<T, kVec> b = load_pack<T, kVec>(x + half + first);
    float c[kVec], s[kVec];
    load_as_float<float, kVec>(cos + first, c);
    load_as_float<float, kVec>(sin + first, s);
    Pack<T, kVec> ra, rb;
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const float fa = to_float(a.v[j]), fb = to_float(b.v[j]);
      ra.v[j] = from_float<T>(fa * c[j] - fb * s[j]);
      rb.v[j] = from_float<T>(fb * c[j] + fa * s[j]);
    }
    store_pack<T, kVec>(x + first, ra);
    store_pack<T, kVec>(x + half + first, rb);
    if (!is_q && slot >= 0) {
      T* cached = k_cache + slot * kv_row + int64_t(kv_head) * head_dim;
      store_pack<T, kVec>(cached + first, ra);
      store_pack<T, kVec>(cached + half + first, rb);
    }
  }

  if (slot < 0) return;
  const T* v_row = v + token * kv_row;
  T* v_cached = v_cache + slot * kv_row;
  for (int64_t p = threadIdx.x; p < kv_row / kVec; p += blockDim.x) {
    store_pack<T, kVec>(v_cached + p * kVec, load_pack<T, kVec>(v_row + p * kVec));
  }
}

}  // namespace engine::cuda
