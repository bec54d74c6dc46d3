#include "backend/cpu/activation.h"

#include <cmath>

#include "backend/cpu/checks.h"

namespace engine::cpu {

void silu_and_mul(Tensor out, Tensor x) {
  check_rank("silu_and_mul", "out", out, 2);
  check_rank("silu_and_mul", "x", x, 2);
  check_dtype("silu_and_mul", "out", out, DType::kF32);
  check_dtype("silu_and_mul", "x", x, DType::kF32);
  check_size("silu_and_mul", "x", x, 0, out.size(0), "tokens T of out");
  check_size("silu_and_mul", "x", x, 1, 2 * out.size(1), "2 * I for out [T, I]");
  const int64_t num_t = out.size(0), inter = out.size(1);
  const float* xs = x.ptr<float>();
  float* o = out.ptr<float>();
#pragma omp parallel for schedule(static) if (num_t * inter >= (1 << 15))
  for (int64_t t = 0; t < num_t; ++t) {
    const float* gate = xs + t * 2 * inter;
    const float* up = gate + inter;
    float* row = o + t * inter;
    for (int64_t i = 0; i < inter; ++i) row[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
  }
}

}  // namespace engine::cpu
