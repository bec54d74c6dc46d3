#pragma once
// Helpers shared by the CPU kernel tests: owned host tensors filled with random values or NaN
// poison, and conversion of fp32 values to a weight storage dtype.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <vector>

#include "backend/tensor.h"

namespace engine::test {

// A host tensor that owns its (64-byte aligned) memory.
struct HostTensor {
  std::vector<uint8_t> storage;
  Tensor tensor;

  HostTensor(DType dtype, std::vector<int64_t> shape) {
    Tensor probe(nullptr, dtype, shape);
    storage.resize(probe.nbytes() + 64);
    void* p = storage.data();
    size_t space = storage.size();
    std::align(64, probe.nbytes() == 0 ? 1 : probe.nbytes(), p, space);
    tensor = Tensor(p, dtype, std::move(shape));
  }
  template <typename T>
  T* ptr() const {
    return tensor.ptr<T>();
  }
  int64_t numel() const { return tensor.numel(); }
};

inline HostTensor random_f32(std::vector<int64_t> shape, std::mt19937& rng, float lo = -1.0f,
                             float hi = 1.0f) {
  HostTensor t(DType::kF32, std::move(shape));
  std::uniform_real_distribution<float> dist(lo, hi);
  for (int64_t i = 0; i < t.numel(); ++i) t.ptr<float>()[i] = dist(rng);
  return t;
}

inline HostTensor poisoned_f32(std::vector<int64_t> shape) {
  HostTensor t(DType::kF32, std::move(shape));
  for (int64_t i = 0; i < t.numel(); ++i)
    t.ptr<float>()[i] = std::numeric_limits<float>::quiet_NaN();
  return t;
}

inline HostTensor i32_tensor(const std::vector<int32_t>& values) {
  HostTensor t(DType::kI32, {static_cast<int64_t>(values.size())});
  std::memcpy(t.tensor.data, values.data(), values.size() * sizeof(int32_t));
  return t;
}

// Stores fp32 values in `dtype`. `rounded` receives the values the stored ones stand for, so
// references can use exactly what the kernel reads.
inline HostTensor to_dtype(const HostTensor& src, DType dtype, std::vector<float>* rounded) {
  HostTensor dst(dtype, src.tensor.shape);
  rounded->resize(src.numel());
  const float* s = src.ptr<float>();
  for (int64_t i = 0; i < src.numel(); ++i) {
    if (dtype == DType::kF32) {
      dst.ptr<float>()[i] = s[i];
      (*rounded)[i] = s[i];
    } else if (dtype == DType::kBF16) {
      dst.ptr<uint16_t>()[i] = float_to_bf16(s[i]);
      (*rounded)[i] = bf16_to_float(dst.ptr<uint16_t>()[i]);
    } else if (dtype == DType::kFP8E4M3) {
      dst.ptr<uint8_t>()[i] = float_to_fp8_e4m3(s[i]);
      (*rounded)[i] = fp8_e4m3_to_float(dst.ptr<uint8_t>()[i]);
    } else {
      dst.ptr<uint16_t>()[i] = float_to_fp16(s[i]);
      (*rounded)[i] = fp16_to_float(dst.ptr<uint16_t>()[i]);
    }
  }
  return dst;
}

// Largest |a - b| / (atol + rtol * |b|); <= 1 means within tolerance. NaN anywhere fails.
inline double worst_error_ratio(const float* actual, const std::vector<double>& expected,
                                double atol, double rtol) {
  double worst = 0.0;
  for (size_t i = 0; i < expected.size(); ++i) {
    if (std::isnan(actual[i])) return std::numeric_limits<double>::infinity();
    double ratio = std::abs(actual[i] - expected[i]) / (atol + rtol * std::abs(expected[i]));
    worst = std::max(worst, ratio);
  }
  return worst;
}

}  // namespace engine::test
