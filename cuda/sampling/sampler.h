#pragma once
// GpuSampler: the CPU Sampler's semantics (cpp/src/runtime/sampler.h) on device logits. Masks,
// logit_bias, penalties, temperature, top-k / top-p / min-p, the seeded draw and raw-logit
// logprobs run on the GPU, one CTA per row; only the sampled ids and the asked logprobs come back
// to the host, in one small device-to-host copy per call. Kernels in sampler.cuh.

#include <cuda_runtime.h>

#include <cstddef>
#include <vector>

#include "backend/tensor.h"
#include "runtime/sampler.h"

namespace engine::cuda {

class GpuSampler {
 public:
  // Allocates every buffer for max_rows x vocab_size once; a larger call grows them (never
  // shrinks), so steady-state calls allocate nothing.
  GpuSampler(int max_rows, int vocab_size);
  ~GpuSampler();
  GpuSampler(const GpuSampler&) = delete;
  GpuSampler& operator=(const GpuSampler&) = delete;

  // logits: [rows.size(), vocab_size] f32 on the device, left unchanged. The same rows give the
  // same tokens as Sampler::sample on a host copy of the logits (up to exact ties), whatever the
  // batch around them. Synchronises `stream` before returning the results.
  std::vector<SampleResult> sample(const Tensor& logits, const std::vector<SamplingRow>& rows,
                                   cudaStream_t stream);
  // sample() in two halves, so the caller can wait for the stream its own way: launch enqueues
  // the kernels and the copy of the results to pinned host memory; collect reads them once the
  // stream has been synchronized.
  void launch(const Tensor& logits, const std::vector<SamplingRow>& rows, cudaStream_t stream);
  std::vector<SampleResult> collect() const;

 private:
  void reserve(int num_rows, int vocab_size);
  void reserve_uploads(size_t num_args_bytes, size_t num_tokens);
  void release();

  int capacity_rows_ = 0;
  int capacity_vocab_ = 0;
  // Device workspace, [capacity_rows_, capacity_vocab_] each.
  float* work_ = nullptr;
  int* marks_ = nullptr;  // kept all zero between calls
  unsigned long long* keys_ = nullptr;
  // Per-call uploads and results: device buffers with pinned host mirrors.
  size_t capacity_upload_bytes_ = 0;
  char* upload_ = nullptr;
  char* upload_host_ = nullptr;
  // What collect() needs of the last launch.
  struct RowLogprobs {
    int num_logprobs;  // -1: none asked
    int top_offset;
  };
  std::vector<RowLogprobs> last_rows_;
  size_t top_ids_offset_ = 0, top_logprobs_offset_ = 0;
  size_t capacity_result_bytes_ = 0;
  char* results_ = nullptr;
  char* results_host_ = nullptr;
};

}  // namespace engine::cuda
