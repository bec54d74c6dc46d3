#pragma once
// RoPE (neox style) fused with the split of the qkv projection, Qwen3's per-head q/k RMSNorm and
// the paged KV-cache write. One block per token. A group of G lanes of one warp owns a q or k
// head: each lane owns packs of kVec consecutive pairs (i, i + D/2) (16-byte accesses when D/2
// is a multiple of 8, single elements otherwise), so the head's sum of squares is a shuffle
// reduction inside the group, with no shared memory and no barrier. The head is read twice when
// normed, once for the sum and once to scale and rotate: the second read hits L1, and a head
// of any size need not fit in registers. Rotated q goes to q_out, rotated k straight from
// registers into the cache; v is copied. K and V are divided by the cache's scales (multiplied by
// their reciprocals, as the CPU backend does) and rounded to the cache's type C: the compute dtype,
// or fp8 e4m3. Positions and slots are not range-checked on the device (the runner builds them).

#include <cstdint>

#include "common/pack.cuh"

namespace engine::cuda {

// The q or k head a group of lanes transforms, and where its result goes.
template <typename T, typename Out>
struct RopeHead {
  const T* x;           // [D] input (a slice of the qkv row)
  Out* out;             // [D] q_out row or cache row
  const float* weight;  // [D] norm weight, or null
  float out_scale;      // multiplies the result before it is rounded to Out (1 for q)
};

// Sum of v over the G lanes of each aligned group (G a power of two <= 32). Every lane of the
// warp must call it.
__device__ __forceinline__ float group_sum(float v, int group_size) {
  for (int offset = group_size / 2; offset > 0; offset >>= 1) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

// This lane's share of the head's sum of squares: packs lane, lane + G, ...
template <typename T, int kVec>
__device__ __forceinline__ float head_sum_squares(const T* x /*[D]*/, int half, int lane,
                                                  int group_size) {
  float sum = 0.0f;
  for (int first = lane * kVec; first < half; first += group_size * kVec) {
    const Pack<T, kVec> a = load_pack<T, kVec>(x + first);
    const Pack<T, kVec> b = load_pack<T, kVec>(x + half + first);
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      sum += to_float(a.v[j]) * to_float(a.v[j]) + to_float(b.v[j]) * to_float(b.v[j]);
    }
  }
  return sum;
}

// out = rotate(x * inv_rms * weight) * out_scale (no norm without a weight), for this lane's packs.
template <typename T, typename Out, int kVec>
__device__ __forceinline__ void norm_rotate_head(const RopeHead<T, Out>& head, float inv_rms,
                                                 const float* __restrict__ cos /*[D/2]*/,
                                                 const float* __restrict__ sin /*[D/2]*/, int half,
                                                 int lane, int group_size) {
  for (int first = lane * kVec; first < half; first += group_size * kVec) {
    const Pack<T, kVec> a = load_pack<T, kVec>(head.x + first);
    const Pack<T, kVec> b = load_pack<T, kVec>(head.x + half + first);
    float c[kVec], s[kVec], wa[kVec], wb[kVec];
    load_as_float<float, kVec>(cos + first, c);
    load_as_float<float, kVec>(sin + first, s);
    if (head.weight != nullptr) {
      load_as_float<float, kVec>(head.weight + first, wa);
      load_as_float<float, kVec>(head.weight + half + first, wb);
    }
    Pack<Out, kVec> ra, rb;
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      float fa = to_float(a.v[j]), fb = to_float(b.v[j]);
      if (head.weight != nullptr) {
        fa = fa * inv_rms * wa[j];
        fb = fb * inv_rms * wb[j];
      }
      ra.v[j] = from_float<Out>((fa * c[j] - fb * s[j]) * head.out_scale);
      rb.v[j] = from_float<Out>((fb * c[j] + fa * s[j]) * head.out_scale);
    }
    store_pack<Out, kVec>(head.out + first, ra);
    store_pack<Out, kVec>(head.out + half + first, rb);
  }
}

// lanes_per_head (G): a power of two <= 32, at least D/2/kVec where that is <= 32, so a
// head's lanes sit in one warp. blockDim.x: a multiple of 32. q_norm and k_norm are both
// null or both set. C: the cache's type (T, or __nv_fp8_e4m3).
template <typename T, typename C, int kVec>
__global__ void rope_and_cache_kernel(
    T* __restrict__ q_out /*[T, Hq, D]*/, const T* __restrict__ qkv /*[T, (Hq + 2 Hk) * D]*/,
    const float* __restrict__ q_norm /*[D] or null*/,
    const float* __restrict__ k_norm /*[D] or null*/, float eps,
    const float* __restrict__ cos_sin /*[max_pos, D]: cos in [:, :D/2], sin in [:, D/2:]*/,
    const int32_t* __restrict__ positions /*[>= T]*/,
    const int32_t* __restrict__ slot_mapping /*[>= T]; negative = do not cache*/,
    C* __restrict__ k_cache /*[num_blocks * block_size, Hk, D]*/,
    C* __restrict__ v_cache /*[num_blocks * block_size, Hk, D]*/, float inv_k_scale,
    float inv_v_scale, int num_q_heads, int num_kv_heads, int head_dim, int lanes_per_head) {
  const int64_t token = blockIdx.x;
  const int half = head_dim / 2;
  const float* cos = cos_sin + int64_t(positions[token]) * head_dim;
  const float* sin = cos + half;
  const int64_t slot = slot_mapping[token];
  // A slot is block * block_size + offset, and a block is block_size consecutive [Hk, D] rows,
  // so slot * Hk * D is the row's element offset whatever block_size is.
  const int64_t kv_row = int64_t(num_kv_heads) * head_dim;
  const T* row = qkv + token * (int64_t(num_q_heads) * head_dim + 2 * kv_row);
  // Padding tokens (negative slot) need only their q: their k and v are never read.
  const int num_heads = num_q_heads + (slot >= 0 ? num_kv_heads : 0);

  const int heads_per_warp = 32 / lanes_per_head, num_warps = blockDim.x / 32;
  const int lane = threadIdx.x % lanes_per_head;
  // The loop bound depends on the warp only, so all 32 lanes reach every group_sum.
  for (int base = threadIdx.x / 32 * heads_per_warp; base < num_heads;
       base += num_warps * heads_per_warp) {
    const int h = base + threadIdx.x % 32 / lanes_per_head;
    const bool active = h < num_heads, is_q = h < num_q_heads;
    // q heads then k heads lie back to back in the row.
    const T* x = row + int64_t(h) * head_dim;
    const float* weight = is_q ? q_norm : k_norm;
    float inv_rms = 1.0f;
    if (weight != nullptr) {  // the same for every lane (both norms or neither)
      const float own = active ? head_sum_squares<T, kVec>(x, half, lane, lanes_per_head) : 0.0f;
      inv_rms = rsqrtf(group_sum(own, lanes_per_head) / float(head_dim) + eps);
    }
    if (active && is_q) {
      const RopeHead<T, T> head{x, q_out + (token * num_q_heads + h) * head_dim, weight, 1.0f};
      norm_rotate_head<T, T, kVec>(head, inv_rms, cos, sin, half, lane, lanes_per_head);
    } else if (active) {
      C* cached = k_cache + slot * kv_row + int64_t(h - num_q_heads) * head_dim;  // slot >= 0
      const RopeHead<T, C> head{x, cached, weight, inv_k_scale};
      norm_rotate_head<T, C, kVec>(head, inv_rms, cos, sin, half, lane, lanes_per_head);
    }
  }

  if (slot < 0) return;
  const T* v_row = row + int64_t(num_q_heads) * head_dim + kv_row;
  C* v_cached = v_cache + slot * kv_row;
  for (int64_t p = threadIdx.x; p < kv_row / kVec; p += blockDim.x) {
    const Pack<T, kVec> in = load_pack<T, kVec>(v_row + p * kVec);
    Pack<C, kVec> out;
#pragma unroll
    for (int j = 0; j < kVec; ++j) out.v[j] = from_float<C>(to_float(in.v[j]) * inv_v_scale);
    store_pack<C, kVec>(v_cached + p * kVec, out);
  }
}

}  // namespace engine::cuda
