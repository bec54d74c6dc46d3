#pragma once
// Decode-only paged attention (every sequence has at most one new token; launcher in
// paged_attention.cu). A decode reads each K/V element once and its arithmetic is light, so the
// kernel is about keeping enough bytes in flight: each warp copies its own chunks of K/V with
// 16-byte cp.async into a private 3-stage ring (two chunks in flight while it computes one, no
// registers held and no CTA barrier), and every lane reads back only its own 16 bytes.
//
// One CTA per (sequence, kv head, head chunk, kv split) carries up to kHeads query heads of the
// kv head's GQA group, so K/V are read once per group. Each warp streams its own chunks of keys
// (warp w takes chunks w, w + kWarps, ...): kLanesPerKey = D / 8 lanes hold one key's row, 8
// dims each, so one copy instruction covers kKeysPerPass whole rows; a chunk is kPasses of them.
// Scores reduce across the key's lanes with shuffles; each warp keeps its own online softmax (max,
// sum, out) in fp32, and the warps' states merge at the end.
//
// An fp8 cache (C = __nv_fp8_e4m3) keeps the lane layout: each lane copies its 8 values' 8 bytes
// (8-byte cp.async) and widens them to fp32; the k scale is folded into q, the v scale into the
// output.
//
// NOTE: like the prefill kernel it trusts the device metadata, and never reads a cache slot
// at or past seq_len.

#include "attention/paged_attention.cuh"

namespace engine::cuda::attention::decode {

constexpr int kThreads = 128;  // 4 warps
constexpr int kWarps = kThreads / 32;
constexpr int kMinCtasPerSm = 4;  // caps registers at 128 per thread
// 3 chunk stages per warp: 2 in flight while one is computed. 4 KB each x 3 x 4 warps = 48 KB
// per CTA (the static limit), 192 KB per SM at 4 CTAs.
constexpr int kStages = 3;

template <int kHeadDim, int kHeads>
struct Layout {
  // 4 passes x 2 rows x 256 B (K and V, D = 128) = 4 KB per chunk; 2 chunks in flight per warp,
  // 128 KB per SM at 16 warps. 4 passes with 4 heads spilled when the data sat in registers.
  static constexpr int kPasses = 4;
  static constexpr int kLanesPerKey = kHeadDim / 8;  // 16 bytes of a key's row per lane
  static constexpr int kKeysPerPass = 32 / kLanesPerKey;
  static constexpr int kKeysPerChunk = kKeysPerPass * kPasses;
  // At D = 128 and 4 heads a chunk's 16 partial scores per lane match the key's 16 lanes, so a
  // reduce-scatter (8 + 4 + 2 + 1 shuffles, each lane ending with one whole score) replaces the
  // butterfly (4 x 16 shuffles); the probabilities are gathered back with 16 more.
  static constexpr bool kScatter = kLanesPerKey == 16 && kPasses * kHeads == 16;
};

template <typename T>
__device__ __forceinline__ void unpack8(const uint4& raw, float (&x)[8]) {
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const float2 pair = Element<T>::to_float2(words[e]);
    x[2 * e] = pair.x;
    x[2 * e + 1] = pair.y;
  }
}
// An fp8 cache's 8 values.
template <typename T>
__device__ __forceinline__ void unpack8(const uint2& raw, float (&x)[8]) {
  widen8(raw, x);
}

// One CTA's heads, token and key range.
struct DecodeWork {
  int token, head_begin, num_heads, kv_head, split;
  int key_begin, key_end;  // context positions [key_begin, key_end) this CTA reads
};

// False when the sequence has no new token this step.
template <int kHeads, typename Params>
__device__ __forceinline__ bool plan_decode(const Params& p, DecodeWork& w) {
  const int seq = blockIdx.x;
  w.token = p.query_start_loc[seq];
  if (p.query_start_loc[seq + 1] == w.token) return false;
  w.kv_head = blockIdx.y / p.num_head_chunks;
  const int chunk = blockIdx.y % p.num_head_chunks;
  const int group = p.num_q_heads / p.num_kv_heads;
  w.head_begin = w.kv_head * group + chunk * kHeads;
  w.num_heads = min(kHeads, group - chunk * kHeads);
  w.split = blockIdx.z;
  const int seq_len = p.seq_lens[seq];
  const int pos = seq_len - 1;  // the new token's position
  const int split_begin = w.split * p.keys_per_split;
  w.key_begin = max(p.has_window ? max(0, pos - p.window + 1) : 0, split_begin);
  // The last split takes every key left, whatever max_seq_len the host planned with.
  w.key_end = w.split == static_cast<int>(gridDim.z) - 1
                  ? seq_len
                  : min(seq_len, split_begin + p.keys_per_split);
  return true;
}

// Per-warp online-softmax state: lane owns dims [sub * 8, sub * 8 + 8) of every head and the
// keys of its key group (lane / kLanesPerKey).
template <int kHeads>
struct DecodeState {
  float q[kHeads][8];       // pre-scaled into log2 units
  float acc[kHeads][8];     // unnormalized output, this key group's keys only
  float max_score[kHeads];  // running max, warp-uniform
  float sum_exp[kHeads];    // this key group's share of the running sum (butterfly path)
  float own_sum;            // scatter path: running sum of this lane's own (pass, head) scores
};

// One chunk's K and V pieces, laid out [pass][lane]: each lane reads back exactly the bytes its
// own cp.async wrote, so the cp.async group wait alone orders them (no barrier). Word: uint4 (16
// bytes of a 16-bit cache) or uint2 (8 bytes of an fp8 one).
template <int kPasses, typename Word>
struct alignas(16) ChunkStage {
  Word k[kPasses][32];
  Word v[kPasses][32];
};

// Starts the copy of one chunk of kKeysPerChunk keys starting at chunk_begin into `stage`; keys
// at or past key_end are zero-filled, never read. slot holds, in lane i < kKeysPerChunk, the
// cache slot of key chunk_begin + i.
template <typename T, typename C, int kHeadDim, int kHeads>
__device__ __forceinline__ void issue_chunk(
    const PagedAttentionParams<T, C>& p, const DecodeWork& w, int chunk_begin, int slot,
    ChunkStage<Layout<kHeadDim, kHeads>::kPasses, typename CacheWord<C>::type>& stage) {
  using L = Layout<kHeadDim, kHeads>;
  const int lane = threadIdx.x % 32, key_group = lane / L::kLanesPerKey;
  const int sub = lane % L::kLanesPerKey;
  const int64_t slot_stride = int64_t(p.num_kv_heads) * kHeadDim;
  const int64_t head_offset = int64_t(w.kv_head) * kHeadDim + sub * 8;
#pragma unroll
  for (int n = 0; n < L::kPasses; ++n) {
    const int index = n * L::kKeysPerPass + key_group;
    const int key_slot = __shfl_sync(0xffffffffu, slot, index);
    const bool valid = chunk_begin + index < w.key_end;
    const int64_t offset = key_slot * slot_stride + head_offset;  // slot 0 when !valid
    if constexpr (sizeof(C) == 1) {
      cp_async_8(&stage.k[n][lane], p.k_cache + offset, valid);
      cp_async_8(&stage.v[n][lane], p.v_cache + offset, valid);
    } else {
      cp_async_16(&stage.k[n][lane], p.k_cache + offset, valid);
      cp_async_16(&stage.v[n][lane], p.v_cache + offset, valid);
    }
  }
}

// One reduce-scatter step over lanes `offset` = kCount / 2 apart: the lane whose `offset` bit is
// set keeps the upper half of the values (plus its partner's), the other the lower half.
template <int kCount>
__device__ __forceinline__ void scatter_step(const float (&in)[kCount], float (&out)[kCount / 2],
                                             int sub) {
  constexpr int kHalf = kCount / 2;
  const bool upper = sub & kHalf;
#pragma unroll
  for (int i = 0; i < kHalf; ++i) {
    const float keep = upper ? in[i + kHalf] : in[i];
    const float send = upper ? in[i] : in[i + kHalf];
    out[i] = keep + __shfl_xor_sync(0xffffffffu, send, kHalf);
  }
}

// Scatter path of fold_chunk (D = 128, 4 heads, 4 passes of 2 keys): reduces the 16 partial
// scores over the key's 16 lanes so that lane sub = lane % 16 ends with the whole score of pass
// sub / 4, head sub % 4; updates the running max (warp-uniform per head) and this lane's own sum;
// rescales acc when a max moved; gathers every (pass, head) probability of the lane's key group.
template <int kHeads>
__device__ __forceinline__ void scattered_softmax(const DecodeWork& w, int chunk_begin,
                                                  float (&score)[4][kHeads],
                                                  float (&prob)[4][kHeads],
                                                  DecodeState<kHeads>& st) {
  static_assert(kHeads == 4, "16 scores over 16 lanes");
  const int lane = threadIdx.x % 32, sub = lane % 16, key_group = lane / 16;
  float all[16], half[8], quarter[4], pair[2], one[1];
#pragma unroll
  for (int i = 0; i < 16; ++i) all[i] = score[i / 4][i % 4];
  scatter_step(all, half, sub);
  scatter_step(half, quarter, sub);
  scatter_step(quarter, pair, sub);
  scatter_step(pair, one, sub);
  const int own_pass = sub / 4, own_head = sub % 4;
  const bool valid = chunk_begin + own_pass * 2 + key_group < w.key_end;
  const float own_score = valid ? one[0] : -CUDART_INF_F;
  // Lanes of one head: sub bits 2, 3 (pass) and lane bit 4 (key group).
  float head_max = fmaxf(own_score, __shfl_xor_sync(0xffffffffu, own_score, 4));
  head_max = fmaxf(head_max, __shfl_xor_sync(0xffffffffu, head_max, 8));
  head_max = fmaxf(head_max, __shfl_xor_sync(0xffffffffu, head_max, 16));
  float correction[kHeads], own_max = 0.0f, own_correction = 0.0f;
  bool moved = false;
#pragma unroll
  for (int h = 0; h < kHeads; ++h) {
    // Finite: the chunk's first key is visible. The old max may be -inf: correction 0.
    const float new_max = fmaxf(st.max_score[h], __shfl_sync(0xffffffffu, head_max, h));
    moved |= new_max != st.max_score[h];
    correction[h] = exp2f(st.max_score[h] - new_max);
    st.max_score[h] = new_max;
    if (h == own_head) {
      own_max = new_max;
      own_correction = correction[h];
    }
  }
  const float own_prob = exp2f(own_score - own_max);  // 0 for a key past key_end
  st.own_sum = st.own_sum * own_correction + own_prob;
  if (moved) {  // warp-uniform: after the first chunks the max rarely moves
#pragma unroll
    for (int h = 0; h < kHeads; ++h)
#pragma unroll
      for (int d = 0; d < 8; ++d) st.acc[h][d] *= correction[h];
  }
#pragma unroll
  for (int n = 0; n < 4; ++n)
#pragma unroll
    for (int h = 0; h < kHeads; ++h)
      prob[n][h] = __shfl_sync(0xffffffffu, own_prob, key_group * 16 + n * 4 + h);
}

// Folds the chunk starting at chunk_begin (< key_end), already in `stage`, into the state.
template <typename T, typename C, int kHeadDim, int kHeads>
__device__ __forceinline__ void fold_chunk(
    const DecodeWork& w, int chunk_begin,
    const ChunkStage<Layout<kHeadDim, kHeads>::kPasses, typename CacheWord<C>::type>& stage,
    DecodeState<kHeads>& st) {
  using L = Layout<kHeadDim, kHeads>;
  const int lane = threadIdx.x % 32, key_group = lane / L::kLanesPerKey;
  typename CacheWord<C>::type k_raw[L::kPasses], v_raw[L::kPasses];
  bool valid[L::kPasses];
#pragma unroll
  for (int n = 0; n < L::kPasses; ++n) {
    valid[n] = chunk_begin + n * L::kKeysPerPass + key_group < w.key_end;
    k_raw[n] = stage.k[n][lane];
    v_raw[n] = stage.v[n][lane];
  }
  float score[L::kPasses][kHeads];
#pragma unroll
  for (int n = 0; n < L::kPasses; ++n) {
    float k[8];
    unpack8<T>(k_raw[n], k);
#pragma unroll
    for (int h = 0; h < kHeads; ++h) {
      // Two chains of 4 so the FMA latency overlaps within a head too.
      const float a = st.q[h][0] * k[0] + st.q[h][1] * k[1] + st.q[h][2] * k[2] + st.q[h][3] * k[3];
      const float b = st.q[h][4] * k[4] + st.q[h][5] * k[5] + st.q[h][6] * k[6] + st.q[h][7] * k[7];
      score[n][h] = a + b;
    }
  }
  float prob[L::kPasses][kHeads];
  if constexpr (L::kScatter) {
    scattered_softmax<kHeads>(w, chunk_begin, score, prob, st);
  } else {
#pragma unroll
    for (int offset = L::kLanesPerKey / 2; offset > 0; offset /= 2)
#pragma unroll
      for (int n = 0; n < L::kPasses; ++n)
#pragma unroll
        for (int h = 0; h < kHeads; ++h)
          score[n][h] += __shfl_xor_sync(0xffffffffu, score[n][h], offset);
#pragma unroll
    for (int h = 0; h < kHeads; ++h) {
      float chunk_max = -CUDART_INF_F;
#pragma unroll
      for (int n = 0; n < L::kPasses; ++n)
        chunk_max = fmaxf(chunk_max, valid[n] ? score[n][h] : -CUDART_INF_F);
#pragma unroll
      for (int offset = L::kLanesPerKey; offset < 32; offset *= 2)
        chunk_max = fmaxf(chunk_max, __shfl_xor_sync(0xffffffffu, chunk_max, offset));
      // Finite: the chunk's first key is visible. The old max may be -inf: correction 0.
      const float new_max = fmaxf(st.max_score[h], chunk_max);
      const float correction = exp2f(st.max_score[h] - new_max);
      st.max_score[h] = new_max;
      float sum = st.sum_exp[h] * correction;
#pragma unroll
      for (int n = 0; n < L::kPasses; ++n) {
        prob[n][h] = valid[n] ? exp2f(score[n][h] - new_max) : 0.0f;
        sum += prob[n][h];
      }
      st.sum_exp[h] = sum;
#pragma unroll
      for (int d = 0; d < 8; ++d) st.acc[h][d] *= correction;
    }
  }
#pragma unroll
  for (int n = 0; n < L::kPasses; ++n) {
    float v[8];
    unpack8<T>(v_raw[n], v);
#pragma unroll
    for (int h = 0; h < kHeads; ++h)
#pragma unroll
      for (int d = 0; d < 8; ++d) st.acc[h][d] += prob[n][h] * v[d];
  }
}

// Cache slot of `key`, or 0 (never read) at or past key_end.
template <typename Params>
__device__ __forceinline__ int slot_of(const Params& p, const int32_t* table, int key,
                                       int key_end) {
  return key < key_end ? table[key / p.block_size] * p.block_size + key % p.block_size : 0;
}

template <typename T, typename C, int kHeadDim, int kHeads>
__global__ void __launch_bounds__(kThreads, kMinCtasPerSm)
    paged_decode_kernel(const PagedAttentionParams<T, C> p) {
  using L = Layout<kHeadDim, kHeads>;
  using Stage = ChunkStage<L::kPasses, typename CacheWord<C>::type>;
  // The stages (kStages per warp) and, after the loop, the cross-warp reduction share memory.
  struct Reduction {
    float max_s[kWarps][kHeads], sum_s[kWarps][kHeads];
    float acc_s[kWarps][kHeads][kHeadDim];
  };
  constexpr size_t kStageBytes = sizeof(Stage) * kStages * kWarps;
  constexpr size_t kBytes = kStageBytes > sizeof(Reduction) ? kStageBytes : sizeof(Reduction);
  __shared__ alignas(16) unsigned char smem[kBytes];
  Stage(*stages)[kStages] = reinterpret_cast<Stage(*)[kStages]>(smem);
  Reduction& red = *reinterpret_cast<Reduction*>(smem);

  DecodeWork w;
  if (!plan_decode<kHeads>(p, w)) return;  // uniform across the CTA
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int sub = lane % L::kLanesPerKey;

  DecodeState<kHeads> st;
  st.own_sum = 0.0f;
#pragma unroll
  for (int h = 0; h < kHeads; ++h) {
    st.max_score[h] = -CUDART_INF_F;
    st.sum_exp[h] = 0.0f;
    float q[8] = {};
    if (h < w.num_heads) {
      const int64_t row = int64_t(w.token) * p.num_q_heads + w.head_begin + h;
      unpack8<T>(*reinterpret_cast<const uint4*>(p.q + row * kHeadDim + sub * 8), q);
    }
#pragma unroll
    for (int d = 0; d < 8; ++d) {
      st.q[h][d] = q[d] * p.scale_log2;
      st.acc[h][d] = 0.0f;
    }
  }

  // cp.async keeps kStages - 1 chunks in flight per warp while it computes one, without holding
  // registers. Each lane looks up one key's slot a chunk before its copy is issued, so the
  // block-table read overlaps a chunk's compute instead of delaying the copy.
  const int32_t* table = p.block_table + int64_t(blockIdx.x) * p.max_blocks_per_seq;
  constexpr int kStride = kWarps * L::kKeysPerChunk;
  const int first_chunk = w.key_begin + warp * L::kKeysPerChunk;
  auto lane_slot = [&](int chunk_begin) {
    return lane < L::kKeysPerChunk ? slot_of(p, table, chunk_begin + lane, w.key_end) : 0;
  };
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    const int chunk_begin = first_chunk + s * kStride;
    const int slot = lane_slot(chunk_begin);
    if (chunk_begin < w.key_end)
      issue_chunk<T, C, kHeadDim, kHeads>(p, w, chunk_begin, slot, stages[warp][s]);
    cp_async_commit();
  }
  int next_slot = lane_slot(first_chunk + (kStages - 1) * kStride);
  int stage = 0;
  for (int chunk_begin = first_chunk; chunk_begin < w.key_end; chunk_begin += kStride) {
    const int ahead = chunk_begin + (kStages - 1) * kStride;
    const int ahead_stage =
        stage == 0 ? kStages - 1 : stage - 1;  // (stage + kStages - 1) % kStages
    if (ahead < w.key_end) {
      issue_chunk<T, C, kHeadDim, kHeads>(p, w, ahead, next_slot, stages[warp][ahead_stage]);
    }
    cp_async_commit();  // possibly empty, so that "all but the newest kStages - 1" is this chunk
    next_slot = lane_slot(ahead + kStride);
    cp_async_wait<kStages - 1>();
    fold_chunk<T, C, kHeadDim, kHeads>(w, chunk_begin, stages[warp][stage], st);
    stage = stage == kStages - 1 ? 0 : stage + 1;
  }
  cp_async_wait<0>();
  __syncthreads();  // every warp is done with its stages before the reduction reuses them

  // Merge the key groups of the warp, then the warps through shared memory.
#pragma unroll
  for (int offset = L::kLanesPerKey; offset < 32; offset *= 2)
#pragma unroll
    for (int h = 0; h < kHeads; ++h) {
      if constexpr (!L::kScatter)
        st.sum_exp[h] += __shfl_xor_sync(0xffffffffu, st.sum_exp[h], offset);
#pragma unroll
      for (int d = 0; d < 8; ++d)
        st.acc[h][d] += __shfl_xor_sync(0xffffffffu, st.acc[h][d], offset);
    }
  if constexpr (L::kScatter) {
    // Head h's sum: the own sums of the 8 lanes with lane % 4 == h (bits 2, 3 and 4 vary).
    float sum = st.own_sum;
    sum += __shfl_xor_sync(0xffffffffu, sum, 4);
    sum += __shfl_xor_sync(0xffffffffu, sum, 8);
    sum += __shfl_xor_sync(0xffffffffu, sum, 16);
#pragma unroll
    for (int h = 0; h < kHeads; ++h) st.sum_exp[h] = __shfl_sync(0xffffffffu, sum, h);
  }
  if (lane < L::kLanesPerKey) {
#pragma unroll
    for (int h = 0; h < kHeads; ++h) {
#pragma unroll
      for (int d = 0; d < 8; ++d) red.acc_s[warp][h][sub * 8 + d] = st.acc[h][d];
      if (lane == 0) {
        red.max_s[warp][h] = st.max_score[h];
        red.sum_s[warp][h] = st.sum_exp[h];
      }
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < kHeads * kHeadDim; e += kThreads) {
    const int h = e / kHeadDim, d = e % kHeadDim;
    if (h >= w.num_heads) continue;
    float max_score = -CUDART_INF_F;
#pragma unroll
    for (int i = 0; i < kWarps; ++i) max_score = fmaxf(max_score, red.max_s[i][h]);
    float sum = 0.0f, out = 0.0f;
#pragma unroll
    for (int i = 0; i < kWarps; ++i) {
      // A warp (or a whole split) may have seen no key: max -inf, weight 0.
      const float weight =
          red.max_s[i][h] == -CUDART_INF_F ? 0.0f : exp2f(red.max_s[i][h] - max_score);
      sum += weight * red.sum_s[i][h];
      out += weight * red.acc_s[i][h][d];
    }
    out *= p.v_scale;  // cached V is stored value * v_scale; the merge of splits is linear
    const int64_t head = w.head_begin + h;
    if (p.partial_out == nullptr) {
      // The new token sees its own key, so sum > 0.
      p.out[(int64_t(w.token) * p.num_q_heads + head) * kHeadDim + d] =
          Element<T>::from_float(out / sum);
    } else {
      const int64_t index = (int64_t(w.split) * p.num_tokens + w.token) * p.num_q_heads + head;
      p.partial_out[index * kHeadDim + d] = out;
      if (d == 0) {
        p.partial_max[index] = max_score;
        p.partial_sum[index] = sum;
      }
    }
  }
}

}  // namespace engine::cuda::attention::decode
