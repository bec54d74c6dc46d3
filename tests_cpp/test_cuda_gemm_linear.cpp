// engine::cuda::Gemm::linear against the CPU backend's linear (the spec), on fresh random
// inputs with the output poisoned before each run. Inputs are rounded to bf16/fp16 first and the
// CPU reference runs in fp32 on the rounded values, so the only differences are the order of
// the fp32 sums and the final rounding of the output. Skips without a GPU.
//
// Tolerance per element: |got - ref| <= eps * (|ref| + |bias|) + 1e-4, eps = 2^-7 for a bf16
// output, 2^-10 for fp16 (twice the unit roundoff 2^-8 / 2^-11: the output may be rounded twice
// when the bias is added after the matmul), 1e-5 for fp32. Inputs are scaled so outputs are O(1);
// 1e-4 covers fp32 summation-order noise (about sqrt(K) * 2^-24) with a wide margin.

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ostream>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend/cpu/linear.h"
#include "backend/tensor.h"
#include "common/cuda_check.h"
#include "common/device.h"
#include "gemm/gemm.h"

namespace engine::cuda {
namespace {

// Uniform in [-1, 1): splitmix64, fast enough for the 117M-element Llama weights.
class Uniform {
 public:
  explicit Uniform(uint64_t seed) : state_(seed) {}
  float next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return static_cast<float>(z >> 40) * 0x1p-23f - 1.0f;
  }

 private:
  uint64_t state_;
};

uint16_t to_half_bits(DType dtype, float value) {
  return dtype == DType::kBF16 ? float_to_bf16(value) : float_to_fp16(value);
}
float from_half_bits(DType dtype, uint16_t bits) {
  return dtype == DType::kBF16 ? bf16_to_float(bits) : fp16_to_float(bits);
}

// Device memory owned by a test.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t nbytes) : nbytes_(nbytes) {
    EMBER_CUDA_CHECK(cudaMalloc(&data_, nbytes));
  }
  ~DeviceBuffer() { cudaFree(data_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* data() const { return data_; }
  void upload(const void* host) {
    EMBER_CUDA_CHECK(cudaMemcpy(data_, host, nbytes_, cudaMemcpyHostToDevice));
  }
  void poison() { EMBER_CUDA_CHECK(cudaMemset(data_, 0xFF, nbytes_)); }  // NaN in every dtype

 private:
  void* data_ = nullptr;
  size_t nbytes_;
};

struct Case {
  int64_t num_tokens, num_out, num_in;
  DType dtype;      // x and weight
  DType out_dtype;  // dtype or f32
  bool with_bias;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << "T=" << c.num_tokens << " N=" << c.num_out << " K=" << c.num_in << " "
      << dtype_name(c.dtype) << " -> " << dtype_name(c.out_dtype) << (c.with_bias ? " +bias" : "");
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const Case& c = info.param;
  const auto short_name = [](DType d) {
    return d == DType::kBF16 ? "bf16" : d == DType::kF16 ? "f16" : "f32";
  };
  return "T" + std::to_string(c.num_tokens) + "_N" + std::to_string(c.num_out) + "_K" +
         std::to_string(c.num_in) + "_" + short_name(c.dtype) + "_out_" + short_name(c.out_dtype) +
         (c.with_bias ? "_bias" : "");
}

// Host inputs, already rounded to the GEMM's dtype, and the CPU reference output.
struct Problem {
  std::vector<uint16_t> x_bits, weight_bits;
  std::vector<float> bias, expected;

  Problem(const Case& c, uint64_t seed) {
    const int64_t t = c.num_tokens, n = c.num_out, k = c.num_in;
    Uniform uniform(seed);
    // x has unit variance, weight variance 1/K: outputs are O(1) for every K.
    const float x_scale = std::sqrt(3.0f), w_scale = std::sqrt(3.0f / float(k));
    std::vector<float> x(t * k);
    x_bits.resize(t * k);
    for (int64_t i = 0; i < t * k; ++i) {
      x_bits[i] = to_half_bits(c.dtype, uniform.next() * x_scale);
      x[i] = from_half_bits(c.dtype, x_bits[i]);
    }
    weight_bits.resize(n * k);
    for (auto& w : weight_bits) w = to_half_bits(c.dtype, uniform.next() * w_scale);
    if (c.with_bias) {
      bias.resize(n);
      for (auto& b : bias) b = uniform.next();
    }
    expected.assign(t * n, 0.0f);
    Tensor bias_tensor(bias.data(), DType::kF32, {n});
    cpu::linear(Tensor(expected.data(), DType::kF32, {t, n}), Tensor(x.data(), DType::kF32, {t, k}),
                Tensor(weight_bits.data(), c.dtype, {n, k}), c.with_bias ? &bias_tensor : nullptr);
  }
};

// The device output widened to fp32.
std::vector<float> download(const DeviceBuffer& buffer, DType dtype, int64_t num_elements) {
  std::vector<float> values(num_elements);
  if (dtype == DType::kF32) {
    EMBER_CUDA_CHECK(cudaMemcpy(values.data(), buffer.data(), num_elements * sizeof(float),
                                cudaMemcpyDeviceToHost));
    return values;
  }
  std::vector<uint16_t> bits(num_elements);
  EMBER_CUDA_CHECK(
      cudaMemcpy(bits.data(), buffer.data(), num_elements * 2, cudaMemcpyDeviceToHost));
  for (int64_t i = 0; i < num_elements; ++i) values[i] = from_half_bits(dtype, bits[i]);
  return values;
}

float relative_tolerance(DType out_dtype) {
  return out_dtype == DType::kBF16 ? 0x1p-7f : out_dtype == DType::kF16 ? 0x1p-10f : 1e-5f;
}

class CudaGemm : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

class CudaGemmLinear : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_P(CudaGemmLinear, MatchesCpuReferenceAndRepeats) {
  const Case& c = GetParam();
  const int64_t t = c.num_tokens, n = c.num_out, k = c.num_in;
  const Problem problem(c, 1000 + t * 7 + n * 13 + k);

  DeviceBuffer x(t * k * 2), weight(n * k * 2), out(t * n * dtype_size(c.out_dtype)),
      bias(n * sizeof(float));
  x.upload(problem.x_bits.data());
  weight.upload(problem.weight_bits.data());
  if (c.with_bias) bias.upload(problem.bias.data());
  const Tensor out_tensor(out.data(), c.out_dtype, {t, n}, DeviceType::kCuda);
  const Tensor x_tensor(x.data(), c.dtype, {t, k}, DeviceType::kCuda);
  const Tensor weight_tensor(weight.data(), c.dtype, {n, k}, DeviceType::kCuda);
  const Tensor bias_tensor(bias.data(), DType::kF32, {n}, DeviceType::kCuda);

  cudaStream_t stream = nullptr;
  EMBER_CUDA_CHECK(cudaStreamCreate(&stream));
  Gemm gemm;
  std::vector<float> first;
  for (int run = 0; run < 2; ++run) {  // the second run takes the cached plan
    out.poison();
    gemm.linear(out_tensor, x_tensor, weight_tensor, c.with_bias ? &bias_tensor : nullptr, stream);
    EMBER_CUDA_CHECK(cudaStreamSynchronize(stream));
    std::vector<float> got = download(out, c.out_dtype, t * n);
    if (run == 1) {
      EXPECT_EQ(std::memcmp(got.data(), first.data(), got.size() * sizeof(float)), 0)
          << "the cached plan gave a different result";
      break;
    }
    const float eps = relative_tolerance(c.out_dtype);
    int64_t num_bad = 0;
    double max_error = 0.0;
    for (int64_t i = 0; i < t * n; ++i) {
      const float ref = problem.expected[i];
      const float b = c.with_bias ? std::fabs(problem.bias[i % n]) : 0.0f;
      const float error = std::fabs(got[i] - ref);
      const bool ok = error <= eps * (std::fabs(ref) + b) + 1e-4f;  // false for NaN
      if (!ok && num_bad++ < 5) {
        ADD_FAILURE() << "out[" << i / n << ", " << i % n << "] = " << got[i] << ", expected "
                      << ref;
      }
      if (std::isfinite(error) && error > max_error) max_error = error;
    }
    EXPECT_EQ(num_bad, 0) << "max |error| " << max_error;
    first = std::move(got);
  }
  EMBER_CUDA_CHECK(cudaStreamDestroy(stream));
}

constexpr DType kBF16 = DType::kBF16, kF16 = DType::kF16, kF32 = DType::kF32;

// Odd sizes (N 72, K 40: no multiple of 64; 80-byte rows) across the token counts.
std::vector<Case> odd_cases() {
  std::vector<Case> cases;
  for (DType dtype : {kBF16, kF16}) {
    for (int64_t t : {1, 7, 64, 257}) {
      for (bool with_bias : {false, true}) cases.push_back({t, 72, 40, dtype, dtype, with_bias});
    }
  }
  return cases;
}
INSTANTIATE_TEST_SUITE_P(OddShapes, CudaGemmLinear, ::testing::ValuesIn(odd_cases()), case_name);

// Llama-3-8B projections: q/o (4096 x 4096), fused gate_up (2 x 14336 x 4096, decode), down.
INSTANTIATE_TEST_SUITE_P(Llama3Shapes, CudaGemmLinear,
                         ::testing::Values(Case{1, 4096, 4096, kBF16, kBF16, false},
                                           Case{7, 4096, 4096, kBF16, kBF16, false},
                                           Case{64, 4096, 4096, kBF16, kBF16, true},
                                           Case{257, 4096, 4096, kBF16, kBF16, false},
                                           Case{64, 4096, 4096, kF16, kF16, true},
                                           Case{1, 14336 * 2, 4096, kBF16, kBF16, false},
                                           Case{7, 4096, 14336, kBF16, kBF16, false},
                                           Case{64, 4096, 14336, kBF16, kBF16, false},
                                           Case{1, 4096, 14336, kF16, kF16, false}),
                         case_name);

// fp32 logits (lm_head); with a bias, out f32 takes cuBLASLt's fused BIAS epilogue.
INSTANTIATE_TEST_SUITE_P(Fp32Output, CudaGemmLinear,
                         ::testing::Values(Case{1, 32000, 4096, kBF16, kF32, false},
                                           Case{7, 32000, 4096, kBF16, kF32, false},
                                           Case{7, 72, 40, kBF16, kF32, true},
                                           Case{257, 72, 40, kF16, kF32, true},
                                           Case{64, 4096, 4096, kBF16, kF32, true}),
                         case_name);

// Row slices start mid-allocation (x and out at 80- and 288-byte offsets): the plan must be
// chosen for that alignment, not cuBLASLt's default 256 bytes.
TEST_F(CudaGemm, UnalignedRowSlicesMatchAlignedResult) {
  const int64_t t = 33, n = 72, k = 40;
  const Case c{t, n, k, kBF16, kBF16, true};
  const Problem problem(c, 77);
  DeviceBuffer x((t + 1) * k * 2), weight(n * k * 2), out((t + 2) * n * 2), bias(n * 4);
  std::vector<uint16_t> x_padded(k, 0);
  x_padded.insert(x_padded.end(), problem.x_bits.begin(), problem.x_bits.end());
  x.upload(x_padded.data());
  weight.upload(problem.weight_bits.data());
  bias.upload(problem.bias.data());
  out.poison();
  const Tensor x_all(x.data(), kBF16, {t + 1, k}, DeviceType::kCuda);
  const Tensor out_all(out.data(), kBF16, {t + 2, n}, DeviceType::kCuda);
  const Tensor bias_tensor(bias.data(), kF32, {n}, DeviceType::kCuda);
  Gemm gemm;
  gemm.linear(out_all.slice_rows(2, t + 2), x_all.slice_rows(1, t + 1),
              Tensor(weight.data(), kBF16, {n, k}, DeviceType::kCuda), &bias_tensor, nullptr);
  EMBER_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<float> got = download(out, kBF16, (t + 2) * n);
  int64_t num_bad = 0;
  for (int64_t i = 0; i < t * n; ++i) {
    const float ref = problem.expected[i];
    const float tolerance =
        relative_tolerance(kBF16) * (std::fabs(ref) + std::fabs(problem.bias[i % n])) + 1e-4f;
    num_bad += !(std::fabs(got[2 * n + i] - ref) <= tolerance);
  }
  EXPECT_EQ(num_bad, 0);
  for (int64_t i = 0; i < 2 * n; ++i) EXPECT_TRUE(std::isnan(got[i])) << "row before the slice";
}

TEST_F(CudaGemm, ZeroTokensIsANoOp) {
  DeviceBuffer weight(8 * 16 * 2);
  Gemm gemm;
  gemm.linear(Tensor(weight.data(), kBF16, {0, 8}, DeviceType::kCuda),
              Tensor(weight.data(), kBF16, {0, 16}, DeviceType::kCuda),
              Tensor(weight.data(), kBF16, {8, 16}, DeviceType::kCuda), nullptr, nullptr);
  EMBER_CUDA_CHECK(cudaDeviceSynchronize());
}

TEST_F(CudaGemm, MismatchedShapesAndDtypesThrow) {
  const int64_t t = 4, n = 8, k = 16;
  DeviceBuffer memory(4 * (t + n + 1) * (k + n + 1));  // backs every tensor; never read
  void* p = memory.data();
  const auto cuda = [p](DType dtype, std::vector<int64_t> shape) {
    return Tensor(p, dtype, std::move(shape), DeviceType::kCuda);
  };
  const Tensor out = cuda(kBF16, {t, n}), x = cuda(kBF16, {t, k}), w = cuda(kBF16, {n, k});
  const Tensor bias = cuda(kF32, {n});
  Gemm gemm;
  const auto throws = [&](Tensor o, Tensor xx, Tensor ww, const Tensor* b) {
    EXPECT_THROW(gemm.linear(o, xx, ww, b, nullptr), std::invalid_argument);
  };
  throws(out, x, cuda(kBF16, {n, k + 1}), nullptr);  // K mismatch
  throws(cuda(kBF16, {t, n + 1}), x, w, nullptr);    // N mismatch
  throws(cuda(kBF16, {t + 1, n}), x, w, nullptr);    // T mismatch
  throws(out, cuda(kBF16, {t, k, 1}), w, nullptr);   // x not 2-D
  throws(out, x, cuda(kF16, {n, k}), nullptr);       // weight dtype differs from x
  throws(cuda(kF32, {t, n}), cuda(kF32, {t, k}), cuda(kF32, {n, k}), nullptr);  // f32 inputs
  throws(cuda(kF16, {t, n}), x, w, nullptr);         // out neither x's dtype nor f32
  throws(cuda(DType::kI32, {t, n}), x, w, nullptr);  // integer out
  throws(out, x, w, &out);                           // bias 2-D bf16
  const Tensor short_bias = cuda(kF32, {n - 1}), bf16_bias = cuda(kBF16, {n});
  throws(out, x, w, &short_bias);
  throws(out, x, w, &bf16_bias);
  throws(out, Tensor(p, kBF16, {t, k}, DeviceType::kCpu), w, nullptr);  // host tensor
  throws(out, cuda(kBF16, {t, 0}), cuda(kBF16, {n, 0}), nullptr);       // K = 0
  try {
    gemm.linear(out, x, cuda(kBF16, {n, k + 1}), nullptr, nullptr);
  } catch (const std::invalid_argument& error) {
    EXPECT_NE(std::string(error.what()).find("weight is [8, 17] bfloat16"), std::string::npos)
        << error.what();
  }
}

// Not a correctness test: prints the throughput of the two shapes that bound a Llama-3-8B step
// (a 4096-token prefill projection, compute-bound; the decode gate_up, weight-bandwidth-bound).
TEST_F(CudaGemm, Timing) {
  struct Shape {
    int64_t t, n, k;
  };
  for (const Shape s : {Shape{4096, 4096, 4096}, Shape{1, 14336 * 2, 4096}}) {
    DeviceBuffer x(s.t * s.k * 2), weight(s.n * s.k * 2), out(s.t * s.n * 2);
    // 0x3C3C is bf16 0.0115: finite values, no denormals, no overflow.
    EMBER_CUDA_CHECK(cudaMemset(x.data(), 0x3C, s.t * s.k * 2));
    EMBER_CUDA_CHECK(cudaMemset(weight.data(), 0x3C, s.n * s.k * 2));
    const Tensor out_t(out.data(), kBF16, {s.t, s.n}, DeviceType::kCuda);
    const Tensor x_t(x.data(), kBF16, {s.t, s.k}, DeviceType::kCuda);
    const Tensor w_t(weight.data(), kBF16, {s.n, s.k}, DeviceType::kCuda);
    Gemm gemm;
    cudaStream_t stream = nullptr;
    cudaEvent_t start = nullptr, stop = nullptr;
    EMBER_CUDA_CHECK(cudaStreamCreate(&stream));
    EMBER_CUDA_CHECK(cudaEventCreate(&start));
    EMBER_CUDA_CHECK(cudaEventCreate(&stop));
    for (int i = 0; i < 10; ++i) gemm.linear(out_t, x_t, w_t, nullptr, stream);  // warm-up
    constexpr int kIterations = 50;
    EMBER_CUDA_CHECK(cudaEventRecord(start, stream));
    for (int i = 0; i < kIterations; ++i) gemm.linear(out_t, x_t, w_t, nullptr, stream);
    EMBER_CUDA_CHECK(cudaEventRecord(stop, stream));
    EMBER_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0.0f;
    EMBER_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    const double seconds = ms / 1e3 / kIterations;
    const double flops = 2.0 * s.t * s.n * s.k;
    const double bytes = 2.0 * (s.t * s.k + s.n * s.k + s.t * s.n);
    std::printf("[ timing ] bf16 T=%lld N=%lld K=%lld: %.1f us, %.1f TFLOP/s, %.0f GB/s\n",
                static_cast<long long>(s.t), static_cast<long long>(s.n),
                static_cast<long long>(s.k), seconds * 1e6, flops / seconds / 1e12,
                bytes / seconds / 1e9);
    EXPECT_GT(ms, 0.0f);
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    cudaStreamDestroy(stream);
  }
}

}  // namespace
}  // namespace engine::cuda
