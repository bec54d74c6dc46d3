#include <algorithm>
#include <cstdint>

#include "activation/activation.cuh"
#include "activation/activation.h"
#include "common/cuda_check.h"
#include "common/pack.cuh"
#include "common/tensor_checks.h"

namespace engine::cuda {
namespace {

constexpr int kMaxThreads = 256;
constexpr int64_t kMaxChunksPerRow = 65535;  // gridDim.y's limit

template <typename T>
void launch_silu_and_mul(T* out, const T* x, int64_t num_tokens, int64_t inter, bool vectorize,
                         cudaStream_t stream) {
  const auto launch = [&]<int kVec>() {
    const int64_t num_packs = inter / kVec;
    const int threads =
        static_cast<int>(std::clamp<int64_t>((num_packs + 31) / 32 * 32, 32, kMaxThreads));
    const int64_t chunks = std::min(kMaxChunksPerRow, (num_packs + threads - 1) / threads);
    const dim3 grid(static_cast<unsigned>(num_tokens), static_cast<unsigned>(chunks));
    silu_and_mul_kernel<T, kVec><<<grid, threads, 0, stream>>>(out, x, inter);
  };
  if (vectorize) {
    launch.template operator()<kPackElems<T>>();
  } else {
    launch.template operator()<1>();
  }
}

}  // namespace

void silu_and_mul(Tensor out, Tensor x, cudaStream_t stream) {
  const char* kn = "silu_and_mul";
  arg_check::rank(kn, "out", out, 2);
  arg_check::rank(kn, "x", x, 2);
  arg_check::compute_dtype(kn, "out", out);
  arg_check::dtype(kn, "x", x, out.dtype);
  arg_check::size(kn, "x", x, 0, out.size(0), "tokens T of out");
  arg_check::size(kn, "x", x, 1, 2 * out.size(1), "2 * I for out [T, I]");
  const int64_t num_tokens = out.size(0), inter = out.size(1);
  if (num_tokens == 0 || inter == 0) return;
  if (num_tokens > INT32_MAX) {
    throw std::invalid_argument(arg_check::describe(kn, "out", out) +
                                " has more than 2^31 - 1 tokens");
  }
  const bool vectorize = inter % 8 == 0 && is_aligned_16(out.data) && is_aligned_16(x.data);
  if (out.dtype == DType::kBF16) {
    launch_silu_and_mul(out.ptr<__nv_bfloat16>(), x.ptr<const __nv_bfloat16>(), num_tokens, inter,
                        vectorize, stream);
  } else {
    launch_silu_and_mul(out.ptr<__half>(), x.ptr<const __half>(), num_tokens, inter, vectorize,
                        stream);
  }
  EMBER_CUDA_CHECK_LAUNCH();
}

}  // namespace engine::cuda
