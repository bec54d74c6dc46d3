// rms_norm, add_rms_norm and silu_and_mul against double-precision naive loops.

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <stdexcept>

#include "backend/cpu/activation.h"
#include "backend/cpu/norm.h"
#include "cpu_test_util.h"

namespace engine::test {
namespace {

constexpr float kEps = 1e-5f;

std::vector<double> reference_rms_norm(const float* x, const float* w, int64_t rows, int64_t dim) {
  std::vector<double> out(rows * dim);
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0.0;
    for (int64_t d = 0; d < dim; ++d) ss += double(x[r * dim + d]) * x[r * dim + d];
    double inv = 1.0 / std::sqrt(ss / dim + kEps);
    for (int64_t d = 0; d < dim; ++d) out[r * dim + d] = x[r * dim + d] * inv * w[d];
  }
  return out;
}

TEST(CpuNorm, RmsNormMatchesReference) {
  std::mt19937 rng(11);
  for (int64_t rows : {1, 7, 33, 300})
    for (int64_t dim : {13, 64, 576}) {
      HostTensor x = random_f32({rows, dim}, rng, -3.0f, 3.0f);
      HostTensor w = random_f32({dim}, rng, 0.5f, 1.5f);
      HostTensor out = poisoned_f32({rows, dim});
      cpu::rms_norm(out.tensor, x.tensor, w.tensor, kEps);
      auto expected = reference_rms_norm(x.ptr<float>(), w.ptr<float>(), rows, dim);
      EXPECT_LE(worst_error_ratio(out.ptr<float>(), expected, 1e-5, 1e-5), 1.0)
          << rows << "x" << dim;
    }
}

TEST(CpuNorm, RmsNormInPlace) {
  std::mt19937 rng(12);
  HostTensor x = random_f32({7, 576}, rng, -3.0f, 3.0f);
  HostTensor w = random_f32({576}, rng, 0.5f, 1.5f);
  auto expected = reference_rms_norm(x.ptr<float>(), w.ptr<float>(), 7, 576);
  cpu::rms_norm(x.tensor, x.tensor, w.tensor, kEps);
  EXPECT_LE(worst_error_ratio(x.ptr<float>(), expected, 1e-5, 1e-5), 1.0);
}

TEST(CpuNorm, AddRmsNormUpdatesResidualAndX) {
  std::mt19937 rng(13);
  for (int64_t rows : {1, 7, 33, 300}) {
    const int64_t dim = 576;
    HostTensor x = random_f32({rows, dim}, rng, -2.0f, 2.0f);
    HostTensor residual = random_f32({rows, dim}, rng, -2.0f, 2.0f);
    HostTensor w = random_f32({dim}, rng, 0.5f, 1.5f);
    std::vector<float> sum(rows * dim);
    std::vector<double> expected_sum(rows * dim);
    for (int64_t i = 0; i < rows * dim; ++i) {
      sum[i] = residual.ptr<float>()[i] + x.ptr<float>()[i];
      expected_sum[i] = sum[i];
    }
    auto expected_x = reference_rms_norm(sum.data(), w.ptr<float>(), rows, dim);
    cpu::add_rms_norm(x.tensor, residual.tensor, w.tensor, kEps);
    EXPECT_LE(worst_error_ratio(residual.ptr<float>(), expected_sum, 1e-6, 1e-6), 1.0);
    EXPECT_LE(worst_error_ratio(x.ptr<float>(), expected_x, 1e-5, 1e-5), 1.0);
  }
}

TEST(CpuNorm, RejectsWrongShapes) {
  std::mt19937 rng(14);
  HostTensor x = random_f32({3, 8}, rng);
  HostTensor w = random_f32({9}, rng);
  HostTensor out = poisoned_f32({3, 8});
  EXPECT_THROW(cpu::rms_norm(out.tensor, x.tensor, w.tensor, kEps), std::invalid_argument);
  HostTensor w8 = random_f32({8}, rng);
  HostTensor res = random_f32({2, 8}, rng);
  EXPECT_THROW(cpu::add_rms_norm(x.tensor, res.tensor, w8.tensor, kEps), std::invalid_argument);
}

TEST(CpuActivation, SiluAndMulMatchesReference) {
  std::mt19937 rng(15);
  for (int64_t rows : {1, 7, 33})
    for (int64_t inter : {5, 64, 1536}) {
      HostTensor x = random_f32({rows, 2 * inter}, rng, -6.0f, 6.0f);
      HostTensor out = poisoned_f32({rows, inter});
      cpu::silu_and_mul(out.tensor, x.tensor);
      std::vector<double> expected(rows * inter);
      for (int64_t t = 0; t < rows; ++t)
        for (int64_t i = 0; i < inter; ++i) {
          double g = x.ptr<float>()[t * 2 * inter + i];
          double u = x.ptr<float>()[t * 2 * inter + inter + i];
          expected[t * inter + i] = g / (1.0 + std::exp(-g)) * u;
        }
      EXPECT_LE(worst_error_ratio(out.ptr<float>(), expected, 1e-6, 1e-5), 1.0)
          << rows << "x" << inter;
    }
  HostTensor bad = poisoned_f32({2, 9});
  HostTensor x = random_f32({2, 20}, rng);
  EXPECT_THROW(cpu::silu_and_mul(bad.tensor, x.tensor), std::invalid_argument);
}

}  // namespace
}  // namespace engine::test
