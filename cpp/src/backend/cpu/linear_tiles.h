#pragma once
// Register-blocked AVX-512 tile of linear (out = x @ w^T). It reads weights straight from their
// [N, K] rows in any storage type and uses each loaded weight vector for all MT token rows, so
// decode is bound by weight bytes. For prefill it also reaches ~80% of FMA peak (measured 245
// GFLOP/s on 2 cores), better than a packed outer-product tile once packing is counted, so it is
// the only tile.

#include "backend/cpu/weight_types.h"

#ifdef EMBER_CPU_AVX512

namespace engine::cpu {

// How far ahead in its weight rows a tile asks for cache lines. Hardware prefetch alone left
// decode at ~60% of the bandwidth reached with this; measured 1, 4, 8, 16, 32, 64 KiB on the
// 30-layer SmolLM2 decode-step benchmark: gains plateau from 8 KiB (36 -> 25 ms per step on one
// thread). Prefetches past the end of an allocation are harmless (they never fault).
inline constexpr int64_t kPrefetchBytes = 16 * 1024;

// out[i, j] = sum_k x[i, k] * w[j, k] (+ bias[j]) for i < MT, j < NT.
template <int MT, int NT, typename W>
inline void dot_tile(float* out /*[MT, ldo]*/, int64_t ldo, const float* x /*[MT, ldx]*/,
                     int64_t ldx, const W* w /*[NT, ldw]*/, int64_t ldw, int64_t num_k,
                     const float* bias /*[NT] or null*/) {
  __m512 acc[MT][NT];
#pragma GCC unroll 8
  for (int i = 0; i < MT; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NT; ++j) acc[i][j] = _mm512_setzero_ps();

  int64_t k = 0;
  for (; k + 16 <= num_k; k += 16) {
    __m512 wv[NT];
#pragma GCC unroll 8
    for (int j = 0; j < NT; ++j) {
      wv[j] = load16(w + j * ldw + k);
      _mm_prefetch(reinterpret_cast<const char*>(w + j * ldw + k) + kPrefetchBytes, _MM_HINT_T0);
    }
#pragma GCC unroll 8
    for (int i = 0; i < MT; ++i) {
      __m512 xv = _mm512_loadu_ps(x + i * ldx + k);
#pragma GCC unroll 8
      for (int j = 0; j < NT; ++j) acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
  if (k < num_k) {
    __mmask16 mask = first_lanes(num_k - k);
    __m512 wv[NT];
#pragma GCC unroll 8
    for (int j = 0; j < NT; ++j) wv[j] = load16_masked(w + j * ldw + k, mask);
#pragma GCC unroll 8
    for (int i = 0; i < MT; ++i) {
      __m512 xv = _mm512_maskz_loadu_ps(mask, x + i * ldx + k);
#pragma GCC unroll 8
      for (int j = 0; j < NT; ++j) acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MT; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NT; ++j) out[i * ldo + j] = sum_lanes(acc[i][j]) + (bias ? bias[j] : 0.0f);
}

}  // namespace engine::cpu

#endif  // EMBER_CPU_AVX512
