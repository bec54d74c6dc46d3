#pragma once
// Packs of N consecutive elements moved by one memory access, and fp32 conversions of the
// 16-bit compute dtypes. Memory-bound kernels move 16 bytes per thread per access (8 bf16/fp16
// values): the widest load a thread can issue, and what keeps HBM busy with few threads.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

namespace engine::cuda {

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// Elements per 16-byte access.
template <typename T>
inline constexpr int kPackElems = 16 / sizeof(T);

inline bool is_aligned_16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename T, int N>
__device__ __forceinline__ Pack<T, N> load_pack(const T* p /*[N], aligned to the pack*/) {
  return *reinterpret_cast<const Pack<T, N>*>(p);
}

template <typename T, int N>
__device__ __forceinline__ void store_pack(T* p /*[N], aligned to the pack*/,
                                           const Pack<T, N>& pack) {
  *reinterpret_cast<Pack<T, N>*>(p) = pack;
}

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_fp8_e4m3 x) { return static_cast<float>(x); }

// Round to nearest even, as the host's float_to_bf16 / float_to_fp16 do.
template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
// fp8 e4m3 (the KV cache's compact type): nearest even, saturating at +-448 (__NV_SATFINITE), as
// the host's float_to_fp8_e4m3.
template <>
__device__ __forceinline__ __nv_fp8_e4m3 from_float<__nv_fp8_e4m3>(float x) {
  __nv_fp8_e4m3 out;
  out.__x = __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3);
  return out;
}

// Loads N elements of any float dtype widened to fp32. fp32 goes in 16-byte pieces when N is a
// multiple of 4 (a Pack<float, 8> would demand 32-byte alignment, more than a view guarantees).
template <typename Src, int N>
__device__ __forceinline__ void load_as_float(const Src* p /*[N], 16-byte aligned if N > 1*/,
                                              float (&out)[N]) {
  if constexpr (sizeof(Src) == 4 && N % 4 == 0) {
#pragma unroll
    for (int j = 0; j < N / 4; ++j) {
      const Pack<float, 4> quad = load_pack<float, 4>(p + 4 * j);
#pragma unroll
      for (int e = 0; e < 4; ++e) out[4 * j + e] = quad.v[e];
    }
  } else {
    const Pack<Src, N> pack = load_pack<Src, N>(p);
#pragma unroll
    for (int j = 0; j < N; ++j) out[j] = to_float(pack.v[j]);
  }
}

}  // namespace engine::cuda
