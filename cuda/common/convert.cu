#include <algorithm>
#include <stdexcept>
#include <string>

#include "common/convert.cuh"
#include "common/convert.h"
#include "common/cuda_check.h"

namespace engine::cuda {
namespace {

// 256 threads and at most 4096 blocks: enough resident warps to saturate HBM on an H100/H200
// (132 SMs x 2048 threads), while the grid-stride loop covers larger buffers.
constexpr int kThreadsPerBlock = 256;
constexpr int64_t kMaxBlocks = 4096;

template <typename Src, typename Dst, typename Op>
void launch_convert(const Src* src, Dst* dst, int64_t num_elements, cudaStream_t stream, Op op) {
  if (num_elements < 0) {
    throw std::invalid_argument("convert: num_elements is " + std::to_string(num_elements) +
                                " but must be >= 0");
  }
  if (num_elements == 0) return;  // a zero-block launch is an error
  const int64_t num_blocks =
      std::min(kMaxBlocks, (num_elements + kThreadsPerBlock - 1) / kThreadsPerBlock);
  convert_kernel<<<static_cast<unsigned>(num_blocks), kThreadsPerBlock, 0, stream>>>(
      src, dst, num_elements, op);
  EMBER_CUDA_CHECK_LAUNCH();
}

}  // namespace

void convert_f32_to_bf16(const float* src, __nv_bfloat16* dst, int64_t num_elements,
                         cudaStream_t stream) {
  launch_convert(src, dst, num_elements, stream, ToBf16{});
}

void convert_bf16_to_f32(const __nv_bfloat16* src, float* dst, int64_t num_elements,
                         cudaStream_t stream) {
  launch_convert(src, dst, num_elements, stream, FromBf16{});
}

}  // namespace engine::cuda
