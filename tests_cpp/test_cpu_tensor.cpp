// Tensor views and slices, Buffer ownership, and bf16/fp16 conversions against references.

#include <gtest/gtest.h>
#include <immintrin.h>

#include <bit>
#include <cmath>
#include <limits>
#include <random>
#include <stdexcept>

#include "backend/tensor.h"

namespace engine {
namespace {

TEST(CpuTensor, DtypeSizesAndNames) {
  EXPECT_EQ(dtype_size(DType::kF32), 4u);
  EXPECT_EQ(dtype_size(DType::kBF16), 2u);
  EXPECT_EQ(dtype_size(DType::kF16), 2u);
  EXPECT_EQ(dtype_size(DType::kI32), 4u);
  EXPECT_EQ(dtype_size(DType::kI64), 8u);
  EXPECT_EQ(dtype_size(DType::kFP8E4M3), 1u);
  EXPECT_STREQ(dtype_name(DType::kFP8E4M3), "float8_e4m3fn");
  EXPECT_STREQ(dtype_name(DType::kBF16), "bfloat16");
  EXPECT_STREQ(dtype_name(DType::kF16), "float16");
  EXPECT_STREQ(dtype_name(DType::kI64), "int64");
}

TEST(CpuTensor, ViewKeepsDataAndChecksElementCount) {
  float data[24];
  Tensor t(data, DType::kF32, {2, 3, 4});
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.nbytes(), 96u);
  EXPECT_EQ(t.size(-1), 4);
  Tensor v = t.view({6, 4});
  EXPECT_EQ(v.data, data);
  EXPECT_EQ(v.shape_string(), "[6, 4]");
  EXPECT_EQ(t.view({-1, 8}).shape_string(), "[3, 8]");
  EXPECT_THROW(t.view({5, 5}), std::invalid_argument);
  EXPECT_THROW(t.view({-1, 5}), std::invalid_argument);
  EXPECT_THROW(t.view({-1, -1}), std::invalid_argument);
}

TEST(CpuTensor, SliceRowsOffsetsByRowBytes) {
  uint16_t data[5 * 3];
  Tensor t(data, DType::kBF16, {5, 3});
  Tensor s = t.slice_rows(2, 4);
  EXPECT_EQ(s.data, data + 6);
  EXPECT_EQ(s.shape_string(), "[2, 3]");
  EXPECT_EQ(t.slice_rows(5, 5).numel(), 0);
  EXPECT_THROW(t.slice_rows(3, 6), std::invalid_argument);
  EXPECT_THROW(t.slice_rows(3, 2), std::invalid_argument);
  EXPECT_THROW(t.slice_rows(-1, 2), std::invalid_argument);
}

TEST(CpuTensor, BufferFreesOnceAfterMoves) {
  int num_frees = 0;
  int storage = 0;
  {
    Buffer a(&storage, 4, [&](void*) { ++num_frees; });
    Buffer b(std::move(a));
    EXPECT_EQ(a.data(), nullptr);
    EXPECT_EQ(b.data(), &storage);
    Buffer c;
    c = std::move(b);
    EXPECT_EQ(c.nbytes(), 4u);
    EXPECT_EQ(num_frees, 0);
  }
  EXPECT_EQ(num_frees, 1);
  Buffer d(&storage, 4, [&](void*) { ++num_frees; });
  d.reset();
  d.reset();
  EXPECT_EQ(num_frees, 2);
}

// Nearest bf16 by exhaustive comparison of the two neighbours, ties to the even one.
uint16_t reference_bf16(float f) {
  uint32_t bits = std::bit_cast<uint32_t>(f);
  uint16_t down = static_cast<uint16_t>(bits >> 16);
  uint16_t up = static_cast<uint16_t>(down + 1);
  double d_down = std::abs(double(f) - double(bf16_to_float(down)));
  double d_up = std::abs(double(f) - double(bf16_to_float(up)));
  if ((up & 0x7F80) == 0x7F80 && (up & 0x7F) == 0) {
    // Rounding up reaches inf: IEEE rounds to inf from half an ulp past the largest finite.
    d_up = std::abs(double(f)) >= 3.3961775292304957e38 ? 0.0 : d_up;
  }
  if (d_down < d_up) return down;
  if (d_up < d_down) return up;
  return (down & 1) ? up : down;
}

TEST(CpuTensor, Bf16RoundsToNearestEven) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3F80);
  // 1 + 2^-8 is exactly between 1 and 1 + 2^-7: ties to even (1.0).
  EXPECT_EQ(float_to_bf16(std::bit_cast<float>(0x3F808000u)), 0x3F80);
  EXPECT_EQ(float_to_bf16(std::bit_cast<float>(0x3F818000u)), 0x3F82);
  EXPECT_EQ(float_to_bf16(std::bit_cast<float>(0x3F808001u)), 0x3F81);
  std::mt19937 rng(7);
  std::uniform_int_distribution<uint32_t> any_bits;
  for (int i = 0; i < 200000; ++i) {
    float f = std::bit_cast<float>(any_bits(rng));
    if (std::isnan(f) || std::isinf(f)) continue;
    ASSERT_EQ(float_to_bf16(f), reference_bf16(f)) << "bits " << std::bit_cast<uint32_t>(f);
  }
}

TEST(CpuTensor, Bf16KeepsInfAndNan) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(bf16_to_float(float_to_bf16(inf)), inf);
  EXPECT_EQ(bf16_to_float(float_to_bf16(-inf)), -inf);
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::nanf("")))));
  // A NaN whose payload sits only in the low 16 bits must not truncate to inf.
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::bit_cast<float>(0x7F800001u)))));
  EXPECT_EQ(bf16_to_float(float_to_bf16(3.4e38f)), inf);  // past the largest finite bf16
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float f = bf16_to_float(static_cast<uint16_t>(h));
    if (!std::isnan(f)) ASSERT_EQ(float_to_bf16(f), h);
  }
}

// Tests build without -march=native, so the F16C reference is compiled for that target alone.
__attribute__((target("f16c"))) float hw_fp16_to_float(uint16_t h) { return _cvtsh_ss(h); }
__attribute__((target("f16c"))) uint16_t hw_float_to_fp16(float f) {
  return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
}

TEST(CpuTensor, Fp16MatchesHardwareConversion) {
  // F16C's conversions are IEEE round-to-nearest-even: the reference.
  if (!__builtin_cpu_supports("f16c")) GTEST_SKIP() << "no F16C on this CPU";
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float hw = hw_fp16_to_float(static_cast<uint16_t>(h));
    float sw = fp16_to_float(static_cast<uint16_t>(h));
    if (std::isnan(hw)) {
      ASSERT_TRUE(std::isnan(sw)) << h;
      ASSERT_TRUE(std::isnan(fp16_to_float(float_to_fp16(sw)))) << h;
    } else {
      ASSERT_EQ(std::bit_cast<uint32_t>(sw), std::bit_cast<uint32_t>(hw)) << h;
      ASSERT_EQ(float_to_fp16(sw), h) << h;
    }
  }
  std::mt19937 rng(8);
  std::uniform_int_distribution<uint32_t> any_bits;
  for (int i = 0; i < 400000; ++i) {
    // Half the samples near fp16's range, where rounding and subnormals happen.
    uint32_t bits = any_bits(rng);
    if (i % 2) bits = (bits & 0x80FFFFFFu) | ((0x60u + (bits >> 24) % 0x30u) << 23);
    float f = std::bit_cast<float>(bits);
    if (std::isnan(f)) continue;
    ASSERT_EQ(float_to_fp16(f), hw_float_to_fp16(f)) << "bits " << bits;
  }
}

TEST(CpuTensor, Fp16EdgeCases) {
  EXPECT_EQ(float_to_fp16(65504.0f), 0x7BFF);
  EXPECT_EQ(float_to_fp16(65520.0f), 0x7C00);  // ties away from the largest finite go to inf
  EXPECT_EQ(float_to_fp16(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(float_to_fp16(std::ldexp(1.0f, -25)), 0x0000);  // tie with 0: even
  EXPECT_EQ(float_to_fp16(std::ldexp(3.0f, -25)), 0x0002);  // tie 1.5 ulp: even is 2
  EXPECT_EQ(float_to_fp16(-0.0f), 0x8000);
  EXPECT_EQ(float_to_fp16(-std::numeric_limits<float>::infinity()), 0xFC00);
  EXPECT_TRUE(std::isnan(fp16_to_float(float_to_fp16(std::bit_cast<float>(0x7F800001u)))));
}

// Codes from the OCP 8-bit floating point specification (E4M3: bias 7, no infinities).
TEST(CpuTensor, Fp8E4m3DecodesTheSpecsCodes) {
  EXPECT_EQ(fp8_e4m3_to_float(0x00), 0.0f);
  EXPECT_TRUE(std::signbit(fp8_e4m3_to_float(0x80)));
  EXPECT_EQ(fp8_e4m3_to_float(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_EQ(fp8_e4m3_to_float(0x07), 7 * std::ldexp(1.0f, -9));
  EXPECT_EQ(fp8_e4m3_to_float(0x08), std::ldexp(1.0f, -6));  // smallest normal
  EXPECT_EQ(fp8_e4m3_to_float(0x38), 1.0f);
  EXPECT_EQ(fp8_e4m3_to_float(0x3F), 1.875f);
  EXPECT_EQ(fp8_e4m3_to_float(0x40), 2.0f);
  EXPECT_EQ(fp8_e4m3_to_float(0x7E), 448.0f);
  EXPECT_EQ(fp8_e4m3_to_float(0xFE), -448.0f);
  EXPECT_TRUE(std::isnan(fp8_e4m3_to_float(0x7F)));
  EXPECT_TRUE(std::isnan(fp8_e4m3_to_float(0xFF)));
  for (int c = 1; c <= 0x7E; ++c) {
    EXPECT_LT(fp8_e4m3_to_float(static_cast<uint8_t>(c - 1)),
              fp8_e4m3_to_float(static_cast<uint8_t>(c)))
        << c;
    EXPECT_EQ(fp8_e4m3_to_float(static_cast<uint8_t>(c | 0x80)),
              -fp8_e4m3_to_float(static_cast<uint8_t>(c)));
  }
}

TEST(CpuTensor, Fp8E4m3RoundsToNearestEvenAndSaturates) {
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7F) == 0x7F) continue;  // NaN
    EXPECT_EQ(float_to_fp8_e4m3(fp8_e4m3_to_float(static_cast<uint8_t>(c))), c) << c;
  }
  for (int c = 0; c < 0x7E; ++c) {
    const float lo = fp8_e4m3_to_float(static_cast<uint8_t>(c));
    const float hi = fp8_e4m3_to_float(static_cast<uint8_t>(c + 1));
    const float mid = (lo + hi) / 2;  // exact: both have few significant bits
    const int even = c % 2 == 0 ? c : c + 1;
    EXPECT_EQ(float_to_fp8_e4m3(mid), even) << "tie between codes " << c << " and " << c + 1;
    EXPECT_EQ(float_to_fp8_e4m3(std::nextafter(mid, 0.0f)), c);
    EXPECT_EQ(float_to_fp8_e4m3(std::nextafter(mid, 1e9f)), c + 1);
    EXPECT_EQ(float_to_fp8_e4m3(-mid), even | 0x80);
  }
  EXPECT_EQ(float_to_fp8_e4m3(std::ldexp(1.0f, -11)), 0x00);  // below half the smallest subnormal
  EXPECT_EQ(float_to_fp8_e4m3(-0.0f), 0x80);
  for (float big : {449.0f, 464.0f, 480.0f, 1e6f, std::numeric_limits<float>::max(),
                    std::numeric_limits<float>::infinity()}) {
    EXPECT_EQ(float_to_fp8_e4m3(big), 0x7E) << big;
    EXPECT_EQ(float_to_fp8_e4m3(-big), 0xFE) << big;
  }
  EXPECT_TRUE(std::isnan(fp8_e4m3_to_float(float_to_fp8_e4m3(std::nanf("")))));
}

}  // namespace
}  // namespace engine
