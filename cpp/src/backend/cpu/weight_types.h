#pragma once
// Storage types of weights the CPU kernels widen to fp32 as they read them, and the loads that
// do the widening. Distinct structs (not bare uint16_t) so templates dispatch on the format.

#include <bit>
#include <cstdint>

#include "backend/tensor.h"

#if defined(__F16C__) || defined(__AVX512F__)
#include <immintrin.h>
#endif
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define EMBER_CPU_AVX512 1
// GCC 12 reports its own intrinsics' deliberately undefined vectors (_mm512_undefined_*) as
// uninitialized once they are inlined into our kernels; the warning is about GCC's headers.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace engine::cpu {

struct Bf16Weight {
  uint16_t bits;
};
struct Fp16Weight {
  uint16_t bits;
};

inline float weight_to_float(float w) { return w; }
// Inline (not tensor.h's bf16_to_float) so widening loops vectorize.
inline float weight_to_float(Bf16Weight w) {
  return std::bit_cast<float>(static_cast<uint32_t>(w.bits) << 16);
}
inline float weight_to_float(Fp16Weight w) {
#ifdef __F16C__
  return _cvtsh_ss(w.bits);
#else
  return fp16_to_float(w.bits);
#endif
}

// Converts n weights to fp32. Used when packing, so it is not on the decode hot path.
template <typename W>
inline void widen_weights(float* dst /*[n]*/, const W* src /*[n]*/, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = weight_to_float(src[i]);
}

// Calls fn(tag) with a null pointer of the weight storage type of dtype.
template <typename Fn>
inline void dispatch_weight_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kF32:
      fn(static_cast<const float*>(nullptr));
      return;
    case DType::kBF16:
      fn(static_cast<const Bf16Weight*>(nullptr));
      return;
    case DType::kF16:
      fn(static_cast<const Fp16Weight*>(nullptr));
      return;
    default:
      break;
  }
}

#ifdef EMBER_CPU_AVX512
// Sixteen consecutive weights as fp32 lanes; bf16 widening is a 16-bit shift.
inline __m512 load16(const float* w) { return _mm512_loadu_ps(w); }
inline __m512 load16(const Bf16Weight* w) {
  __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline __m512 load16(const Fp16Weight* w) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)));
}

// The first lanes selected by mask; the other lanes are zero.
inline __m512 load16_masked(const float* w, __mmask16 mask) {
  return _mm512_maskz_loadu_ps(mask, w);
}
inline __m512 load16_masked(const Bf16Weight* w, __mmask16 mask) {
  __m256i h = _mm256_maskz_loadu_epi16(mask, w);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline __m512 load16_masked(const Fp16Weight* w, __mmask16 mask) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, w));
}

// Sum of the 16 lanes. Full-width shuffles only: GCC 12's _mm512_reduce_add_ps trips
// -Wuninitialized through its half-width extracts.
inline float sum_lanes(__m512 v) {
  v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(2, 3, 0, 1)));
  v = _mm512_add_ps(v, _mm512_permute_ps(v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = _mm512_add_ps(v, _mm512_permute_ps(v, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm512_cvtss_f32(v);
}

inline __mmask16 first_lanes(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1u);
}
#endif

}  // namespace engine::cpu
