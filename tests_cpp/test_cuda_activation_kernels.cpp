// The CUDA silu_and_mul against the CPU backend's (the spec), for bf16 and fp16, on inputs
// rounded to the compute dtype (the CPU reference runs in fp32 on those rounded values). Outputs
// start poisoned (NaN); widths cover the 16-byte path (I % 8 == 0) and the scalar one.

#include <gtest/gtest.h>

#include <random>
#include <stdexcept>
#include <vector>

#include "activation/activation.h"
#include "backend/cpu/activation.h"
#include "cuda_test_util.h"

namespace engine::test {
namespace {

// Tolerance: one unit in the last place of the output (ulp_of) plus an absolute floor for
// products near zero; the fp32 math differs from the CPU's only in expf's last bits.
constexpr double kAtol = 1e-5;

class CudaActivation : public CudaTest {};

void check_silu_and_mul(DType dtype, int64_t tokens, int64_t inter, int64_t offset,
                        std::mt19937& rng) {
  std::vector<float> rounded;
  // [-8, 8] covers silu's nearly linear side, its minimum and its vanishing tail.
  HostTensor x = to_dtype(random_f32({tokens, 2 * inter}, rng, -8.0f, 8.0f), dtype, &rounded);
  HostTensor x_ref = f32_tensor(rounded, {tokens, 2 * inter});
  HostTensor expected = poisoned_f32({tokens, inter});
  cpu::silu_and_mul(expected.tensor, x_ref.tensor);

  DeviceTensor dx = DeviceTensor::from_host(x, offset);
  DeviceTensor out(dtype, {tokens, inter}, offset);
  cuda::silu_and_mul(out.tensor, dx.tensor, nullptr);
  EXPECT_LE(error_ratio(out.floats(), expected.ptr<float>(), kAtol, ulp_of(dtype)), 1.0);
}

TEST_F(CudaActivation, SiluAndMulMatchesCpu) {
  std::mt19937 rng(11);
  for (DType dtype : {DType::kBF16, DType::kF16}) {
    for (int64_t tokens : {1, 7, 33}) {
      for (int64_t inter : {64, 576, 4096, 72, 4097, 30}) {
        SCOPED_TRACE(testing::Message()
                     << compute_name(dtype) << " T=" << tokens << " I=" << inter);
        check_silu_and_mul(dtype, tokens, inter, 0, rng);
      }
    }
  }
}

TEST_F(CudaActivation, SiluAndMulUnalignedRows) {
  std::mt19937 rng(12);
  for (DType dtype : {DType::kBF16, DType::kF16}) {
    SCOPED_TRACE(compute_name(dtype));
    check_silu_and_mul(dtype, 7, 576, 1, rng);  // I % 8 == 0 but pointers 2 bytes off
  }
}

TEST_F(CudaActivation, RejectsBadArguments) {
  DeviceTensor out(DType::kBF16, {3, 64});
  DeviceTensor x(DType::kBF16, {3, 128});
  DeviceTensor x_wrong_width(DType::kBF16, {3, 64});
  DeviceTensor x_f16(DType::kF16, {3, 128});
  DeviceTensor out_f32(DType::kF32, {3, 64});
  DeviceTensor x_f32(DType::kF32, {3, 128});
  EXPECT_THROW(cuda::silu_and_mul(out.tensor, x_wrong_width.tensor, nullptr),
               std::invalid_argument);
  EXPECT_THROW(cuda::silu_and_mul(out.tensor, x_f16.tensor, nullptr), std::invalid_argument);
  EXPECT_THROW(cuda::silu_and_mul(out_f32.tensor, x_f32.tensor, nullptr), std::invalid_argument);
}

}  // namespace
}  // namespace engine::test
