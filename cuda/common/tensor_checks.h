#pragma once
// Argument checks shared by the CUDA launchers. Each throws std::invalid_argument naming the
// kernel, the argument, what it is and what it should be, before anything is launched.

#include <cstdint>
#include <stdexcept>
#include <string>

#include "backend/backend.h"

namespace engine::cuda::arg_check {

inline std::string describe(const char* kernel, const char* arg, const Tensor& t) {
  return std::string(kernel) + ": " + arg + " " + t.shape_string() + " " + dtype_name(t.dtype);
}

// Defined (unless empty), on a CUDA device, of the given rank.
inline void rank(const char* kernel, const char* arg, const Tensor& t, int expected) {
  if (t.dim() != expected) {
    throw std::invalid_argument(describe(kernel, arg, t) + " must have " +
                                std::to_string(expected) + " dimensions");
  }
  if (t.device != DeviceType::kCuda) {
    throw std::invalid_argument(describe(kernel, arg, t) +
                                " lives in host memory but the CUDA kernel needs device memory");
  }
  if (!t.defined() && t.numel() != 0) {
    throw std::invalid_argument(describe(kernel, arg, t) + " has no data");
  }
}

inline void dtype(const char* kernel, const char* arg, const Tensor& t, DType expected) {
  if (t.dtype != expected) {
    throw std::invalid_argument(describe(kernel, arg, t) + " must have dtype " +
                                dtype_name(expected));
  }
}

// The CUDA backend computes in bf16 or fp16.
inline void compute_dtype(const char* kernel, const char* arg, const Tensor& t) {
  if (t.dtype != DType::kBF16 && t.dtype != DType::kF16) {
    throw std::invalid_argument(describe(kernel, arg, t) +
                                " must have a compute dtype: bfloat16 or float16");
  }
}

// A KV cache in the compute dtype of `compute` (q or q_out), or fp8 e4m3; k and v alike; scales
// positive and finite.
inline void kv_cache(const char* kernel, const Tensor& compute, const Tensor& k_cache,
                     const Tensor& v_cache, const KVCacheScales& scales) {
  if (k_cache.dtype != compute.dtype && k_cache.dtype != DType::kFP8E4M3) {
    throw std::invalid_argument(describe(kernel, "k_cache", k_cache) + " must have dtype " +
                                dtype_name(compute.dtype) + " (the compute dtype) or " +
                                dtype_name(DType::kFP8E4M3));
  }
  dtype(kernel, "v_cache", v_cache, k_cache.dtype);
  check_kv_cache_scales(kernel, scales);
}

inline void size(const char* kernel, const char* arg, const Tensor& t, int dim, int64_t expected,
                 const char* expected_name) {
  if (t.size(dim) != expected) {
    throw std::invalid_argument(describe(kernel, arg, t) + ": dimension " + std::to_string(dim) +
                                " must be " + std::to_string(expected) + " (" + expected_name +
                                ")");
  }
}

inline void min_size(const char* kernel, const char* arg, const Tensor& t, int dim, int64_t minimum,
                     const char* minimum_name) {
  if (t.size(dim) < minimum) {
    throw std::invalid_argument(describe(kernel, arg, t) + ": dimension " + std::to_string(dim) +
                                " must be at least " + std::to_string(minimum) + " (" +
                                minimum_name + ")");
  }
}

}  // namespace engine::cuda::arg_check
