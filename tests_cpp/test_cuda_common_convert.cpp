// The CUDA target's conversion kernels against the host's round-to-nearest-even conversion,
// on fresh random inputs, with the output poisoned before each run. Skips without a GPU.

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "common/convert.h"
#include "common/cuda_check.h"
#include "common/device.h"

namespace engine::cuda {
namespace {

// Reference: fp32 -> bf16 bits, round to nearest even, NaN kept quiet.
uint16_t host_f32_to_bf16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  if (std::isnan(value)) return static_cast<uint16_t>((bits >> 16) | 0x40);
  const uint32_t rounding = 0x7FFF + ((bits >> 16) & 1);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

class CudaConvert : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_F(CudaConvert, DeviceNameIsKnown) { EXPECT_FALSE(cuda_device_name(0).empty()); }

TEST_F(CudaConvert, F32ToBf16RoundsToNearestEvenAndBack) {
  // Odd length: exercises the kernel's tail; values span tiny to huge, plus specials.
  const int64_t n = 1'000'003;
  std::mt19937 rng(123);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> input(n);
  for (int64_t i = 0; i < n; ++i) input[i] = normal(rng) * std::ldexp(1.0f, int(i % 60) - 30);
  input[0] = std::numeric_limits<float>::infinity();
  input[1] = -std::numeric_limits<float>::infinity();
  input[2] = std::numeric_limits<float>::quiet_NaN();
  input[3] = 0.0f;

  float *d_in = nullptr, *d_back = nullptr;
  __nv_bfloat16* d_bf16 = nullptr;
  EMBER_CUDA_CHECK(cudaMalloc(&d_in, n * sizeof(float)));
  EMBER_CUDA_CHECK(cudaMalloc(&d_back, n * sizeof(float)));
  EMBER_CUDA_CHECK(cudaMalloc(&d_bf16, n * sizeof(__nv_bfloat16)));
  EMBER_CUDA_CHECK(cudaMemcpy(d_in, input.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  EMBER_CUDA_CHECK(cudaMemset(d_bf16, 0xFF, n * sizeof(__nv_bfloat16)));  // poison
  EMBER_CUDA_CHECK(cudaMemset(d_back, 0xFF, n * sizeof(float)));

  convert_f32_to_bf16(d_in, d_bf16, n, nullptr);
  convert_bf16_to_f32(d_bf16, d_back, n, nullptr);
  std::vector<uint16_t> bf16(n);
  std::vector<float> back(n);
  EMBER_CUDA_CHECK(cudaMemcpy(bf16.data(), d_bf16, n * 2, cudaMemcpyDeviceToHost));
  EMBER_CUDA_CHECK(cudaMemcpy(back.data(), d_back, n * sizeof(float), cudaMemcpyDeviceToHost));
  cudaFree(d_in);
  cudaFree(d_back);
  cudaFree(d_bf16);

  int64_t num_mismatches = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t expected = host_f32_to_bf16(input[i]);
    const bool same = std::isnan(input[i]) ? (bf16[i] & 0x7F80) == 0x7F80 && (bf16[i] & 0x7F)
                                           : bf16[i] == expected;
    uint32_t widened = uint32_t{bf16[i]} << 16;
    float expected_back;
    std::memcpy(&expected_back, &widened, sizeof(float));
    const bool back_same =
        std::isnan(expected_back) ? std::isnan(back[i]) : back[i] == expected_back;
    num_mismatches += !(same && back_same);
  }
  EXPECT_EQ(num_mismatches, 0);
}

TEST_F(CudaConvert, ErrorsBecomeExceptionsNamingTheCall) {
  void* ptr = nullptr;
  EXPECT_THROW(EMBER_CUDA_CHECK(cudaMalloc(&ptr, size_t{1} << 62)), std::runtime_error);
}

}  // namespace
}  // namespace engine::cuda
