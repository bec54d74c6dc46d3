#pragma once
// Kernels of the GPU sampler (launcher in sampler.cu): one CTA of kThreads per row. The CPU
// Sampler (cpp/src/runtime/sampler.cpp) is the spec; comments name the CPU step each part
// mirrors. Weights and token ids live in a per-row workspace, never in shared memory, so any
// vocabulary size works.

#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>

namespace engine::cuda::sampling {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kNumCuts = 6;  // as the CPU's cut_stats: 1/8, 2^-6, ..., 2^-15, then the floor
constexpr uint64_t kNoLimit = ~0ull;

enum RowFlags : int { kGreedy = 1, kAnyFilter = 2, kNeedsCopy = 4 };

// One row's settings, prepared on the host (sampler.cu) and uploaded once per call.
struct RowArgs {
  double u;               // engine::uniform_draw(seed, output index)
  float inv_temperature;  // 1.0f / temperature, as the CPU computes it
  float top_p;            // 1 is off
  float min_floor;        // max(min_p, smallest denormal): the lowest weight that can be drawn
  float repetition_penalty, frequency_penalty, presence_penalty;
  int top_k;                     // 0 when off (the CPU's top_k_on is false)
  int num_logprobs;              // -1 when no logprobs are asked
  int flags;                     // RowFlags
  int masked_begin, masked_end;  // ranges in the uploaded token-id buffer
  int prompt_begin, prompt_end;
  int output_begin, output_end;
  int bias_begin, bias_end;  // logit_bias as (token id, bias bits) pairs: two ints per entry
  int top_offset;            // first of this row's num_logprobs slots in the top-entry arrays
};

struct RowResult {
  int token_id;
  int rank;
  float logprob;
  int num_top;  // entries written at RowArgs::top_offset
};

struct Workspace {
  float* work;     // [rows, vocab] penalised logits, then weights
  int* marks;      // [rows, vocab] all zero between calls (repetition marks, output counts)
  uint64_t* keys;  // [rows, vocab] candidate keys, or tile sums for the id-order draw
};

// ---- block-wide reductions ------------------------------------------------------------------

template <typename T, typename Op>
__device__ T warp_reduce(T v, Op op) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Every thread gets the result. `scratch` holds kWarps values; the trailing barrier lets the
// caller reuse it at once.
template <typename T, typename Op>
__device__ T block_reduce(T v, Op op, T* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = warp_reduce(v, op);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T total = scratch[0];
  for (int w = 1; w < kWarps; ++w) total = op(total, scratch[w]);
  __syncthreads();
  return total;
}

struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
template <typename T>
struct SumOp {
  __device__ T operator()(T a, T b) const { return a + b; }
};

// The CPU's argmax: the largest value, ties to the smaller id (NaN is never larger). Packed
// into one 64-bit key (orderable value bits high, inverted id low) so one max reduction works.
// -0 and +0 get one key: they compare equal on the CPU, so they tie.
__device__ inline uint32_t orderable(float v) {
  const uint32_t b = v == 0.0f ? 0u : __float_as_uint(v);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

struct MaxU64 {
  __device__ uint64_t operator()(uint64_t a, uint64_t b) const { return a > b ? a : b; }
};

__device__ inline int block_argmax(const float* x, int vocab_size, uint64_t* scratch) {
  uint64_t best = 0;  // below every real key; an all-NaN row returns id 0 as the CPU does
  for (int i = threadIdx.x; i < vocab_size; i += kThreads) {
    const float v = x[i];
    if (v != v) continue;
    const uint64_t key = (uint64_t(orderable(v)) << 32) | uint32_t(~uint32_t(i));
    best = key > best ? key : best;
  }
  best = block_reduce(best, MaxU64{}, scratch);
  return best == 0 ? 0 : int(~uint32_t(best & 0xffffffffu));
}

// ---- masks and penalties (the CPU's apply_masks_and_penalties) ------------------------------

// x is a copy of the row's logits. marks is zero on entry and on return. The CPU's order:
// masks, logit_bias, then the penalties.
__device__ inline void apply_masks_and_penalties(float* x, int* marks, const RowArgs& a,
                                                 const int* tokens) {
  for (int j = a.masked_begin + threadIdx.x; j < a.masked_end; j += kThreads) {
    x[tokens[j]] = -INFINITY;
  }
  __syncthreads();
  if (a.bias_begin < a.bias_end) {
    // The ids are distinct (a map on the host), so no two threads add to one logit.
    for (int j = a.bias_begin + 2 * threadIdx.x; j < a.bias_end; j += 2 * kThreads) {
      x[tokens[j]] += __int_as_float(tokens[j + 1]);
    }
    __syncthreads();
  }
  if (a.repetition_penalty != 1.0f) {
    // Each distinct id of prompt and output once: the first thread to mark it applies it.
    for (int j = a.prompt_begin + threadIdx.x; j < a.output_end; j += kThreads) {
      if (j >= a.prompt_end && j < a.output_begin) continue;
      const int id = tokens[j];
      if (atomicExch(&marks[id], 1) != 0) continue;
      const float v = x[id];
      x[id] = v > 0.0f ? v / a.repetition_penalty : v * a.repetition_penalty;
    }
    __syncthreads();
    for (int j = a.prompt_begin + threadIdx.x; j < a.output_end; j += kThreads) {
      if (j < a.prompt_end || j >= a.output_begin) marks[tokens[j]] = 0;
    }
    __syncthreads();
  }
  if (a.frequency_penalty != 0.0f || a.presence_penalty != 0.0f) {
    for (int j = a.output_begin + threadIdx.x; j < a.output_end; j += kThreads) {
      atomicAdd(&marks[tokens[j]], 1);
    }
    __syncthreads();
    // The thread that takes the count (and zeroes it) applies the penalty once, with the full
    // count, as the CPU does for the first occurrence.
    for (int j = a.output_begin + threadIdx.x; j < a.output_end; j += kThreads) {
      const int id = tokens[j];
      const int count = atomicExch(&marks[id], 0);
      if (count == 0) continue;
      x[id] -= a.frequency_penalty * float(count) + a.presence_penalty;
    }
    __syncthreads();
  }
}

// ---- weights ---------------------------------------------------------------------------------

// The CPU's exp_nonpositive, operation for operation, so that weights agree to the last bit
// wherever both compilers contract the same multiply-adds.
__device__ inline float exp_nonpositive(float x) {
  const float clamped = fmaxf(x, -87.0f);
  const float n = floorf(clamped * 1.44269504f + 0.5f);
  float r = fmaf(n, -0.693145752f, clamped);
  r = fmaf(n, -1.42860677e-6f, r);
  float p = 1.0f / 5040.0f;
  p = fmaf(p, r, 1.0f / 720.0f);
  p = fmaf(p, r, 1.0f / 120.0f);
  p = fmaf(p, r, 1.0f / 24.0f);
  p = fmaf(p, r, 1.0f / 6.0f);
  p = fmaf(p, r, 0.5f);
  p = fmaf(p, r, 1.0f);
  p = fmaf(p, r, 1.0f);
  const float scale = __int_as_float(int32_t(n + 127.0f) << 23);
  return x < -87.0f ? 0.0f : p * scale;
}

// Masses are summed as 64-bit fixed point (weight * 2^shift, shift chosen so the whole row
// fits), which is exact and independent of the summation order: the CPU's double sums differ
// from it by far less than the gap between neighbouring cumulative sums.
__device__ inline uint64_t to_fixed(float w, double scale) {
  return __double2ull_rz(double(w) * scale);
}

// Candidate order as one ascending 64-bit key: larger weight first, then the smaller id.
__device__ inline uint64_t weight_key(float w, int id) {
  return (uint64_t(~__float_as_uint(w)) << 32) | uint32_t(id);
}
__device__ inline float key_weight(uint64_t key) { return __uint_as_float(~uint32_t(key >> 32)); }
__device__ inline int key_id(uint64_t key) { return int(uint32_t(key & 0xffffffffu)); }

// The raw-logit order for top-N logprobs: larger logit first, then the smaller id.
__device__ inline uint64_t logit_key(float v, int id) {
  return (uint64_t(~orderable(v)) << 32) | uint32_t(id);
}

// ---- radix selection over keys ---------------------------------------------------------------

struct SelectShared {
  int count[256];
  unsigned long long mass[256];
  unsigned long long last_key[256];
  uint64_t prefix;
  int before_count;
  uint64_t before_mass;
  int chosen;  // bucket, or -1 when the criterion is never reached
};

// The smallest prefix (in key order) of the keys <= limit that reaches the criterion: k
// elements (kByMass false), or mass >= target (> when strict). On success `key` is its last
// element; the CPU's select_mass_prefix and nth_element find the same boundary.
struct Selection {
  bool found;
  uint64_t key;
  int count;
  uint64_t mass;
};

// Eight passes of 8-bit digits at most, most significant first; a pass ends the search as soon
// as the chosen bucket holds one key. Only exact weight ties reach the id digits. kWithMass
// sums the prefix's mass (weight keys only), which a count criterion needs for what follows.
template <bool kByMass, bool kWithMass, typename KeyAt>
__device__ Selection radix_select(KeyAt key_at, int n, uint64_t limit, int k, uint64_t target,
                                  bool strict, double scale, SelectShared& s) {
  const int lane = threadIdx.x % 32;
  if (threadIdx.x == 0) {
    s.prefix = 0;
    s.before_count = 0;
    s.before_mass = 0;
  }
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += kThreads) {
      s.count[b] = 0;
      s.mass[b] = 0;
    }
    __syncthreads();
    const uint64_t prefix = s.prefix;
    for (int i = threadIdx.x; i < n; i += kThreads) {
      const uint64_t key = key_at(i);
      if (key > limit) continue;
      if (shift < 56 && (key >> (shift + 8)) != (prefix >> (shift + 8))) continue;
      const int b = int((key >> shift) & 0xff);
      atomicAdd(&s.count[b], 1);
      if constexpr (kWithMass) atomicAdd(&s.mass[b], to_fixed(key_weight(key), scale));
      s.last_key[b] = key;  // read only when the bucket holds this one key
    }
    __syncthreads();
    if (threadIdx.x < 32) {
      // Lane l owns buckets [8l, 8l + 8): exclusive scan of the lanes' totals, then a walk.
      int lane_count = 0;
      uint64_t lane_mass = 0;
      for (int b = lane * 8; b < lane * 8 + 8; ++b) {
        lane_count += s.count[b];
        lane_mass += s.mass[b];
      }
      int incl_count = lane_count;
      uint64_t incl_mass = lane_mass;
      for (int offset = 1; offset < 32; offset *= 2) {
        const int c = __shfl_up_sync(0xffffffffu, incl_count, offset);
        const uint64_t m = __shfl_up_sync(0xffffffffu, incl_mass, offset);
        if (lane >= offset) {
          incl_count += c;
          incl_mass += m;
        }
      }
      int cum_count = s.before_count + incl_count - lane_count;
      uint64_t cum_mass = s.before_mass + incl_mass - lane_mass;
      int chosen = -1, chosen_count = 0;
      uint64_t chosen_mass = 0;
      for (int b = lane * 8; b < lane * 8 + 8 && chosen < 0; ++b) {
        const int c = s.count[b];
        const uint64_t m = s.mass[b];
        const bool reached = kByMass ? (strict ? cum_mass + m > target : cum_mass + m >= target)
                                     : cum_count + c >= k;
        if (c > 0 && reached) {
          chosen = b;
          chosen_count = cum_count;
          chosen_mass = cum_mass;
        }
        cum_count += c;
        cum_mass += m;
      }
      const unsigned hits = __ballot_sync(0xffffffffu, chosen >= 0);
      if (hits == 0 && lane == 0) s.chosen = -1;
      if (hits != 0 && lane == __ffs(hits) - 1) {
        s.chosen = chosen;
        s.before_count = chosen_count;
        s.before_mass = chosen_mass;
        s.prefix = prefix | (uint64_t(chosen) << shift);
      }
    }
    __syncthreads();
    const int chosen = s.chosen;
    if (chosen < 0) return {false, 0, 0, 0};
    if (s.count[chosen] == 1 || shift == 0) {
      const uint64_t key = s.count[chosen] == 1 ? s.last_key[chosen] : s.prefix;
      Selection out{true, key, s.before_count + 1,
                    kWithMass ? s.before_mass + to_fixed(key_weight(key), scale) : 0};
      __syncthreads();  // s is reused by the next selection
      return out;
    }
    __syncthreads();
  }
  return {false, 0, 0, 0};  // not reached: keys are distinct
}

// ---- the random draw (the CPU's sample_random) -----------------------------------------------

struct CutShared {
  int count[kNumCuts][kThreads];  // per thread, by the first (highest) cut-off the weight passes
  unsigned long long mass[kNumCuts][kThreads];
};

union RowShared {
  SelectShared select;
  CutShared cuts;
};

struct Scratch {
  float f[kWarps];
  double d[kWarps];
  uint64_t u[kWarps];
  int i[kWarps];
  int counter;
  int found;
};

// Inverse CDF in token-id order: the first id whose cumulative weight exceeds target. Tile
// sums (1024 weights each) go to `tile_sums`; warp 0 then walks tiles and one tile's weights.
__device__ inline int draw_in_id_order(const float* w, int vocab_size, uint64_t target,
                                       double scale, uint64_t* tile_sums, Scratch& sc) {
  constexpr int kTile = 1024;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int num_tiles = (vocab_size + kTile - 1) / kTile;
  for (int t = warp; t < num_tiles; t += kWarps) {
    uint64_t sum = 0;
    for (int i = t * kTile + lane; i < min(vocab_size, (t + 1) * kTile); i += 32) {
      sum += to_fixed(w[i], scale);
    }
    sum = warp_reduce(sum, SumOp<uint64_t>{});
    if (lane == 0) tile_sums[t] = sum;
  }
  if (threadIdx.x == 0) sc.found = -1;
  __syncthreads();
  if (warp == 0) {
    uint64_t before = 0;
    int tile = -1;
    for (int t0 = 0; t0 < num_tiles && tile < 0; t0 += 32) {
      const uint64_t v = t0 + lane < num_tiles ? tile_sums[t0 + lane] : 0;
      uint64_t incl = v;
      for (int offset = 1; offset < 32; offset *= 2) {
        const uint64_t o = __shfl_up_sync(0xffffffffu, incl, offset);
        if (lane >= offset) incl += o;
      }
      const unsigned hits = __ballot_sync(0xffffffffu, before + incl > target);
      if (hits != 0) {
        const int first = __ffs(hits) - 1;
        tile = t0 + first;
        before += __shfl_sync(0xffffffffu, incl - v, first);
      } else {
        before += __shfl_sync(0xffffffffu, incl, 31);
      }
    }
    for (int i0 = tile * kTile; tile >= 0 && i0 < min(vocab_size, (tile + 1) * kTile); i0 += 32) {
      const int i = i0 + lane;
      const uint64_t v = i < vocab_size ? to_fixed(w[i], scale) : 0;
      uint64_t incl = v;
      for (int offset = 1; offset < 32; offset *= 2) {
        const uint64_t o = __shfl_up_sync(0xffffffffu, incl, offset);
        if (lane >= offset) incl += o;
      }
      const unsigned hits = __ballot_sync(0xffffffffu, before + incl > target && v > 0);
      if (hits != 0) {
        if (lane == 0) sc.found = i0 + __ffs(hits) - 1;
        break;
      }
      before += __shfl_sync(0xffffffffu, incl, 31);
    }
  }
  __syncthreads();
  const int found = sc.found;
  if (found >= 0) return found;
  // Rounding left the target unreached: the last token with a positive weight, as the CPU.
  int last = 0;
  for (int i = threadIdx.x; i < vocab_size; i += kThreads) last = w[i] > 0.0f ? i : last;
  return block_reduce(last, [](int a, int b) { return max(a, b); }, sc.i);
}

// Counts and masses of the weights at or above each cut-off (the CPU's cut_stats), then the
// cut-off to gather at (its choose_cut).
__device__ inline int choose_cut(const float* w, int vocab_size, const RowArgs& a, bool top_k_on,
                                 const float* cut, double scale, int* counts, uint64_t* masses,
                                 CutShared& cs) {
#pragma unroll
  for (int t = 0; t < kNumCuts; ++t) {
    cs.count[t][threadIdx.x] = 0;
    cs.mass[t][threadIdx.x] = 0;
  }
  for (int i = threadIdx.x; i < vocab_size; i += kThreads) {
    const float v = w[i];
    if (!(v >= cut[kNumCuts - 1])) continue;
    int bin = kNumCuts - 1;
#pragma unroll
    for (int t = kNumCuts - 2; t >= 0; --t) bin = v >= cut[t] ? t : bin;
    cs.count[bin][threadIdx.x] += 1;
    cs.mass[bin][threadIdx.x] += to_fixed(v, scale);
  }
  __syncthreads();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int bin_count = 0;
  uint64_t bin_mass = 0;
  if (warp < kNumCuts) {
    for (int j = lane; j < kThreads; j += 32) {
      bin_count += cs.count[warp][j];
      bin_mass += cs.mass[warp][j];
    }
    bin_count = warp_reduce(bin_count, SumOp<int>{});
    bin_mass = warp_reduce(bin_mass, SumOp<uint64_t>{});
  }
  __syncthreads();
  if (warp < kNumCuts && lane == 0) {
    cs.count[warp][0] = bin_count;
    cs.mass[warp][0] = bin_mass;
  }
  __syncthreads();
  int c = 0;
  uint64_t m = 0;
  for (int t = 0; t < kNumCuts; ++t) {  // a weight in bin b passes the cut-offs b..last
    c += cs.count[t][0];
    m += cs.mass[t][0];
    counts[t] = c;
    masses[t] = m;
  }
  __syncthreads();
  const bool top_p_on = a.top_p < 1.0f;
  for (int t = 0; t + 1 < kNumCuts && (top_k_on || top_p_on); ++t) {
    if (top_k_on ? counts[t] >= a.top_k
                 : double(masses[t]) >= a.top_p * double(masses[kNumCuts - 1])) {
      return t;
    }
  }
  return kNumCuts - 1;
}

// Writes the keys of the weights >= cut to keys (any order); returns how many.
__device__ inline int gather_candidates(const float* w, int vocab_size, float cut, uint64_t* keys,
                                        Scratch& sc) {
  if (threadIdx.x == 0) sc.counter = 0;
  __syncthreads();
  const int lane = threadIdx.x % 32;
  for (int i0 = 0; i0 < vocab_size; i0 += kThreads) {
    const int i = i0 + threadIdx.x;
    const float v = i < vocab_size ? w[i] : 0.0f;
    const bool take = i < vocab_size && v >= cut;
    const unsigned ballot = __ballot_sync(0xffffffffu, take);
    if (ballot == 0) continue;
    int base = 0;
    if (lane == 0) base = atomicAdd(&sc.counter, __popc(ballot));
    base = __shfl_sync(0xffffffffu, base, 0);
    if (take) keys[base + __popc(ballot & ((1u << lane) - 1))] = weight_key(v, i);
  }
  __syncthreads();
  return sc.counter;
}

// min_p, top_k and top_p, then the draw in candidate order: each filter keeps a prefix of the
// key order, as in the CPU's filter_candidates.
__device__ inline int draw_filtered(const float* w, int vocab_size, const RowArgs& a, double scale,
                                    uint64_t* keys, RowShared& rs, Scratch& sc) {
  const bool top_k_on = a.top_k > 0;
  float cut[kNumCuts];
#pragma unroll
  for (int t = 0; t < kNumCuts; ++t) {
    cut[t] = t + 1 < kNumCuts ? fmaxf(ldexpf(1.0f, -3 * (t + 1)), a.min_floor) : a.min_floor;
  }
  int counts[kNumCuts];
  uint64_t masses[kNumCuts];
  const int chosen = choose_cut(w, vocab_size, a, top_k_on, cut, scale, counts, masses, rs.cuts);
  const int n = gather_candidates(w, vocab_size, cut[chosen], keys, sc);
  auto key_at = [keys](int i) { return keys[i]; };

  uint64_t limit = kNoLimit;
  int kept = counts[kNumCuts - 1];
  uint64_t kept_mass = masses[kNumCuts - 1];
  if (top_k_on && kept > a.top_k) {
    const Selection s =
        radix_select<false, true>(key_at, n, limit, a.top_k, 0, false, scale, rs.select);
    limit = s.key;
    kept = s.count;
    kept_mass = s.mass;  // exact in fixed point: the CPU's sum over the kept top-k
  }
  if (a.top_p < 1.0f) {
    const uint64_t target = __double2ull_rz(double(a.top_p) * double(kept_mass));
    const Selection s =
        radix_select<true, true>(key_at, n, limit, 0, target, false, scale, rs.select);
    if (s.found) {
      limit = s.key;
      kept = s.count;
      kept_mass = s.mass;
    }
  }
  const uint64_t target = __double2ull_rz(a.u * double(kept_mass));
  Selection s = radix_select<true, true>(key_at, n, limit, 0, target, true, scale, rs.select);
  if (!s.found) {  // rounding left the target unreached: the last kept candidate
    s = radix_select<false, true>(key_at, n, limit, min(kept, n), 0, false, scale, rs.select);
  }
  return s.found ? key_id(s.key) : 0;
}

__device__ inline int sample_random(float* x, const float* src, int vocab_size, const RowArgs& a,
                                    double scale, uint64_t* keys, RowShared& rs, Scratch& sc) {
  float row_max = -INFINITY;
  for (int i = threadIdx.x; i < vocab_size; i += kThreads) {
    row_max = fmaxf(row_max, __fmul_rn(src[i], a.inv_temperature));
  }
  row_max = block_reduce(row_max, MaxOp{}, sc.f);
  if (row_max == -INFINITY) return 0;  // every token masked: nothing can be drawn
  const bool any_filter = (a.flags & kAnyFilter) != 0;
  uint64_t total = 0;
  for (int i = threadIdx.x; i < vocab_size; i += kThreads) {
    // The CPU rounds the scaled logit before subtracting: no multiply-add here.
    const float w = exp_nonpositive(__fmul_rn(src[i], a.inv_temperature) - row_max);
    x[i] = w;
    if (!any_filter) total += to_fixed(w, scale);
  }
  __syncthreads();
  if (any_filter) return draw_filtered(x, vocab_size, a, scale, keys, rs, sc);
  total = block_reduce(total, SumOp<uint64_t>{}, sc.u);
  return draw_in_id_order(x, vocab_size, __double2ull_rz(a.u * double(total)), scale, keys, sc);
}

// ---- logprobs (the CPU's compute_logprobs, on the raw logits) --------------------------------

__device__ inline void compute_logprobs(const float* raw, int vocab_size, int token_id, int num_top,
                                        RowResult& out, int* top_ids, float* top_logprobs,
                                        SelectShared& ss, Scratch& sc) {
  float row_max = -INFINITY;
  for (int i = threadIdx.x; i < vocab_size; i += kThreads) row_max = fmaxf(row_max, raw[i]);
  row_max = block_reduce(row_max, MaxOp{}, sc.f);
  const float sampled = raw[token_id];
  double sum_exp = 0.0;
  int num_larger = 0;
  for (int i = threadIdx.x; i < vocab_size; i += kThreads) {
    const float v = raw[i];
    sum_exp += exp_nonpositive(v - row_max);
    num_larger += v > sampled ? 1 : 0;
  }
  sum_exp = block_reduce(sum_exp, SumOp<double>{}, sc.d);
  num_larger = block_reduce(num_larger, SumOp<int>{}, sc.i);
  const double log_norm = double(row_max) + log(sum_exp);

  // Top-N: the N-th key in logit order bounds the set; NaN never enters, as on the CPU.
  auto key_at = [raw](int i) {
    const float v = raw[i];
    return v != v ? kNoLimit : logit_key(v, i);
  };
  uint64_t bound = kNoLimit - 1;
  if (num_top > 0) {
    const Selection s =
        radix_select<false, false>(key_at, vocab_size, kNoLimit - 1, num_top, 0, false, 1.0, ss);
    if (s.found) bound = s.key;
  }
  if (threadIdx.x == 0) sc.counter = 0;
  __syncthreads();
  for (int i = threadIdx.x; i < vocab_size && num_top > 0; i += kThreads) {
    if (key_at(i) > bound) continue;
    const int slot = atomicAdd(&sc.counter, 1);
    top_ids[slot] = i;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    const int num = sc.counter;
    for (int j = 1; j < num; ++j) {  // insertion sort of at most kMaxLogprobs ids by key
      const int id = top_ids[j];
      int pos = j;
      for (; pos > 0 && key_at(top_ids[pos - 1]) > key_at(id); --pos)
        top_ids[pos] = top_ids[pos - 1];
      top_ids[pos] = id;
    }
    for (int j = 0; j < num; ++j) top_logprobs[j] = float(double(raw[top_ids[j]]) - log_norm);
    out.token_id = token_id;
    out.rank = 1 + num_larger;
    out.logprob = float(double(sampled) - log_norm);
    out.num_top = num;
  }
  __syncthreads();
}

// ---- kernels ---------------------------------------------------------------------------------

__global__ void __launch_bounds__(kThreads) sample_rows_kernel(
    const float* __restrict__ logits,  // [num_rows, vocab_size]
    int vocab_size,
    const RowArgs* __restrict__ args,  // [num_rows]
    const int* __restrict__ tokens,    // masked, prompt and output ids, bias pairs of every row
    Workspace ws,
    double scale,                     // 2^shift of the fixed-point masses
    RowResult* __restrict__ results,  // [num_rows]
    int* __restrict__ top_ids,        // [sum of num_logprobs]
    float* __restrict__ top_logprobs) {
  __shared__ RowShared rs;
  __shared__ Scratch sc;
  const int row = blockIdx.x;
  const RowArgs a = args[row];
  const size_t offset = size_t(row) * vocab_size;
  const float* raw = logits + offset;
  float* x = ws.work + offset;
  const float* src = raw;
  if (a.flags & kNeedsCopy) {
    for (int i = threadIdx.x; i < vocab_size; i += kThreads) x[i] = raw[i];
    __syncthreads();
    apply_masks_and_penalties(x, ws.marks + offset, a, tokens);
    src = x;
  }
  const int token = (a.flags & kGreedy)
                        ? block_argmax(src, vocab_size, sc.u)
                        : sample_random(x, src, vocab_size, a, scale, ws.keys + offset, rs, sc);
  if (a.num_logprobs >= 0) {
    compute_logprobs(raw, vocab_size, token, a.num_logprobs, results[row], top_ids + a.top_offset,
                     top_logprobs + a.top_offset, rs.select, sc);
  } else if (threadIdx.x == 0) {
    results[row] = {token, 0, 0.0f, 0};
  }
}

// One prompt row to score (the CPU's score_tokens), prepared on the host.
struct ScoreArgs {
  int token_id;    // the prompt token the row's logits predict
  int num_top;     // top entries to write: at most SamplingParams::kMaxLogprobs
  int top_offset;  // the first of them in the top-entry arrays
};

// Prompt logprobs: row r's raw logits scored for args[r].token_id, one CTA per row.
__global__ void __launch_bounds__(kThreads)
    score_rows_kernel(const float* __restrict__ logits,  // [num_rows, vocab_size]
                      int vocab_size,
                      const ScoreArgs* __restrict__ args,  // [num_rows]
                      RowResult* __restrict__ results,     // [num_rows]
                      int* __restrict__ top_ids,           // [sum of num_top]
                      float* __restrict__ top_logprobs) {  // [sum of num_top]
  __shared__ SelectShared ss;
  __shared__ Scratch sc;
  const ScoreArgs a = args[blockIdx.x];
  compute_logprobs(logits + size_t(blockIdx.x) * vocab_size, vocab_size, a.token_id, a.num_top,
                   results[blockIdx.x], top_ids + a.top_offset, top_logprobs + a.top_offset, ss,
                   sc);
}

// The greedy fast path: every row greedy, without masks, logit_bias, penalties or logprobs.
__global__ void __launch_bounds__(kThreads)
    argmax_rows_kernel(const float* __restrict__ logits,  // [num_rows, vocab_size]
                       int vocab_size,
                       RowResult* __restrict__ results) {  // [num_rows]
  __shared__ uint64_t scratch[kWarps];
  const int token = block_argmax(logits + size_t(blockIdx.x) * vocab_size, vocab_size, scratch);
  if (threadIdx.x == 0) results[blockIdx.x] = {token, 0, 0.0f, 0};
}

// input_ids[pending[p][0]] = results[pending[p][1]].token_id: the ids a launch sampled become
// inputs of the step enqueued after it, without a round trip through the host. A row outside
// the launch is a broken invariant of the caller: the kernel traps rather than read junk.
__global__ void write_sampled_ids_kernel(const RowResult* __restrict__ results,  // [num_rows]
                                         int num_rows,
                                         const int32_t* __restrict__ pending,  // [P, 2]
                                         int num_pending,
                                         int32_t* __restrict__ input_ids,  // [T]
                                         int num_inputs) {                 // T
  const int p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= num_pending) return;
  const int row = pending[2 * p + 1];
  const int index = pending[2 * p];
  if (row < 0 || row >= num_rows || index < 0 || index >= num_inputs) __trap();
  input_ids[index] = results[row].token_id;
}

}  // namespace engine::cuda::sampling
