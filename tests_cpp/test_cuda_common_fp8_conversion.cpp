// The host's fp8 e4m3 conversions (backend/tensor.h: the CPU backend's cache and every test's
// reference) against CUDA's own (cuda_fp8.h, host side; the kernels use the same functions on
// the device): every code decodes alike, and every third fp32 bit pattern, NaN and both
// infinities included, encodes alike with __NV_SATFINITE. Needs no GPU.

#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "backend/tensor.h"

namespace engine {
namespace {

TEST(CudaFp8Conversion, EveryCodeDecodesAsCudaDoes) {
  for (int code = 0; code < 256; ++code) {
    const float cuda = __half2float(
        __half(__nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(code), __NV_E4M3)));
    const float ours = fp8_e4m3_to_float(static_cast<uint8_t>(code));
    EXPECT_TRUE(cuda == ours || (std::isnan(cuda) && std::isnan(ours))) << code;
  }
}

TEST(CudaFp8Conversion, FloatsEncodeAsCudaSaturatingDoes) {
  int64_t mismatches = 0;
  for (uint64_t bits = 0; bits < (uint64_t{1} << 32); bits += 3) {
    const uint32_t word = static_cast<uint32_t>(bits);
    float f;
    std::memcpy(&f, &word, sizeof(f));
    const uint8_t ours = float_to_fp8_e4m3(f);
    const uint8_t cuda = __nv_cvt_float_to_fp8(f, __NV_SATFINITE, __NV_E4M3);
    const bool both_nan = std::isnan(f) && (ours & 0x7F) == 0x7F && (cuda & 0x7F) == 0x7F;
    if (ours != cuda && !both_nan && ++mismatches <= 5) {
      ADD_FAILURE() << "bits 0x" << std::hex << word << " (" << f << "): ours 0x" << int(ours)
                    << ", CUDA's 0x" << int(cuda);
    }
  }
  EXPECT_EQ(mismatches, 0);
  for (float f : {INFINITY, -INFINITY}) {
    EXPECT_EQ(float_to_fp8_e4m3(f), __nv_cvt_float_to_fp8(f, __NV_SATFINITE, __NV_E4M3));
  }
}

}  // namespace
}  // namespace engine
