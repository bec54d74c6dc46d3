#include "device_fill.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <stdexcept>
#include <string>
#include <type_traits>

#include "common/cuda_check.h"

namespace engine::bench {
namespace {

constexpr int kThreads = 256;
constexpr unsigned kMaxBlocks = 65535u * 16u;

// splitmix64's finaliser: consecutive indices give independent-looking 64-bit words.
__device__ uint64_t mix(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

template <typename T>
__global__ void fill_uniform_kernel(T* data,  // [n]
                                    size_t n, uint64_t seed, float lo, float hi) {
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    // The top 24 bits make a float in [0, 1) with every value exactly representable.
    const float u = float(mix(seed * 0x9e3779b97f4a7c15ull + i) >> 40) * (1.0f / 16777216.0f);
    const float value = lo + (hi - lo) * u;
    if constexpr (std::is_same_v<T, float>) {
      data[i] = value;
    } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      data[i] = __float2bfloat16(value);
    } else if constexpr (std::is_same_v<T, __nv_fp8_e4m3>) {
      data[i] = __nv_fp8_e4m3(value);
    } else {
      data[i] = __float2half(value);
    }
  }
}

__global__ void read_through_kernel(const uint4* data,  // [n]
                                    size_t n, unsigned* sink) {
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  unsigned acc = 0;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const uint4 v = data[i];
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  // NOTE: a store the compiler cannot prove dead keeps the loads; it almost never happens.
  if (acc == 0x9e3779b9u) *sink = acc;
}

unsigned blocks_for(size_t n) {
  const size_t wanted = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(wanted < kMaxBlocks ? (wanted > 0 ? wanted : 1) : kMaxBlocks);
}

}  // namespace

void fill_uniform(Tensor t, uint64_t seed, float lo, float hi, cudaStream_t stream) {
  const size_t n = static_cast<size_t>(t.numel());
  if (n == 0) return;
  const unsigned blocks = blocks_for(n);
  switch (t.dtype) {
    case DType::kF32:
      fill_uniform_kernel<<<blocks, kThreads, 0, stream>>>(t.ptr<float>(), n, seed, lo, hi);
      break;
    case DType::kBF16:
      fill_uniform_kernel<<<blocks, kThreads, 0, stream>>>(t.ptr<__nv_bfloat16>(), n, seed, lo, hi);
      break;
    case DType::kF16:
      fill_uniform_kernel<<<blocks, kThreads, 0, stream>>>(t.ptr<__half>(), n, seed, lo, hi);
      break;
    case DType::kFP8E4M3:
      fill_uniform_kernel<<<blocks, kThreads, 0, stream>>>(t.ptr<__nv_fp8_e4m3>(), n, seed, lo, hi);
      break;
    default:
      throw std::invalid_argument(std::string("fill_uniform: tensor is ") + dtype_name(t.dtype) +
                                  " but must be float32, bfloat16, float16 or float8_e4m3fn");
  }
  EMBER_CUDA_CHECK_LAUNCH();
}

void read_through(const void* data, size_t nbytes, cudaStream_t stream) {
  static unsigned* sink = nullptr;
  if (sink == nullptr) EMBER_CUDA_CHECK(cudaMalloc(&sink, sizeof(unsigned)));
  const size_t n = nbytes / sizeof(uint4);
  read_through_kernel<<<blocks_for(n), kThreads, 0, stream>>>(static_cast<const uint4*>(data), n,
                                                              sink);
  EMBER_CUDA_CHECK_LAUNCH();
}

}  // namespace engine::bench
