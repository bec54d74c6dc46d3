#include "backend/cpu/norm.h"

#include <cmath>

#include "backend/cpu/checks.h"

namespace engine::cpu {
namespace {

// Rows below which a parallel region costs more than it saves (decode has 1..8 rows).
constexpr int64_t kMinParallelElems = 1 << 15;

void normalize_row(float* out /*[D]*/, const float* x /*[D]*/, const float* weight /*[D]*/,
                   int64_t dim, float eps) {
  float sum_squares = 0.0f;
  for (int64_t d = 0; d < dim; ++d) sum_squares += x[d] * x[d];
  const float inv_rms = 1.0f / std::sqrt(sum_squares / static_cast<float>(dim) + eps);
  for (int64_t d = 0; d < dim; ++d) out[d] = x[d] * inv_rms * weight[d];
}

void check_norm_args(const char* kernel, const char* x_name, const Tensor& x, const Tensor& other,
                     const char* other_name, const Tensor& weight) {
  check_rank(kernel, x_name, x, 2);
  check_rank(kernel, other_name, other, 2);
  check_rank(kernel, "weight", weight, 1);
  check_dtype(kernel, x_name, x, DType::kF32);
  check_dtype(kernel, other_name, other, DType::kF32);
  check_dtype(kernel, "weight", weight, DType::kF32);
  check_size(kernel, other_name, other, 0, x.size(0), "rows R of x");
  check_size(kernel, other_name, other, 1, x.size(1), "hidden size D of x");
  check_size(kernel, "weight", weight, 0, x.size(1), "hidden size D of x");
}

}  // namespace

void rms_norm(Tensor out, Tensor x, Tensor weight, float eps) {
  check_norm_args("rms_norm", "x", x, out, "out", weight);
  const int64_t num_rows = x.size(0), dim = x.size(1);
  const float* xs = x.ptr<float>();
  const float* w = weight.ptr<float>();
  float* o = out.ptr<float>();
#pragma omp parallel for schedule(static) if (num_rows * dim >= kMinParallelElems)
  for (int64_t r = 0; r < num_rows; ++r) normalize_row(o + r * dim, xs + r * dim, w, dim, eps);
}

void add_rms_norm(Tensor x, Tensor residual, Tensor weight, float eps) {
  check_norm_args("add_rms_norm", "x", x, residual, "residual", weight);
  const int64_t num_rows = x.size(0), dim = x.size(1);
  float* xs = x.ptr<float>();
  float* res = residual.ptr<float>();
  const float* w = weight.ptr<float>();
#pragma omp parallel for schedule(static) if (num_rows * dim >= kMinParallelElems)
  for (int64_t r = 0; r < num_rows; ++r) {
    float* res_row = res + r * dim;
    float* x_row = xs + r * dim;
    for (int64_t d = 0; d < dim; ++d) res_row[d] += x_row[d];
    normalize_row(x_row, res_row, w, dim, eps);
  }
}

}  // namespace engine::cpu
