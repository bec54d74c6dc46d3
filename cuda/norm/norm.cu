#include <algorithm>
#include <climits>
#include <stdexcept>
#include <string>

#include "common/cuda_check.h"
#include "common/pack.cuh"
#include "common/tensor_checks.h"
#include "norm/norm.cuh"
#include "norm/norm.h"

namespace engine::cuda {
namespace {

void check_norm_args(const char* kernel, const char* x_name, const Tensor& x,
                     const char* other_name, const Tensor& other, const Tensor& weight) {
  arg_check::rank(kernel, x_name, x, 2);
  arg_check::rank(kernel, other_name, other, 2);
  arg_check::rank(kernel, "weight", weight, 1);
  arg_check::compute_dtype(kernel, x_name, x);
  arg_check::dtype(kernel, other_name, other, x.dtype);
  arg_check::dtype(kernel, "weight", weight, DType::kF32);
  arg_check::size(kernel, other_name, other, 0, x.size(0), "rows R of x");
  arg_check::size(kernel, other_name, other, 1, x.size(1), "hidden size D of x");
  arg_check::size(kernel, "weight", weight, 0, x.size(1), "hidden size D of x");
  if (x.size(1) > INT_MAX || x.size(0) > INT_MAX) {
    throw std::invalid_argument(arg_check::describe(kernel, x_name, x) +
                                " has more than 2^31 - 1 rows or columns");
  }
}

// One thread per pack up to 1024 (a 4096-wide bf16 row: 512 threads, one 16-byte load each);
// wider rows loop. Whole warps, for block_sum's full-mask shuffles.
int threads_for(int64_t num_packs) {
  return static_cast<int>(std::clamp<int64_t>((num_packs + 31) / 32 * 32, 32, 1024));
}

template <typename T, typename Launch>
void dispatch_vec(bool vectorize, Launch&& launch) {
  if (vectorize) {
    launch.template operator()<T, kPackElems<T>>();
  } else {
    launch.template operator()<T, 1>();
  }
}

template <typename Launch>
void dispatch_dtype(DType dtype, bool vectorize, Launch&& launch) {
  if (dtype == DType::kBF16) {
    dispatch_vec<__nv_bfloat16>(vectorize, launch);
  } else {
    dispatch_vec<__half>(vectorize, launch);
  }
}

}  // namespace

void rms_norm(Tensor out, Tensor x, Tensor weight, float eps, cudaStream_t stream) {
  check_norm_args("rms_norm", "x", x, "out", out, weight);
  const int64_t num_rows = x.size(0);
  const int dim = static_cast<int>(x.size(1));
  if (num_rows == 0 || dim == 0) return;
  const bool vectorize = dim % 8 == 0 && is_aligned_16(x.data) && is_aligned_16(out.data) &&
                         is_aligned_16(weight.data);
  dispatch_dtype(x.dtype, vectorize, [&]<typename T, int kVec>() {
    rms_norm_kernel<T, kVec>
        <<<static_cast<unsigned>(num_rows), threads_for(dim / kVec), 0, stream>>>(
            out.ptr<T>(), x.ptr<const T>(), weight.ptr<const float>(), dim, eps);
  });
  EMBER_CUDA_CHECK_LAUNCH();
}

void add_rms_norm(Tensor x, Tensor residual, Tensor weight, float eps, cudaStream_t stream) {
  check_norm_args("add_rms_norm", "x", x, "residual", residual, weight);
  const int64_t num_rows = x.size(0);
  const int dim = static_cast<int>(x.size(1));
  if (num_rows == 0 || dim == 0) return;
  if (x.data == residual.data) {
    throw std::invalid_argument("add_rms_norm: x and residual must be different buffers");
  }
  const bool vectorize = dim % 8 == 0 && is_aligned_16(x.data) && is_aligned_16(residual.data) &&
                         is_aligned_16(weight.data);
  dispatch_dtype(x.dtype, vectorize, [&]<typename T, int kVec>() {
    add_rms_norm_kernel<T, kVec>
        <<<static_cast<unsigned>(num_rows), threads_for(dim / kVec), 0, stream>>>(
            x.ptr<T>(), residual.ptr<T>(), weight.ptr<const float>(), dim, eps);
  });
  EMBER_CUDA_CHECK_LAUNCH();
}

}  // namespace engine::cuda
