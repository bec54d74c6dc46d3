#pragma once
// Cheap argument checks shared by the CPU kernels. Each throws std::invalid_argument naming the
// kernel, the argument, what it is and what it should be.

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "backend/backend.h"

namespace engine::cpu {

inline void check_dtype(const char* kernel, const char* arg, const Tensor& t, DType expected) {
  if (t.dtype != expected) {
    throw std::invalid_argument(std::string(kernel) + ": " + arg + " has dtype " +
                                dtype_name(t.dtype) + " but must be " + dtype_name(expected));
  }
}

// Weights and embedding tables may be stored in any float format.
inline void check_float_dtype(const char* kernel, const char* arg, const Tensor& t) {
  if (t.dtype != DType::kF32 && t.dtype != DType::kBF16 && t.dtype != DType::kF16) {
    throw std::invalid_argument(std::string(kernel) + ": " + arg + " has dtype " +
                                dtype_name(t.dtype) + " but must be float32, bfloat16 or float16");
  }
}

// A CPU KV cache holds fp32 or fp8 e4m3; k and v share one dtype. Its scales are positive and
// finite.
inline void check_kv_cache(const char* kernel, const Tensor& k_cache, const Tensor& v_cache,
                           const KVCacheScales& scales) {
  if (k_cache.dtype != DType::kF32 && k_cache.dtype != DType::kFP8E4M3) {
    throw std::invalid_argument(std::string(kernel) + ": k_cache has dtype " +
                                dtype_name(k_cache.dtype) +
                                " but must be float32 or float8_e4m3fn");
  }
  check_dtype(kernel, "v_cache", v_cache, k_cache.dtype);
  check_kv_cache_scales(kernel, scales);
}

inline void check_defined(const char* kernel, const char* arg, const Tensor& t) {
  if (!t.defined() && t.numel() != 0) {
    throw std::invalid_argument(std::string(kernel) + ": " + arg + " " + t.shape_string() +
                                " has no data");
  }
  if (t.device != DeviceType::kCpu) {
    throw std::invalid_argument(std::string(kernel) + ": " + arg +
                                " lives on a CUDA device but the CPU backend needs host memory");
  }
}

inline void check_rank(const char* kernel, const char* arg, const Tensor& t, int rank) {
  check_defined(kernel, arg, t);
  if (t.dim() != rank) {
    throw std::invalid_argument(std::string(kernel) + ": " + arg + " has shape " +
                                t.shape_string() + " but must have " + std::to_string(rank) +
                                " dimensions");
  }
}

inline void check_size(const char* kernel, const char* arg, const Tensor& t, int dim,
                       int64_t expected, const char* expected_name) {
  if (t.size(dim) != expected) {
    throw std::invalid_argument(
        std::string(kernel) + ": " + arg + " has shape " + t.shape_string() + " but dimension " +
        std::to_string(dim) + " must be " + std::to_string(expected) + " (" + expected_name + ")");
  }
}

}  // namespace engine::cpu
