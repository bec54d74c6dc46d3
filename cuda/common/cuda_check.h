#pragma once
// Turns CUDA runtime and cuBLAS status codes into exceptions at the call site, so an error
// names the failing call, its file:line and the library's own description of the error.
//
//   EMBER_CUDA_CHECK(cudaMemcpyAsync(...));
//   EMBER_CUBLAS_CHECK(cublasLtMatmul(...));

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace engine::cuda {

[[noreturn]] inline void throw_cuda_error(cudaError_t status, const char* expr, const char* file,
                                          int line) {
  throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + expr +
                           " failed: " + cudaGetErrorName(status) + " (" +
                           cudaGetErrorString(status) + ")");
}

[[noreturn]] inline void throw_cublas_error(cublasStatus_t status, const char* expr,
                                            const char* file, int line) {
  throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + expr +
                           " failed: " + cublasGetStatusName(status) + " (" +
                           cublasGetStatusString(status) + ")");
}

inline void check(cudaError_t status, const char* expr, const char* file, int line) {
  if (status != cudaSuccess) {
    // NOTE: the runtime also keeps a non-sticky error as the thread's "last error"; consume it,
    // or the next EMBER_CUDA_CHECK_LAUNCH() would blame an unrelated kernel launch.
    cudaGetLastError();
    throw_cuda_error(status, expr, file, line);
  }
}

inline void check(cublasStatus_t status, const char* expr, const char* file, int line) {
  if (status != CUBLAS_STATUS_SUCCESS) throw_cublas_error(status, expr, file, line);
}

}  // namespace engine::cuda

// One macro for both libraries: overload resolution picks the right check() by status type.
#define EMBER_CUDA_CHECK(expr) ::engine::cuda::check((expr), #expr, __FILE__, __LINE__)
#define EMBER_CUBLAS_CHECK(expr) ::engine::cuda::check((expr), #expr, __FILE__, __LINE__)
// A kernel launch reports a bad configuration only through cudaGetLastError().
#define EMBER_CUDA_CHECK_LAUNCH() EMBER_CUDA_CHECK(cudaGetLastError())
