#pragma once
// Helpers shared by the CUDA kernel tests: device tensors that own their memory and start
// poisoned, uploads of host tensors, downloads widened to fp32, and error ratios against the
// CPU backend's fp32 results.

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "backend/tensor.h"
#include "common/cuda_check.h"
#include "common/device.h"
#include "cpu_test_util.h"

namespace engine::test {

// Every CUDA test skips itself on machines without a GPU.
class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

// Device memory holding one tensor, filled with 0xFF bytes (NaN in bf16, fp16 and fp32) so an
// element the kernel should have written but did not shows up. `offset_elems` shifts the data
// pointer off the allocation's 256-byte alignment, to reach a kernel's unaligned path.
class DeviceTensor {
 public:
  DeviceTensor(DType dtype, std::vector<int64_t> shape, int64_t offset_elems = 0) {
    tensor = Tensor(nullptr, dtype, std::move(shape), DeviceType::kCuda);
    const size_t offset = static_cast<size_t>(offset_elems) * dtype_size(dtype);
    EMBER_CUDA_CHECK(cudaMalloc(&base_, tensor.nbytes() + offset + 1));
    EMBER_CUDA_CHECK(cudaMemset(base_, 0xFF, tensor.nbytes() + offset + 1));
    tensor.data = static_cast<char*>(base_) + offset;
  }
  DeviceTensor(const DeviceTensor&) = delete;
  DeviceTensor& operator=(const DeviceTensor&) = delete;
  DeviceTensor(DeviceTensor&& other) noexcept : tensor(other.tensor), base_(other.base_) {
    other.base_ = nullptr;
  }
  ~DeviceTensor() { cudaFree(base_); }

  static DeviceTensor from_host(const HostTensor& host, int64_t offset_elems = 0) {
    DeviceTensor t(host.tensor.dtype, host.tensor.shape, offset_elems);
    t.upload(host);
    return t;
  }
  void upload(const HostTensor& host) {
    EMBER_CUDA_CHECK(
        cudaMemcpy(tensor.data, host.tensor.data, tensor.nbytes(), cudaMemcpyHostToDevice));
  }
  std::vector<uint8_t> bytes() const {
    std::vector<uint8_t> out(tensor.nbytes());
    EMBER_CUDA_CHECK(cudaMemcpy(out.data(), tensor.data, out.size(), cudaMemcpyDeviceToHost));
    return out;
  }
  std::vector<uint16_t> bits16() const {
    std::vector<uint16_t> out(tensor.numel());
    EMBER_CUDA_CHECK(cudaMemcpy(out.data(), tensor.data, out.size() * 2, cudaMemcpyDeviceToHost));
    return out;
  }
  // The elements widened to fp32 (dtype bf16 or fp16).
  std::vector<float> floats() const {
    std::vector<float> out;
    for (uint16_t b : bits16())
      out.push_back(tensor.dtype == DType::kBF16 ? bf16_to_float(b) : fp16_to_float(b));
    return out;
  }

  Tensor tensor;

 private:
  void* base_ = nullptr;
};

// fp32 -> stored bits of a 16-bit dtype, round to nearest even (the host's conversions).
inline uint16_t to_bits(float value, DType dtype) {
  return dtype == DType::kBF16 ? float_to_bf16(value) : float_to_fp16(value);
}
inline float round_to(float value, DType dtype) {
  return dtype == DType::kBF16 ? bf16_to_float(float_to_bf16(value))
                               : fp16_to_float(float_to_fp16(value));
}

// A host fp32 tensor holding `values` (e.g. the rounded inputs, for the fp32 CPU reference).
inline HostTensor f32_tensor(const std::vector<float>& values, std::vector<int64_t> shape) {
  HostTensor t(DType::kF32, std::move(shape));
  std::memcpy(t.tensor.data, values.data(), values.size() * sizeof(float));
  return t;
}

// One unit in the last place of the dtype at 1.0, relative: the output rounding is at most
// half of it, and fp32 results that differ in their last bits may round one unit apart.
inline double ulp_of(DType dtype) { return dtype == DType::kBF16 ? 1.0 / 128 : 1.0 / 1024; }

// Largest |actual - expected| / (atol + rtol * |expected|); <= 1 passes. NaN fails.
inline double error_ratio(const std::vector<float>& actual, const float* expected, double atol,
                          double rtol) {
  double worst = 0.0;
  for (size_t i = 0; i < actual.size(); ++i) {
    if (std::isnan(actual[i]) || std::isnan(expected[i]))
      return std::numeric_limits<double>::infinity();
    worst = std::max(worst, std::abs(double(actual[i]) - expected[i]) /
                                (atol + rtol * std::abs(double(expected[i]))));
  }
  return worst;
}

inline const char* compute_name(DType dtype) { return dtype == DType::kBF16 ? "bf16" : "fp16"; }

}  // namespace engine::test
