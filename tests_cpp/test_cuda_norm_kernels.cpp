// The CUDA RMSNorm kernels against the CPU backend's (the spec), for bf16 and fp16: inputs are
// rounded to the compute dtype first and the CPU reference runs in fp32 on those rounded values,
// so the only differences are the output rounding and the order of the fp32 sum of squares.
// Outputs start poisoned (NaN); sizes cover the 16-byte path (D % 8 == 0) and the scalar one.

#include <gtest/gtest.h>

#include <random>
#include <stdexcept>
#include <vector>

#include "backend/cpu/norm.h"
#include "cuda_test_util.h"
#include "norm/norm.h"

namespace engine::test {
namespace {

constexpr float kEps = 1e-5f;
// Tolerance: one unit in the last place of the output (see ulp_of), plus an absolute floor for
// values near zero, far below any rounding step of a normalised row.
constexpr double kAtol = 1e-5;

const DType kComputeDtypes[] = {DType::kBF16, DType::kF16};
const int64_t kRows[] = {1, 7, 33};
const int64_t kDims[] = {64, 576, 4096, 72, 4097, 30};  // 4097, 30: not multiples of 8

struct NormCase {
  HostTensor x;           // [R, D] in the compute dtype
  std::vector<float> xr;  // its values in fp32
  HostTensor weight;      // [D] f32
};

NormCase make_case(int64_t rows, int64_t dim, DType dtype, std::mt19937& rng, float scale) {
  std::vector<float> rounded;
  HostTensor x = to_dtype(random_f32({rows, dim}, rng, -scale, scale), dtype, &rounded);
  return {std::move(x), std::move(rounded), random_f32({dim}, rng, 0.5f, 1.5f)};
}

class CudaNorm : public CudaTest {};

TEST_F(CudaNorm, RmsNormMatchesCpu) {
  std::mt19937 rng(1);
  for (DType dtype : kComputeDtypes) {
    for (int64_t rows : kRows) {
      for (int64_t dim : kDims) {
        SCOPED_TRACE(testing::Message() << compute_name(dtype) << " R=" << rows << " D=" << dim);
        NormCase c = make_case(rows, dim, dtype, rng, 3.0f);
        HostTensor expected = poisoned_f32({rows, dim});
        HostTensor x_ref = f32_tensor(c.xr, {rows, dim});
        cpu::rms_norm(expected.tensor, x_ref.tensor, c.weight.tensor, kEps);

        DeviceTensor x = DeviceTensor::from_host(c.x);
        DeviceTensor weight = DeviceTensor::from_host(c.weight);
        DeviceTensor out(dtype, {rows, dim});
        cuda::rms_norm(out.tensor, x.tensor, weight.tensor, kEps, nullptr);
        EXPECT_LE(error_ratio(out.floats(), expected.ptr<float>(), kAtol, ulp_of(dtype)), 1.0);
        // x is input only.
        EXPECT_EQ(x.bits16(),
                  std::vector<uint16_t>(c.x.ptr<uint16_t>(), c.x.ptr<uint16_t>() + c.x.numel()));
      }
    }
  }
}

TEST_F(CudaNorm, RmsNormInPlaceAndUnaligned) {
  std::mt19937 rng(2);
  for (DType dtype : kComputeDtypes) {
    for (int64_t offset : {0, 1}) {  // 1: D % 8 == 0 but rows not 16-byte aligned
      SCOPED_TRACE(testing::Message() << compute_name(dtype) << " offset=" << offset);
      const int64_t rows = 7, dim = 576;
      NormCase c = make_case(rows, dim, dtype, rng, 2.0f);
      HostTensor expected = poisoned_f32({rows, dim});
      HostTensor x_ref = f32_tensor(c.xr, {rows, dim});
      cpu::rms_norm(expected.tensor, x_ref.tensor, c.weight.tensor, kEps);

      DeviceTensor x = DeviceTensor::from_host(c.x, offset);
      DeviceTensor weight = DeviceTensor::from_host(c.weight);
      cuda::rms_norm(x.tensor, x.tensor, weight.tensor, kEps, nullptr);
      EXPECT_LE(error_ratio(x.floats(), expected.ptr<float>(), kAtol, ulp_of(dtype)), 1.0);
    }
  }
}

TEST_F(CudaNorm, AddRmsNormRoundsTheSumLikeSeparateOps) {
  std::mt19937 rng(3);
  for (DType dtype : kComputeDtypes) {
    for (int64_t rows : kRows) {
      for (int64_t dim : kDims) {
        SCOPED_TRACE(testing::Message() << compute_name(dtype) << " R=" << rows << " D=" << dim);
        NormCase c = make_case(rows, dim, dtype, rng, 2.0f);
        std::vector<float> res_rounded;
        HostTensor residual =
            to_dtype(random_f32({rows, dim}, rng, -4.0f, 4.0f), dtype, &res_rounded);
        // The CUDA residual lives in the compute dtype: the sum is rounded before the norm.
        std::vector<float> sum(c.xr.size());
        std::vector<uint16_t> sum_bits(c.xr.size());
        for (size_t i = 0; i < sum.size(); ++i) {
          sum_bits[i] = to_bits(res_rounded[i] + c.xr[i], dtype);
          sum[i] = round_to(res_rounded[i] + c.xr[i], dtype);
        }
        HostTensor sum_ref = f32_tensor(sum, {rows, dim});
        HostTensor expected = poisoned_f32({rows, dim});
        cpu::rms_norm(expected.tensor, sum_ref.tensor, c.weight.tensor, kEps);

        DeviceTensor x = DeviceTensor::from_host(c.x);
        DeviceTensor res = DeviceTensor::from_host(residual);
        DeviceTensor weight = DeviceTensor::from_host(c.weight);
        cuda::add_rms_norm(x.tensor, res.tensor, weight.tensor, kEps, nullptr);
        EXPECT_EQ(res.bits16(), sum_bits);  // one fp32 add, one rounding: exact
        EXPECT_LE(error_ratio(x.floats(), expected.ptr<float>(), kAtol, ulp_of(dtype)), 1.0);
      }
    }
  }
}

TEST_F(CudaNorm, RejectsBadArguments) {
  DeviceTensor x(DType::kBF16, {3, 64});
  DeviceTensor x_f32(DType::kF32, {3, 64});
  DeviceTensor out_f16(DType::kF16, {3, 64});
  DeviceTensor short_out(DType::kBF16, {3, 32});
  DeviceTensor weight(DType::kF32, {64});
  DeviceTensor weight_bf16(DType::kBF16, {64});
  EXPECT_THROW(cuda::rms_norm(x_f32.tensor, x_f32.tensor, weight.tensor, kEps, nullptr),
               std::invalid_argument);
  EXPECT_THROW(cuda::rms_norm(out_f16.tensor, x.tensor, weight.tensor, kEps, nullptr),
               std::invalid_argument);
  EXPECT_THROW(cuda::rms_norm(short_out.tensor, x.tensor, weight.tensor, kEps, nullptr),
               std::invalid_argument);
  EXPECT_THROW(cuda::rms_norm(x.tensor, x.tensor, weight_bf16.tensor, kEps, nullptr),
               std::invalid_argument);
  EXPECT_THROW(cuda::add_rms_norm(x.tensor, short_out.tensor, weight.tensor, kEps, nullptr),
               std::invalid_argument);
  Tensor host_x = x.tensor;
  host_x.device = DeviceType::kCpu;
  EXPECT_THROW(cuda::rms_norm(x.tensor, host_x, weight.tensor, kEps, nullptr),
               std::invalid_argument);
}

}  // namespace
}  // namespace engine::test
