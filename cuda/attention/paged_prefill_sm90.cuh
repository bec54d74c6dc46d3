#pragma once
// Hopper path of the prefill kernel: the same work as paged_prefill.cuh (same CTA work units,
// planning, masking and online softmax) with the products on warpgroup MMAs (wgmma.cuh) instead
// of mma.sync. Launched only on sm_90 devices of an sm_90a build.
//
// One CTA of two warpgroups carries kBlockM = 128 (token, head) rows, 64 per warpgroup. Per
// 64-key tile each warpgroup issues S = Q K^T as 8 (D = 128) m64n64k16 wgmmas reading Q and K
// straight from shared memory, and O += P V as 4 m64nDk16 wgmmas with P from registers (the S
// accumulator is already in the A-operand layout) and V read transposed from shared memory. A
// wgmma reads each shared-memory operand once for all 64 rows of the warpgroup, where mma.sync
// reads it once per warp, so shared-memory bandwidth stops bounding the products. Tiles are
// stored 128-byte swizzled (wgmma.cuh) and filled with cp.async like the mma.sync kernel's, in a
// 2-stage ring; a proxy fence makes the copies visible to wgmma.

#include <math_constants.h>

#include <cstdint>

#include "attention/paged_prefill.cuh"
#include "attention/wgmma.cuh"

namespace engine::cuda::attention::prefill_sm90 {

using prefill::PrefillParams;
using prefill::PrefillWork;

constexpr int kWarpGroups = 2;
constexpr int kThreads = 128 * kWarpGroups;
constexpr int kWarps = kThreads / 32;
constexpr int kBlockM = 64 * kWarpGroups;  // (token, head) rows per CTA
constexpr int kBlockN = 64;                // keys per K/V tile
constexpr int kStages = 2;
constexpr int kKeysPerWarpCopy = kBlockN / kWarps;
constexpr int kMinCtasPerSm = 2;
static_assert(kBlockM == prefill::kBlockM, "the launcher plans both kernels alike");

// Byte offsets inside the CTA's shared memory (its start rounded up to 1024 bytes): Q, then the
// K stages, then the V stages, each a swizzled tile of [D / 64 column blocks][rows][64].
template <typename T, int kHeadDim>
struct Sm90Layout {
  static constexpr int kBlocks = kHeadDim / 64;  // 64-element column blocks per row
  static constexpr uint32_t kQBytes = kBlockM * kHeadDim * sizeof(T);
  static constexpr uint32_t kTileBytes = kBlockN * kHeadDim * sizeof(T);  // one K or V stage
  static constexpr uint32_t kQ = 0;
  static constexpr uint32_t kK = kQBytes;
  static constexpr uint32_t kV = kK + kStages * kTileBytes;
  static constexpr uint32_t kBytes = kV + kStages * kTileBytes;
  static constexpr size_t kDynamicBytes = kBytes + 1024;  // slack for the 1024-byte alignment
  static_assert(kHeadDim % 64 == 0 && sizeof(T) == 2, "64-element column blocks of 16-bit types");
  static_assert(kQBytes % 1024 == 0 && kTileBytes % 1024 == 0, "atoms stay 1024-byte aligned");

  // Offset of 16-byte chunk `chunk` (of kHeadDim / 8) of row `row` in a tile of `rows` rows.
  static __device__ __forceinline__ uint32_t chunk_offset(int rows, int row, int chunk) {
    return uint32_t((chunk / 8) * rows * 128 + row * 128 + (((chunk % 8) ^ (row % 8)) << 4));
  }
};

// 16-byte global -> shared copy to a shared-memory address; when !valid nothing is read and the
// destination is zeroed.
__device__ __forceinline__ void cp_async_16_to(uint32_t dst, const void* gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem),
               "r"(valid ? 16 : 0)
               : "memory");
}

template <typename T, int kHeadDim>
__device__ __forceinline__ void load_q(const PrefillParams<T>& p, const PrefillWork& w,
                                       uint32_t q_base) {
  using L = Sm90Layout<T, kHeadDim>;
  prefill::for_each_q_piece<T, kHeadDim, kThreads>(
      p, w, [&](int row, int piece, const T* src, bool valid) {
        cp_async_16_to(q_base + L::chunk_offset(kBlockM, row, piece), src, valid);
      });
}

// As prefill::issue_kv_tile, into the swizzled stages: warp w copies keys w * kKeysPerWarpCopy..
// of the tile, kHeadDim / 8 lanes per key; `slot` is lookup_slot's result for this tile.
template <typename T, int kHeadDim>
__device__ __forceinline__ void issue_kv_tile(const PrefillParams<T>& p, const PrefillWork& w,
                                              int tile_begin, int slot, uint32_t k_stage,
                                              uint32_t v_stage) {
  using L = Sm90Layout<T, kHeadDim>;
  constexpr int kChunks = kHeadDim / 8;
  constexpr int kKeysPerPass = 32 / kChunks;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int piece = lane % kChunks;
  const int64_t slot_stride = int64_t(p.num_kv_heads) * kHeadDim;
  const int64_t head_offset = int64_t(w.kv_head) * kHeadDim + piece * 8;
#pragma unroll
  for (int n = 0; n < kKeysPerWarpCopy / kKeysPerPass; ++n) {
    const int index = lane / kChunks + n * kKeysPerPass;
    const int key_slot = __shfl_sync(0xffffffffu, slot, index);
    const int key_in_tile = warp * kKeysPerWarpCopy + index;
    const int key = tile_begin + key_in_tile;
    const bool valid = key >= w.key_begin && key < w.key_end;
    const int64_t offset = key_slot * slot_stride + head_offset;  // slot 0 when !valid
    const uint32_t dst = L::chunk_offset(kBlockN, key_in_tile, piece);
    cp_async_16_to(k_stage + dst, p.k_cache + offset, valid);
    cp_async_16_to(v_stage + dst, p.v_cache + offset, valid);
  }
}

// One thread's share of its warpgroup's 64 rows: rows half = 0, 1 are warp-row lane / 4 + 8 half
// of the warp's 16; columns 2 (lane % 4)..+1 of every 8-wide chunk.
template <int kHeadDim>
struct Sm90RowState {
  float o[kHeadDim / 2];  // unnormalized output: register 4 j + e = (half e / 2, dim 8 j + ..)
  float max_score[2];     // running max of raw scores, quad-uniform
  float sum_exp[2];       // this lane's share of the running sum
};

// Masks, updates the online softmax over one tile's scores s (m64n64 accumulator layout), turns
// them into probabilities in place, and rescales O when a row's max moved.
template <typename T, int kHeadDim>
__device__ __forceinline__ void softmax_tile(const PrefillParams<T>& p, const PrefillWork& w,
                                             int first_row, int tile_begin, bool masked,
                                             float (&s)[32], Sm90RowState<kHeadDim>& st) {
  const int lane = threadIdx.x % 32;
  float correction[2];
  bool moved = false;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    if (masked) {
      const int row = first_row + lane / 4 + 8 * half;
      const int last = w.first_pos + row / p.heads_per_cta - tile_begin;  // last visible column
      const int first = p.has_window ? last - p.window + 1 : -1;
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int col = j * 8 + (lane % 4) * 2 + e;
          if (col > last || col < first) s[4 * j + 2 * half + e] = -CUDART_INF_F;
        }
    }
    float row_max = st.max_score[half];
#pragma unroll
    for (int j = 0; j < kBlockN / 8; ++j)
      row_max = fmaxf(row_max, fmaxf(s[4 * j + 2 * half], s[4 * j + 2 * half + 1]));
    row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 1));
    row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 2));
    const float base = row_max == -CUDART_INF_F ? 0.0f : row_max * p.scale_log2;
    correction[half] = fast_exp2(st.max_score[half] * p.scale_log2 - base);
    moved |= row_max != st.max_score[half];
    st.max_score[half] = row_max;
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < kBlockN / 8; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float& x = s[4 * j + 2 * half + e];
        x = fast_exp2(fmaf(x, p.scale_log2, -base));
        sum += x;
      }
    st.sum_exp[half] = st.sum_exp[half] * correction[half] + sum;
  }
  if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
    for (int i = 0; i < kHeadDim / 2; ++i) st.o[i] *= correction[(i % 4) / 2];
  }
}

// One tile for one warpgroup: S = Q K^T, softmax, O += P V, each product waited for before its
// results are used (the other warpgroups of the SM keep the tensor cores busy meanwhile).
template <typename T, int kHeadDim>
__device__ __forceinline__ void fold_tile(const PrefillParams<T>& p, const PrefillWork& w,
                                          uint32_t q_rows, uint32_t k_stage, uint32_t v_stage,
                                          int first_row, int tile_begin, bool masked,
                                          Sm90RowState<kHeadDim>& st) {
  using L = Sm90Layout<T, kHeadDim>;
  float s[32];
#pragma unroll
  for (int i = 0; i < 32; ++i) s[i] = 0.0f;
  sm90::fence_registers(s);
  sm90::wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < kHeadDim / 16; ++kk) {
    // k-step kk: column block kk / 4, 32 bytes per step inside its 128-byte rows.
    const uint32_t step = (kk % 4) * 32;
    const uint64_t a = sm90::smem_descriptor(q_rows + (kk / 4) * (kBlockM * 128) + step, 16, 1024);
    const uint64_t b = sm90::smem_descriptor(k_stage + (kk / 4) * (kBlockN * 128) + step, 16, 1024);
    sm90::wgmma_ss_n64<T>(s, a, b, kk > 0);
  }
  sm90::wgmma_commit();
  sm90::wgmma_wait<0>();
  sm90::fence_registers(s);

  softmax_tile<T, kHeadDim>(p, w, first_row, tile_begin, masked, s, st);

  uint32_t a[kBlockN / 16][4];  // P as A fragments, keys 16 j..16 j + 15
#pragma unroll
  for (int j = 0; j < kBlockN / 16; ++j) {
    a[j][0] = pack_pair<T>(s[8 * j + 0], s[8 * j + 1]);
    a[j][1] = pack_pair<T>(s[8 * j + 2], s[8 * j + 3]);
    a[j][2] = pack_pair<T>(s[8 * j + 4], s[8 * j + 5]);
    a[j][3] = pack_pair<T>(s[8 * j + 6], s[8 * j + 7]);
  }
  sm90::fence_registers(st.o);
  sm90::wgmma_fence();
#pragma unroll
  for (int j = 0; j < kBlockN / 16; ++j) {
    // 16 keys (two 8-row groups, 2 KB) per step; the 64-dim blocks kBlockN * 128 bytes apart.
    const uint64_t b = sm90::smem_descriptor(v_stage + j * 16 * 128, kBlockN * 128, 1024);
    if constexpr (kHeadDim == 128) {
      sm90::wgmma_rs_n128<T>(st.o, a[j], b);
    } else {
      sm90::wgmma_rs_n64<T>(st.o, a[j], b);
    }
  }
  sm90::wgmma_commit();
  sm90::wgmma_wait<0>();
  sm90::fence_registers(st.o);
}

template <typename T, int kHeadDim>
__device__ __forceinline__ void write_output(const PrefillParams<T>& p, const PrefillWork& w,
                                             int first_row, Sm90RowState<kHeadDim>& st) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float sum = st.sum_exp[half];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int row = first_row + lane / 4 + 8 * half;
    const int token = row / p.heads_per_cta, head = row % p.heads_per_cta;
    if (token >= w.num_queries || head >= w.num_heads) continue;
    const float inv_sum = p.v_scale / sum;  // the row sees its own key: sum > 0
    T* dst = p.out +
             ((int64_t(w.token_begin) + token) * p.num_q_heads + w.head_begin + head) * kHeadDim +
             (lane % 4) * 2;
#pragma unroll
    for (int j = 0; j < kHeadDim / 8; ++j) {
      *reinterpret_cast<uint32_t*>(dst + j * 8) =
          pack_pair<T>(st.o[4 * j + 2 * half] * inv_sum, st.o[4 * j + 2 * half + 1] * inv_sum);
    }
  }
}

template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kThreads, kMinCtasPerSm)
    paged_prefill_wgmma_kernel(const PrefillParams<T> p) {
#ifdef EMBER_WGMMA_ENABLED
  using L = Sm90Layout<T, kHeadDim>;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t base = (shared_address(smem_raw) + 1023u) & ~1023u;

  PrefillWork w;
  if (!prefill::plan_prefill(p, w)) return;  // uniform across the CTA
  const int warp = threadIdx.x / 32;
  const int group = warp / 4;  // warpgroup
  const int32_t* table = p.block_table + int64_t(w.seq) * p.max_blocks_per_seq;

  Sm90RowState<kHeadDim> st;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    st.max_score[half] = -CUDART_INF_F;
    st.sum_exp[half] = 0.0f;
  }
#pragma unroll
  for (int i = 0; i < kHeadDim / 2; ++i) st.o[i] = 0.0f;
  // Uniform across each warpgroup, as its wgmmas require.
  const bool group_has_rows = group * 64 / p.heads_per_cta < w.num_queries;
  const int first_row = group * 64 + (warp % 4) * 16;       // the warp's first row
  const uint32_t q_rows = base + L::kQ + group * 64 * 128;  // the warpgroup's 64 rows

  const int tile_first = w.key_begin / kBlockN, tile_last = (w.key_end - 1) / kBlockN;
  const int num_tiles = tile_last - tile_first + 1;
  const int unmasked_end = w.first_pos + 1;
  const int unmasked_begin = p.has_window ? w.key_end - p.window : 0;

  load_q<T, kHeadDim>(p, w, base + L::kQ);
  int slot = prefill::lookup_slot<kKeysPerWarpCopy>(p, w, table, tile_last * kBlockN);
  issue_kv_tile<T, kHeadDim>(p, w, tile_last * kBlockN, slot, base + L::kK, base + L::kV);
  cp_async_commit();
  if (num_tiles > 1)
    slot = prefill::lookup_slot<kKeysPerWarpCopy>(p, w, table, (tile_last - 1) * kBlockN);

  for (int it = 0; it < num_tiles; ++it) {
    const int tile_begin = (tile_last - it) * kBlockN;
    const uint32_t stage = it & 1;
    cp_async_wait<0>();
    sm90::fence_proxy_async();  // this thread's copies, visible to the wgmmas after the barrier
    __syncthreads();            // tile `it` complete; every warpgroup is done with the other stage
    if (it + 1 < num_tiles) {
      issue_kv_tile<T, kHeadDim>(p, w, tile_begin - kBlockN, slot,
                                 base + L::kK + (stage ^ 1) * L::kTileBytes,
                                 base + L::kV + (stage ^ 1) * L::kTileBytes);
    }
    cp_async_commit();
    if (it + 2 < num_tiles)
      slot = prefill::lookup_slot<kKeysPerWarpCopy>(p, w, table, tile_begin - 2 * kBlockN);
    if (!group_has_rows) continue;
    const bool masked = tile_begin + kBlockN > unmasked_end || tile_begin < unmasked_begin;
    fold_tile<T, kHeadDim>(p, w, q_rows, base + L::kK + stage * L::kTileBytes,
                           base + L::kV + stage * L::kTileBytes, first_row, tile_begin, masked, st);
  }
  if (group_has_rows) write_output<T, kHeadDim>(p, w, first_row, st);
#endif
}

}  // namespace engine::cuda::attention::prefill_sm90
