#pragma once
// Hopper warpgroup MMA (wgmma, sm_90a) primitives for the prefill kernel's Hopper path
// (paged_prefill_sm90.cuh): shared-memory matrix descriptors for 128-byte-swizzled tiles, the
// fences and groups that order wgmma against ordinary instructions, and the three shapes the
// kernel issues, for bf16 and fp16 with fp32 accumulation. Compiled only for sm_90a
// (EMBER_WGMMA_ENABLED); elsewhere the kernel that uses them is never launched.
//
// Shared-memory tiles (PTX ISA, "Shared Memory Matrix Layout", 128-byte swizzle): a tile of
// rows x 64 elements (128 bytes per row) whose 16-byte chunk c of row r sits at chunk c ^ (r % 8);
// every 8 rows (1024 bytes) form one swizzle atom, and the tile must start 1024-byte aligned, as
// the swizzle is a function of the address bits. Wider rows are split into such 64-element
// column blocks, stored one after another.
//   K-major operand (the reduction dimension runs along a row: Q and K for S = Q K^T): start at
//   the k-step's 32-byte offset inside the row, SBO = 1024 (next 8 rows), LBO unused (1).
//   MN-major operand (rows run along the reduction: V for P V, keys by dims): start at the
//   k-step's 16 rows, SBO = 1024 (next 8 keys), LBO = the distance between 64-dim blocks.
//
// Accumulator layout of m64nN: warp w of the warpgroup owns rows 16 w..16 w + 15, and register
// 4 j + e of lane l holds row 16 w + l / 4 + 8 (e / 2), column 8 j + 2 (l % 4) + e % 2, i.e. the
// mma.sync m16n8 C layout repeated along N. A register A operand has the mma.sync m16n8k16 A
// layout per warp, so an S accumulator converts to P in registers.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define EMBER_WGMMA_ENABLED 1
#endif

namespace engine::cuda::attention::sm90 {

// 1 in device code compiled with the wgmma instructions (sm_90a); the launcher reads it to know
// whether the Hopper kernel has a body on this device.
#ifdef EMBER_WGMMA_ENABLED
__device__ int kWgmmaCompiled = 1;
#else
__device__ int kWgmmaCompiled = 0;
#endif

// A 128-byte-swizzle descriptor: start address, leading and stride byte offsets (16-byte units,
// 14 bits each), swizzle mode 1 (128 B) in bits 62-63, base offset 0 (atoms 1024-byte aligned).
__device__ __forceinline__ uint64_t smem_descriptor(uint32_t address, uint32_t lbo_bytes,
                                                    uint32_t sbo_bytes) {
  return uint64_t((address & 0x3FFFF) >> 4) | uint64_t((lbo_bytes >> 4) & 0x3FFF) << 16 |
         uint64_t((sbo_bytes >> 4) & 0x3FFF) << 32 | uint64_t(1) << 62;
}

// Orders prior register writes (accumulators, A fragments) before the next wgmma.
__device__ __forceinline__ void wgmma_fence() {
#ifdef EMBER_WGMMA_ENABLED
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#ifdef EMBER_WGMMA_ENABLED
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
#ifdef EMBER_WGMMA_ENABLED
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
#endif
}
// Makes this thread's shared-memory writes (cp.async included) visible to the async proxy that
// wgmma reads through; a CTA barrier must follow before another thread's wgmma reads them.
__device__ __forceinline__ void fence_proxy_async() {
#ifdef EMBER_WGMMA_ENABLED
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
// Pins registers an in-flight wgmma reads or writes: the compiler may not move their uses across
// this point (it does not know the instruction is asynchronous).
template <int N>
__device__ __forceinline__ void fence_registers(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N>
__device__ __forceinline__ void fence_registers(uint32_t (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(r[i])::"memory");
}

// S = A B^T, A and B K-major in shared memory (m64n64k16).
#define EMBER_WGMMA_SS_N64(TYPE)                              \
  "{\n"                                                       \
  ".reg .pred p;\n"                                           \
  "setp.ne.b32 p, %34, 0;\n"                                  \
  "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE \
  " "                                                         \
  "{%0, %1, %2, %3, %4, %5, %6, %7,"                          \
  " %8, %9, %10, %11, %12, %13, %14, %15,"                    \
  " %16, %17, %18, %19, %20, %21, %22, %23,"                  \
  " %24, %25, %26, %27, %28, %29, %30, %31},"                 \
  " %32, %33, p, 1, 1, 0, 0;\n"                               \
  "}\n"

// D += A B, A in registers, B MN-major in shared memory (m64n64k16).
#define EMBER_WGMMA_RS_N64(TYPE)                              \
  "{\n"                                                       \
  ".reg .pred p;\n"                                           \
  "setp.ne.b32 p, %37, 0;\n"                                  \
  "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE \
  " "                                                         \
  "{%0, %1, %2, %3, %4, %5, %6, %7,"                          \
  " %8, %9, %10, %11, %12, %13, %14, %15,"                    \
  " %16, %17, %18, %19, %20, %21, %22, %23,"                  \
  " %24, %25, %26, %27, %28, %29, %30, %31},"                 \
  " {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n"                 \
  "}\n"

// D += A B, A in registers, B MN-major in shared memory (m64n128k16).
#define EMBER_WGMMA_RS_N128(TYPE)                              \
  "{\n"                                                        \
  ".reg .pred p;\n"                                            \
  "setp.ne.b32 p, %69, 0;\n"                                   \
  "wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE \
  " "                                                          \
  "{%0, %1, %2, %3, %4, %5, %6, %7,"                           \
  " %8, %9, %10, %11, %12, %13, %14, %15,"                     \
  " %16, %17, %18, %19, %20, %21, %22, %23,"                   \
  " %24, %25, %26, %27, %28, %29, %30, %31,"                   \
  " %32, %33, %34, %35, %36, %37, %38, %39,"                   \
  " %40, %41, %42, %43, %44, %45, %46, %47,"                   \
  " %48, %49, %50, %51, %52, %53, %54, %55,"                   \
  " %56, %57, %58, %59, %60, %61, %62, %63},"                  \
  " {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n"                  \
  "}\n"

template <typename T>
struct WgmmaType;
template <>
struct WgmmaType<__nv_bfloat16> {
  static constexpr bool kBF16 = true;
};
template <>
struct WgmmaType<__half> {
  static constexpr bool kBF16 = false;
};

// The accumulator operands of a 64 x 64 (32 per thread) and a 64 x 128 (64 per thread) tile.
#define EMBER_WGMMA_D32(d)                                                                        \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
      "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]),    \
      "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]),  \
      "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]),  \
      "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define EMBER_WGMMA_D64(d)                                                                       \
  EMBER_WGMMA_D32(d), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]),           \
      "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), \
      "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), \
      "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), \
      "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
// INSTR for T's element type (bf16 or f16); the PTX type must be a literal in the asm string.
#define EMBER_WGMMA_ASM(T, INSTR, OUTPUTS, ...)          \
  if constexpr (WgmmaType<T>::kBF16) {                   \
    asm volatile(INSTR("bf16") : OUTPUTS : __VA_ARGS__); \
  } else {                                               \
    asm volatile(INSTR("f16") : OUTPUTS : __VA_ARGS__);  \
  }

// d (+)= A B^T for a 64 x 64 x 16 step; A (64 rows) and B (64 rows) K-major in shared memory.
// accumulate = false overwrites d.
template <typename T>
__device__ __forceinline__ void wgmma_ss_n64(float (&d)[32], uint64_t a, uint64_t b,
                                             bool accumulate) {
#ifdef EMBER_WGMMA_ENABLED
  EMBER_WGMMA_ASM(T, EMBER_WGMMA_SS_N64, EMBER_WGMMA_D32(d), "l"(a), "l"(b), "r"(int(accumulate)))
#endif
}

// d += A B for a 64 x 64 x 16 step; A (64 x 16) in registers, B MN-major in shared memory.
template <typename T>
__device__ __forceinline__ void wgmma_rs_n64(float (&d)[32], const uint32_t (&a)[4], uint64_t b) {
#ifdef EMBER_WGMMA_ENABLED
  EMBER_WGMMA_ASM(T, EMBER_WGMMA_RS_N64, EMBER_WGMMA_D32(d), "r"(a[0]), "r"(a[1]), "r"(a[2]),
                  "r"(a[3]), "l"(b), "r"(1))
#endif
}

// d += A B for a 64 x 128 x 16 step; A (64 x 16) in registers, B MN-major in shared memory.
template <typename T>
__device__ __forceinline__ void wgmma_rs_n128(float (&d)[64], const uint32_t (&a)[4], uint64_t b) {
#ifdef EMBER_WGMMA_ENABLED
  EMBER_WGMMA_ASM(T, EMBER_WGMMA_RS_N128, EMBER_WGMMA_D64(d), "r"(a[0]), "r"(a[1]), "r"(a[2]),
                  "r"(a[3]), "l"(b), "r"(1))
#endif
}

#undef EMBER_WGMMA_SS_N64
#undef EMBER_WGMMA_RS_N64
#undef EMBER_WGMMA_RS_N128
#undef EMBER_WGMMA_ASM
#undef EMBER_WGMMA_D64
#undef EMBER_WGMMA_D32

}  // namespace engine::cuda::attention::sm90
