#pragma once
// Tensor-core paged attention for batches with prefill chunks (any batch whose max_query_len > 1;
// pure decode batches take paged_decode.cuh). FlashAttention-2 style, launcher in
// paged_attention.cu.
//
// One CTA (4 warps) per (sequence, query tile, kv head, head chunk). Its kBlockM = 128 rows are
// the q heads of one kv head's GQA group times the tile's new tokens, token-major (row r is token
// r / heads_per_cta, head r % heads_per_cta), so K/V are read once per group and never replicated.
// Each warp owns 32 rows (two m16 tiles): every K/V fragment it loads from shared memory feeds
// two MMAs, which halves the shared-memory traffic per MMA against 16 rows per warp (at 16 rows
// ldmatrix, not the tensor cores, would bound the kernel).
//
// K/V stream through shared memory in tiles of kBlockN = 64 keys, gathered through the block
// table with 16-byte cp.async into a 2-stage ring (tile t + 1 loads while tile t is computed, one
// barrier per tile), with any block_size: one lane per key looks up the key's cache slot a tile
// before its copy is issued and shuffles it to the lanes copying that key. Per tile each warp
// computes S = Q K^T (mma.sync m16n8k16, fp32 accumulation; Q fragments re-read from shared
// memory, as there are no registers left to hold them), masks it on tiles that cross the causal
// diagonal or the window's lower edge, updates the online softmax in registers (raw-score max,
// exp2 with the scale folded in log2 units) and adds P V, P rounded to the input dtype.
//
// Key tiles are visited from the diagonal down, so the first tile sets each row's max and later
// tiles rarely move it (the O rescale is skipped when no row of the warp moved). Query tiles are
// counted from each sequence's end and the grid is ordered by that rank, so the tiles with the
// most keys (every sequence's last) start first and short ones fill the tail.
//
// An fp8 cache (C = __nv_fp8_e4m3) lands in a 2-stage ring of raw fp8 tiles instead; each tile is
// widened (exactly) into one stage of T tiles that the MMAs read as usual, at the cost of a second
// barrier per tile. The k scale is folded into the softmax scale, the v scale into the output.
//
// NOTE: like the decode kernel it trusts the device metadata, and never reads a cache slot at or
// past seq_len (such keys are zero-filled in shared memory, so masked scores meet zeros, not NaN).

#include <math_constants.h>

#include <cstdint>

#include "attention/mma.cuh"
#include "attention/paged_attention.cuh"

namespace engine::cuda::attention::prefill {

constexpr int kThreads = 128;  // 4 warps
constexpr int kWarps = kThreads / 32;
constexpr int kRowsPerWarp = 32;                    // two m16 tiles
constexpr int kBlockM = kWarps * kRowsPerWarp;      // (token, head) rows per CTA
constexpr int kBlockN = 64;                         // keys per K/V tile
constexpr int kKeysPerWarpCopy = kBlockN / kWarps;  // keys whose copies one warp issues

// T: the compute dtype; C: the cache's (T, or __nv_fp8_e4m3).
template <typename T, typename C = T>
struct PrefillParams {
  T* out;                          // [T, Hq, D]
  const T* q;                      // [T, Hq, D]
  const C* k_cache;                // [num_blocks, block_size, Hk, D]
  const C* v_cache;                // [num_blocks, block_size, Hk, D]
  const int32_t* query_start_loc;  // [B + 1] prefix sums of query lengths
  const int32_t* seq_lens;         // [B] context length after this step
  const int32_t* block_table;      // [B, max_blocks_per_seq]
  int num_seqs, num_q_heads, num_kv_heads, block_size, max_blocks_per_seq;
  int heads_per_cta;     // q heads of a group one CTA carries (<= kBlockM)
  int num_head_chunks;   // ceil(group / heads_per_cta)
  int queries_per_tile;  // new tokens per CTA: kBlockM / heads_per_cta
  bool has_window;
  int window;        // <= 2^30, so position arithmetic cannot overflow
  float scale_log2;  // softmax scale * k scale * log2(e), > 0: the raw-score max is the scaled max
  float v_scale;     // the cache's v scale, applied to the output
};

template <typename T, int kHeadDim, int kStageCount = 2>
struct PrefillShared {
  // 16 bytes of padding per row: the 8 row addresses of an ldmatrix phase (and the 8 rows of an
  // output fragment store) fall in distinct banks.
  static constexpr int kStride = kHeadDim + 8;
  static constexpr int kRowBytes = kStride * int(sizeof(T));
  static constexpr int kStages = kStageCount;
  T q[kBlockM][kStride];  // the tile's Q rows; each warp's rows are reused for its output
  T k[kStages][kBlockN][kStride];
  T v[kStages][kBlockN][kStride];
};

// An fp8 cache's tiles as copied (unpadded: only the widening pass reads them, 16 bytes per
// thread, row by row), two stages.
template <int kHeadDim>
struct RawKvStages {
  uint8_t k[2][kBlockN][kHeadDim];
  uint8_t v[2][kBlockN][kHeadDim];
};

// The kernel's shared memory: two stages of T tiles for a cache in T; for an fp8 cache one stage
// of T tiles and the raw ring (at D = 128: 100 KB, against 102 KB in T; 2 CTAs per SM either way).
template <typename T, typename C, int kHeadDim>
struct PrefillSmem {
  PrefillShared<T, kHeadDim> tiles;
};
template <typename T, int kHeadDim>
struct PrefillSmem<T, __nv_fp8_e4m3, kHeadDim> {
  PrefillShared<T, kHeadDim, 1> tiles;
  alignas(16) RawKvStages<kHeadDim> raw;
};

// Registers and occupancy: at D = 128 a thread holds 128 fp32 of O and 64 of S, so 2 CTAs (8
// warps) per SM at up to 255 registers. D = 64 would fit 3 CTAs at 168 registers, but spilled
// there; it takes 229 unconstrained.
constexpr int kMinCtasPerSm = 2;

// Where one CTA works.
struct PrefillWork {
  int seq, kv_head, head_begin, num_heads;
  int token_begin;         // the tile's first token, in [0, T)
  int num_queries;         // new tokens in the tile
  int first_pos;           // position of the tile's first token
  int key_begin, key_end;  // [key_begin, key_end): every key some row of the tile sees
};

// False when this rank has no tile in the CTA's sequence. blockIdx.x = (rank, seq, kv head, head
// chunk), rank slowest; rank r covers the sequence's new tokens
// [num_new - (r + 1) * queries_per_tile, num_new - r * queries_per_tile), clipped at 0.
template <typename Params>
__device__ __forceinline__ bool plan_prefill(const Params& p, PrefillWork& w) {
  const int heads_per_seq = p.num_kv_heads * p.num_head_chunks;
  const int ctas_per_rank = p.num_seqs * heads_per_seq;
  const int rank = blockIdx.x / ctas_per_rank;
  const int rest = blockIdx.x % ctas_per_rank;
  w.seq = rest / heads_per_seq;
  w.kv_head = rest % heads_per_seq / p.num_head_chunks;
  const int chunk = rest % p.num_head_chunks;
  const int seq_token_begin = p.query_start_loc[w.seq];
  const int num_new = p.query_start_loc[w.seq + 1] - seq_token_begin;
  const int query_end = num_new - rank * p.queries_per_tile;
  if (query_end <= 0) return false;
  const int query_begin = max(0, query_end - p.queries_per_tile);
  w.num_queries = query_end - query_begin;
  w.token_begin = seq_token_begin + query_begin;
  const int context_before = p.seq_lens[w.seq] - num_new;
  w.first_pos = context_before + query_begin;
  const int group = p.num_q_heads / p.num_kv_heads;
  w.head_begin = w.kv_head * group + chunk * p.heads_per_cta;
  w.num_heads = min(p.heads_per_cta, group - chunk * p.heads_per_cta);
  w.key_begin = p.has_window ? max(0, w.first_pos - p.window + 1) : 0;
  w.key_end = context_before + query_end;  // the last token's position + 1
  return true;
}

// Calls copy(row, piece, src, valid) for each 16-byte piece of the tile's Q rows, spread over
// the CTA's kCtaThreads threads: src is where the piece starts in q. Rows past the tile's tokens or
// the chunk's heads are not valid (src is q itself; the copy zero-fills them).
template <typename T, int kHeadDim, int kCtaThreads, typename Params, typename Copy>
__device__ __forceinline__ void for_each_q_piece(const Params& p, const PrefillWork& w, Copy copy) {
  constexpr int kChunks = kHeadDim / 8;  // 16-byte pieces of a row
  for (int e = threadIdx.x; e < kBlockM * kChunks; e += kCtaThreads) {
    const int row = e / kChunks, piece = e % kChunks;
    const int token = row / p.heads_per_cta, head = row % p.heads_per_cta;
    const bool valid = token < w.num_queries && head < w.num_heads;
    const int64_t offset =
        valid
            ? ((int64_t(w.token_begin) + token) * p.num_q_heads + w.head_begin + head) * kHeadDim +
                  piece * 8
            : 0;
    copy(row, piece, p.q + offset, valid);
  }
}

// Copies the tile's Q rows into shared memory, zero-filling the rows that are not valid.
template <typename T, int kHeadDim, typename Params>
__device__ __forceinline__ void load_q(const Params& p, const PrefillWork& w,
                                       T (*q_s)[PrefillShared<T, kHeadDim>::kStride]) {
  for_each_q_piece<T, kHeadDim, kThreads>(p, w, [&](int row, int piece, const T* src, bool valid) {
    cp_async_16(&q_s[row][piece * 8], src, valid);
  });
}

// In lane i < kKeysPerWarp: the cache slot of key tile_begin + warp * kKeysPerWarp + i, or 0
// (never read) outside [key_begin, key_end).
template <int kKeysPerWarp, typename Params>
__device__ __forceinline__ int lookup_slot(const Params& p, const PrefillWork& w,
                                           const int32_t* table, int tile_begin) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int key = tile_begin + warp * kKeysPerWarp + lane;
  if (lane >= kKeysPerWarp || key < w.key_begin || key >= w.key_end) return 0;
  return table[key / p.block_size] * p.block_size + key % p.block_size;
}

// Starts the copy of keys [tile_begin, tile_begin + kBlockN) of the CTA's kv head into one
// stage. Warp w copies keys w * kKeysPerWarpCopy.. of the tile, one lane per 16 bytes of a key;
// `slot` is lookup_slot's result for this tile. Keys outside [key_begin, key_end) are zero-filled.
// C is the cache's type: T into the padded T tiles, or fp8 bytes into a raw stage (kDstStride:
// the destination's elements per row).
template <typename T, typename C, int kHeadDim, int kDstStride>
__device__ __forceinline__ void issue_kv_tile(const PrefillParams<T, C>& p, const PrefillWork& w,
                                              int tile_begin, int slot, C (*k_s)[kDstStride],
                                              C (*v_s)[kDstStride]) {
  constexpr int kElems = 16 / int(sizeof(C));  // per 16-byte piece
  constexpr int kChunks = kHeadDim / kElems;
  constexpr int kKeysPerPass = 32 / kChunks;
  static_assert(32 % kChunks == 0 && kKeysPerWarpCopy % kKeysPerPass == 0, "whole keys per pass");
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int piece = lane % kChunks;
  const int64_t slot_stride = int64_t(p.num_kv_heads) * kHeadDim;
  const int64_t head_offset = int64_t(w.kv_head) * kHeadDim + piece * kElems;
#pragma unroll
  for (int n = 0; n < kKeysPerWarpCopy / kKeysPerPass; ++n) {
    const int index = lane / kChunks + n * kKeysPerPass;  // key within the warp's share
    const int key_slot = __shfl_sync(0xffffffffu, slot, index);
    const int key_in_tile = warp * kKeysPerWarpCopy + index;
    const int key = tile_begin + key_in_tile;
    const bool valid = key >= w.key_begin && key < w.key_end;
    const int64_t offset = key_slot * slot_stride + head_offset;  // slot 0 when !valid
    cp_async_16(&k_s[key_in_tile][piece * kElems], p.k_cache + offset, valid);
    cp_async_16(&v_s[key_in_tile][piece * kElems], p.v_cache + offset, valid);
  }
}

// Widens one raw fp8 stage into the T tiles, 16 values per thread per step (exact: every e4m3
// value is a bf16 and a half). Zero-filled keys stay zero.
template <typename T, int kHeadDim>
__device__ __forceinline__ void widen_kv_tile(const uint8_t (*raw_k)[kHeadDim],
                                              const uint8_t (*raw_v)[kHeadDim],
                                              T (*k_s)[PrefillShared<T, kHeadDim>::kStride],
                                              T (*v_s)[PrefillShared<T, kHeadDim>::kStride]) {
  constexpr int kPiecesPerRow = kHeadDim / 16;
  for (int e = threadIdx.x; e < kBlockN * kPiecesPerRow; e += kThreads) {
    const int key = e / kPiecesPerRow, col = e % kPiecesPerRow * 16;
#pragma unroll
    for (int which = 0; which < 2; ++which) {
      const uint4 raw = *reinterpret_cast<const uint4*>(&(which ? raw_v : raw_k)[key][col]);
      T* dst = &(which ? v_s : k_s)[key][col];
      float x[16];
      widen8(make_uint2(raw.x, raw.y), *reinterpret_cast<float (*)[8]>(&x[0]));
      widen8(make_uint2(raw.z, raw.w), *reinterpret_cast<float (*)[8]>(&x[8]));
      uint4 lo, hi;
      lo.x = pack_pair<T>(x[0], x[1]);
      lo.y = pack_pair<T>(x[2], x[3]);
      lo.z = pack_pair<T>(x[4], x[5]);
      lo.w = pack_pair<T>(x[6], x[7]);
      hi.x = pack_pair<T>(x[8], x[9]);
      hi.y = pack_pair<T>(x[10], x[11]);
      hi.z = pack_pair<T>(x[12], x[13]);
      hi.w = pack_pair<T>(x[14], x[15]);
      reinterpret_cast<uint4*>(dst)[0] = lo;
      reinterpret_cast<uint4*>(dst)[1] = hi;
    }
  }
}

// One thread's share of its warp's 32 rows: rows i = 2 * mi + half, row warp * 32 + mi * 16 +
// half * 8 + lane / 4, columns 2 (lane % 4)..+1 of every 8-wide fragment.
template <int kHeadDim>
struct RowState {
  float o[2][kHeadDim / 8][4];  // unnormalized output, mma C layout
  float max_score[4];           // running max of raw scores (scale not applied), quad-uniform
  float sum_exp[4];             // this lane's share of the running sum
};

// S = Q K^T for one tile: s[mi][n] is the C fragment of rows mi * 16.., keys n * 8...
template <typename T, int kHeadDim>
__device__ __forceinline__ void compute_scores(uint32_t q_address, uint32_t k_address,
                                               float (&s)[2][kBlockN / 8][4]) {
  constexpr int kRowBytes = PrefillShared<T, kHeadDim>::kRowBytes;
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int n = 0; n < kBlockN / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[mi][n][e] = 0.0f;
#pragma unroll
  for (int kk = 0; kk < kHeadDim / 16; ++kk) {
    uint32_t a[2][4];
    ldmatrix_x4(a[0], q_address + kk * 32);
    ldmatrix_x4(a[1], q_address + 16 * kRowBytes + kk * 32);
#pragma unroll
    for (int np = 0; np < kBlockN / 16; ++np) {
      uint32_t b[4];  // keys np * 16.. : b[0], b[1] for n = 2 np, b[2], b[3] for n = 2 np + 1
      ldmatrix_x4(b, k_address + np * 16 * kRowBytes + kk * 32);
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {
        mma_16x8x16<T>(s[mi][2 * np], a[mi], b[0], b[1]);
        mma_16x8x16<T>(s[mi][2 * np + 1], a[mi], b[2], b[3]);
      }
    }
  }
}

// Sets the scores of keys a row must not see to -inf: keys past its position, and with a window
// keys at or before position - window. Rows' positions are recomputed here (only boundary tiles
// need them) rather than held in registers across the loop.
template <typename Params>
__device__ __forceinline__ void mask_scores(const Params& p, const PrefillWork& w, int tile_begin,
                                            float (&s)[2][kBlockN / 8][4]) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = warp * kRowsPerWarp + mi * 16 + half * 8 + lane / 4;
      const int pos = w.first_pos + row / p.heads_per_cta;
      const int last = pos - tile_begin;  // last visible column
      const int first = p.has_window ? last - p.window + 1 : -1;
#pragma unroll
      for (int n = 0; n < kBlockN / 8; ++n)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int col = n * 8 + (lane % 4) * 2 + e;
          if (col > last || col < first) s[mi][n][2 * half + e] = -CUDART_INF_F;
        }
    }
}

// Online softmax over one tile: updates each row's max and sum, rescales O when a max moved, and
// turns the scores into probabilities (in place).
template <int kHeadDim>
__device__ __forceinline__ void softmax_tile(float scale_log2, float (&s)[2][kBlockN / 8][4],
                                             RowState<kHeadDim>& st) {
  float correction[4];
  bool moved = false;
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int i = 2 * mi + half;
      float row_max = st.max_score[i];
#pragma unroll
      for (int n = 0; n < kBlockN / 8; ++n)
        row_max = fmaxf(row_max, fmaxf(s[mi][n][2 * half], s[mi][n][2 * half + 1]));
      // The row's 4 lanes of a quad hold its 64 columns.
      row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 1));
      row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 2));
      // A row that has seen no visible key yet keeps max -inf; subtracting 0 instead keeps its
      // probabilities 0 rather than NaN.
      const float base = row_max == -CUDART_INF_F ? 0.0f : row_max * scale_log2;
      correction[i] = fast_exp2(st.max_score[i] * scale_log2 - base);  // exactly 1 if unmoved
      moved |= row_max != st.max_score[i];
      st.max_score[i] = row_max;
      float sum = 0.0f;
#pragma unroll
      for (int n = 0; n < kBlockN / 8; ++n)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = s[mi][n][2 * half + e];
          x = fast_exp2(fmaf(x, scale_log2, -base));
          sum += x;
        }
      st.sum_exp[i] = st.sum_exp[i] * correction[i] + sum;
    }
  if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int d = 0; d < kHeadDim / 8; ++d)
#pragma unroll
        for (int e = 0; e < 4; ++e) st.o[mi][d][e] *= correction[2 * mi + e / 2];
  }
}

// O += P V for one tile, P (in s) rounded to T: the C fragments of key columns 16 j.. and
// 16 j + 8.. are exactly the A fragment of keys 16 j..16 j + 15.
template <typename T, int kHeadDim>
__device__ __forceinline__ void accumulate_pv(uint32_t v_address,
                                              const float (&s)[2][kBlockN / 8][4],
                                              RowState<kHeadDim>& st) {
  constexpr int kRowBytes = PrefillShared<T, kHeadDim>::kRowBytes;
#pragma unroll
  for (int j = 0; j < kBlockN / 16; ++j) {
    uint32_t a[2][4];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
      a[mi][0] = pack_pair<T>(s[mi][2 * j][0], s[mi][2 * j][1]);
      a[mi][1] = pack_pair<T>(s[mi][2 * j][2], s[mi][2 * j][3]);
      a[mi][2] = pack_pair<T>(s[mi][2 * j + 1][0], s[mi][2 * j + 1][1]);
      a[mi][3] = pack_pair<T>(s[mi][2 * j + 1][2], s[mi][2 * j + 1][3]);
    }
#pragma unroll
    for (int dp = 0; dp < kHeadDim / 16; ++dp) {
      uint32_t b[4];  // dims dp * 16..: b[0], b[1] for d = 2 dp, b[2], b[3] for d = 2 dp + 1
      ldmatrix_x4_trans(b, v_address + j * 16 * kRowBytes + dp * 32);
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {
        mma_16x8x16<T>(st.o[mi][2 * dp], a[mi], b[0], b[1]);
        mma_16x8x16<T>(st.o[mi][2 * dp + 1], a[mi], b[2], b[3]);
      }
    }
  }
}

// Normalizes the warp's rows, stages them (as T) in the warp's own Q rows, and writes the valid
// ones out with 16-byte stores.
template <typename T, int kHeadDim, typename Params>
__device__ __forceinline__ void write_output(const Params& p, const PrefillWork& w,
                                             RowState<kHeadDim>& st,
                                             T (*q_s)[PrefillShared<T, kHeadDim>::kStride]) {
  constexpr int kChunks = kHeadDim / 8;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float inv_sum[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float sum = st.sum_exp[i];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    inv_sum[i] = sum > 0.0f ? p.v_scale / sum : 0.0f;  // 0 only in rows that are not written
  }
  __syncwarp();  // every lane's ldmatrix reads of these Q rows are done
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = warp * kRowsPerWarp + mi * 16 + half * 8 + lane / 4;
#pragma unroll
      for (int d = 0; d < kHeadDim / 8; ++d) {
        const uint32_t pair = pack_pair<T>(st.o[mi][d][2 * half] * inv_sum[2 * mi + half],
                                           st.o[mi][d][2 * half + 1] * inv_sum[2 * mi + half]);
        *reinterpret_cast<uint32_t*>(&q_s[row][d * 8 + (lane % 4) * 2]) = pair;
      }
    }
  __syncwarp();
#pragma unroll
  for (int n = 0; n < kChunks; ++n) {
    const int index = n * 32 + lane;
    const int row = warp * kRowsPerWarp + index / kChunks, piece = index % kChunks;
    const int token = row / p.heads_per_cta, head = row % p.heads_per_cta;
    if (token < w.num_queries && head < w.num_heads) {
      const int64_t offset =
          ((int64_t(w.token_begin) + token) * p.num_q_heads + w.head_begin + head) * kHeadDim +
          piece * 8;
      *reinterpret_cast<uint4*>(p.out + offset) =
          *reinterpret_cast<const uint4*>(&q_s[row][piece * 8]);
    }
  }
}

template <typename T, typename C, int kHeadDim>
__global__ void __launch_bounds__(kThreads, kMinCtasPerSm)
    paged_prefill_kernel(const PrefillParams<T, C> p) {
  using Smem = PrefillSmem<T, C, kHeadDim>;
  using Shared = decltype(Smem::tiles);
  constexpr bool kFp8 = sizeof(C) == 1;
  static_assert(kHeadDim % 16 == 0 && 32 % (kHeadDim / 8) == 0, "a warp copies whole keys");
  extern __shared__ __align__(128) unsigned char smem_raw[];
  Smem& smem = *reinterpret_cast<Smem*>(smem_raw);
  Shared& sh = smem.tiles;

  PrefillWork w;
  if (!plan_prefill(p, w)) return;  // uniform across the CTA
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int32_t* table = p.block_table + int64_t(w.seq) * p.max_blocks_per_seq;

  RowState<kHeadDim> st;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    st.max_score[i] = -CUDART_INF_F;
    st.sum_exp[i] = 0.0f;
  }
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int d = 0; d < kHeadDim / 8; ++d)
#pragma unroll
      for (int e = 0; e < 4; ++e) st.o[mi][d][e] = 0.0f;
  // A warp whose rows hold no token of the tile (a short tile) only helps with the copies.
  const bool warp_has_rows = warp * kRowsPerWarp / p.heads_per_cta < w.num_queries;

  // Per-lane ldmatrix row addresses (see mma.cuh): Q as the A operand, K as B of S (rows = keys),
  // V as B of O through .trans (rows = keys).
  const uint32_t q_address =
      shared_address(&sh.q[warp * kRowsPerWarp + lane % 16][(lane / 16) * 8]);
  const uint32_t k_address =
      shared_address(&sh.k[0][lane % 8 + (lane / 16) * 8][(lane / 8) % 2 * 8]);
  const uint32_t v_address =
      shared_address(&sh.v[0][lane % 8 + (lane / 8) % 2 * 8][(lane / 16) * 8]);
  constexpr uint32_t kStageBytes = kBlockN * Shared::kRowBytes;  // one stage of K (or V)

  const int tile_first = w.key_begin / kBlockN, tile_last = (w.key_end - 1) / kBlockN;
  const int num_tiles = tile_last - tile_first + 1;
  // Tiles no row needs masked: wholly at or before the tile's first position, and with a window
  // wholly after the last position's window start.
  const int unmasked_end = w.first_pos + 1;  // tile_begin + kBlockN <= this
  const int unmasked_begin =
      p.has_window ? w.key_end - p.window : 0;  // tile_begin >= this (last pos - window + 1)

  // Where tile `it`'s copies land: the T tiles' stage it % 2, or an fp8 cache's raw stage it % 2.
  const auto issue = [&](int tile_begin, int slot, int stage) {
    if constexpr (kFp8) {
      issue_kv_tile<T, C, kHeadDim, kHeadDim>(p, w, tile_begin, slot,
                                              reinterpret_cast<C(*)[kHeadDim]>(smem.raw.k[stage]),
                                              reinterpret_cast<C(*)[kHeadDim]>(smem.raw.v[stage]));
    } else {
      issue_kv_tile<T, C, kHeadDim, Shared::kStride>(p, w, tile_begin, slot, sh.k[stage],
                                                     sh.v[stage]);
    }
  };
  load_q<T, kHeadDim>(p, w, sh.q);
  int slot = lookup_slot<kKeysPerWarpCopy>(p, w, table, tile_last * kBlockN);
  issue(tile_last * kBlockN, slot, 0);
  cp_async_commit();
  if (num_tiles > 1) slot = lookup_slot<kKeysPerWarpCopy>(p, w, table, (tile_last - 1) * kBlockN);

  for (int it = 0; it < num_tiles; ++it) {
    const int tile_begin = (tile_last - it) * kBlockN;
    const int copy_stage = it & 1;
    cp_async_wait<0>();
    __syncthreads();  // tile `it` visible to all warps; all are done with the other stage
    if (it + 1 < num_tiles) issue(tile_begin - kBlockN, slot, copy_stage ^ 1);
    cp_async_commit();
    if (it + 2 < num_tiles)
      slot = lookup_slot<kKeysPerWarpCopy>(p, w, table, tile_begin - 2 * kBlockN);
    // The MMAs read T stage it % 2, or an fp8 cache's single T stage, filled here from the raw
    // stage that just landed: every warp is past the barrier above, so done reading the last
    // tile's T stage (and widening the raw stage the copy just issued overwrites).
    int stage = copy_stage;
    if constexpr (kFp8) {
      widen_kv_tile<T, kHeadDim>(smem.raw.k[copy_stage], smem.raw.v[copy_stage], sh.k[0], sh.v[0]);
      __syncthreads();
      stage = 0;
    }
    if (!warp_has_rows) continue;
    float s[2][kBlockN / 8][4];
    compute_scores<T, kHeadDim>(q_address, k_address + stage * kStageBytes, s);
    if (tile_begin + kBlockN > unmasked_end || tile_begin < unmasked_begin)
      mask_scores(p, w, tile_begin, s);
    softmax_tile<kHeadDim>(p.scale_log2, s, st);
    accumulate_pv<T, kHeadDim>(v_address + stage * kStageBytes, s, st);
  }
  if (warp_has_rows) write_output<T, kHeadDim>(p, w, st, sh.q);
}

}  // namespace engine::cuda::attention::prefill
