// linear against a double-precision naive loop, for every weight dtype and both kernel paths.

#include <gtest/gtest.h>
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <random>
#include <stdexcept>

#include "backend/cpu/linear.h"
#include "cpu_test_util.h"

namespace engine::test {
namespace {

struct LinearCase {
  int64_t num_t, num_n, num_k;
  DType dtype;
  bool with_bias;
};

std::vector<double> reference_linear(const float* x, const std::vector<float>& w, const float* bias,
                                     int64_t num_t, int64_t num_n, int64_t num_k) {
  std::vector<double> out(num_t * num_n);
  for (int64_t t = 0; t < num_t; ++t)
    for (int64_t n = 0; n < num_n; ++n) {
      double sum = bias ? bias[n] : 0.0;
      for (int64_t k = 0; k < num_k; ++k) sum += double(x[t * num_k + k]) * w[n * num_k + k];
      out[t * num_n + n] = sum;
    }
  return out;
}

void run_case(const LinearCase& c, std::mt19937& rng) {
  HostTensor x = random_f32({c.num_t, c.num_k}, rng);
  HostTensor w32 = random_f32({c.num_n, c.num_k}, rng);
  std::vector<float> w_rounded;
  HostTensor w = to_dtype(w32, c.dtype, &w_rounded);
  HostTensor bias = random_f32({c.num_n}, rng);
  HostTensor out = poisoned_f32({c.num_t, c.num_n});
  const Tensor* b = c.with_bias ? &bias.tensor : nullptr;
  cpu::linear(out.tensor, x.tensor, w.tensor, b);
  auto expected =
      reference_linear(x.ptr<float>(), w_rounded, c.with_bias ? bias.ptr<float>() : nullptr,
                       c.num_t, c.num_n, c.num_k);
  // fp32 accumulation of K products of magnitude <= 1: error grows ~ sqrt(K) * 2^-24 * K.
  double ratio = worst_error_ratio(out.ptr<float>(), expected, 1e-4, 1e-4);
  EXPECT_LE(ratio, 1.0) << "T=" << c.num_t << " N=" << c.num_n << " K=" << c.num_k
                        << " dtype=" << dtype_name(c.dtype) << " bias=" << c.with_bias;
}

TEST(CpuLinear, MatchesReferenceAllDtypesAndShapes) {
  std::mt19937 rng(1);
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16})
    for (int64_t t : {1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 33, 100})
      for (auto [n, k] :
           {std::pair<int64_t, int64_t>{1, 1}, {7, 13}, {67, 33}, {131, 64}, {200, 96}})
        run_case({t, n, k, dtype, (t + n) % 2 == 0}, rng);
}

TEST(CpuLinear, ModelShapesWithBias) {
  std::mt19937 rng(2);
  for (int64_t t : {1, 8, 33, 130})
    for (DType dtype : {DType::kBF16, DType::kF32}) run_case({t, 192, 576, dtype, true}, rng);
}

TEST(CpuLinear, ZeroInFeaturesGivesBias) {
  std::mt19937 rng(3);
  run_case({5, 9, 0, DType::kF32, true}, rng);
}

TEST(CpuLinear, RejectsMismatchedShapesAndDtypes) {
  std::mt19937 rng(4);
  HostTensor x = random_f32({2, 8}, rng);
  HostTensor w = random_f32({3, 9}, rng);
  HostTensor out = poisoned_f32({2, 3});
  EXPECT_THROW(cpu::linear(out.tensor, x.tensor, w.tensor, nullptr), std::invalid_argument);
  HostTensor w_ok = random_f32({3, 8}, rng);
  HostTensor bad_out = poisoned_f32({2, 4});
  EXPECT_THROW(cpu::linear(bad_out.tensor, x.tensor, w_ok.tensor, nullptr), std::invalid_argument);
  HostTensor w_int(DType::kI32, {3, 8});
  EXPECT_THROW(cpu::linear(out.tensor, x.tensor, w_int.tensor, nullptr), std::invalid_argument);
  HostTensor bias = random_f32({4}, rng);
  EXPECT_THROW(cpu::linear(out.tensor, x.tensor, w_ok.tensor, &bias.tensor), std::invalid_argument);
}

// Timing, not a correctness test: run with --gtest_also_run_disabled_tests.
TEST(CpuLinear, DISABLED_Benchmark) {
  std::mt19937 rng(5);
  for (int64_t n : {3072, 576, 49152})
    for (int64_t t : {1, 8, 32, 128, 512, 2048}) {
      const int64_t k = 576;
      HostTensor x = random_f32({t, k}, rng);
      std::vector<float> rounded;
      HostTensor w = to_dtype(random_f32({n, k}, rng), DType::kBF16, &rounded);
      HostTensor out = poisoned_f32({t, n});
      double best = 1e30;
      int reps = n >= 49152 ? 5 : 40;
      for (int r = 0; r < reps; ++r) {
        auto start = std::chrono::steady_clock::now();
        cpu::linear(out.tensor, x.tensor, w.tensor, nullptr);
        double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        best = std::min(best, s);
      }
      double gbps = (w.tensor.nbytes() + x.tensor.nbytes() + out.tensor.nbytes()) / best / 1e9;
      double gflops = 2.0 * t * n * k / best / 1e9;
      std::printf("linear T=%4ld N=%5ld K=%ld bf16: %8.1f us  %6.1f GB/s  %6.1f GFLOP/s\n", t, n, k,
                  best * 1e6, gbps, gflops);
    }
}

// The linears of one SmolLM2-135M decode step (30 layers + lm_head, 269 MB of bf16 weights, more
// than the caches hold): the floor that weight streaming puts under tokens/s.
TEST(CpuLinear, DISABLED_BenchmarkDecodeStepWeights) {
  std::mt19937 rng(6);
  struct Layer {
    int64_t n, k;
  };
  std::vector<Layer> shapes;
  for (int l = 0; l < 30; ++l)
    for (Layer s : {Layer{960, 576}, Layer{576, 576}, Layer{3072, 576}, Layer{576, 1536}})
      shapes.push_back(s);
  shapes.push_back({49152, 576});
  std::vector<HostTensor> weights;
  size_t total_bytes = 0;
  for (Layer s : shapes) {
    HostTensor w(DType::kBF16, {s.n, s.k});
    for (int64_t i = 0; i < w.numel(); ++i)
      w.ptr<uint16_t>()[i] = float_to_bf16((rng() % 1000) * 1e-3f);
    total_bytes += w.tensor.nbytes();
    weights.push_back(std::move(w));
  }
  for (int64_t t : {1, 8}) {
    HostTensor x = random_f32({t, 1536}, rng);
    HostTensor out = poisoned_f32({t, 49152});
    double best = 1e30;
    for (int r = 0; r < 5; ++r) {
      auto start = std::chrono::steady_clock::now();
      for (size_t i = 0; i < shapes.size(); ++i) {
        Tensor xi = Tensor(x.tensor.data, DType::kF32, {t, shapes[i].k});
        Tensor oi = Tensor(out.tensor.data, DType::kF32, {t, shapes[i].n});
        cpu::linear(oi, xi, weights[i].tensor, nullptr);
      }
      best = std::min(
          best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    std::printf("decode step linears T=%ld: %.2f ms, %.1f GB/s of weights, %.1f steps/s\n", t,
                best * 1e3, total_bytes / best / 1e9, 1.0 / best);
  }
}

}  // namespace
}  // namespace engine::test
