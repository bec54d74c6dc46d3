#pragma once
// GpuSampler: the CPU Sampler's semantics (cpp/src/runtime/sampler.h) on device logits. Masks,
// logit_bias, penalties, temperature, top-k / top-p / min-p, the seeded draw and raw-logit
// logprobs run on the GPU, one CTA per row; only the sampled ids and the asked logprobs come back
// to the host, in one small device-to-host copy per call. Kernels in sampler.cuh.

#include <cuda_runtime.h>

#include <cstddef>
#include <span>
#include <vector>

#include "backend/tensor.h"
#include "runtime/sampler.h"

namespace engine::cuda {

class GpuSampler {
 public:
  // Allocates every buffer for launches of max_rows x vocab_size and launch_scores of
  // max_score_rows rows once; a larger call grows them (never shrinks), as does a launch whose
  // penalty, mask and logit_bias ids outgrow its upload, so steady-state calls allocate nothing.
  GpuSampler(int max_rows, int vocab_size, int max_score_rows = 0);
  ~GpuSampler();
  GpuSampler(const GpuSampler&) = delete;
  GpuSampler& operator=(const GpuSampler&) = delete;

  // logits: [rows.size(), vocab_size] f32 on the device, left unchanged. The same rows give the
  // same tokens as Sampler::sample on a host copy of the logits (up to exact ties), whatever the
  // batch around them. Synchronises `stream` before returning the results.
  std::vector<SampleResult> sample(const Tensor& logits, const std::vector<SamplingRow>& rows,
                                   cudaStream_t stream);
  // sample() in two halves, so the caller can wait for the stream its own way: launch enqueues
  // the kernels and the copy of the results to pinned host memory; collect reads the results
  // of the oldest launch not yet collected, once the caller has waited for its work. Two
  // launches may be outstanding: each has its own uploads and results.
  void launch(const Tensor& logits, const std::vector<SamplingRow>& rows, cudaStream_t stream);
  std::vector<SampleResult> collect();
  // Enqueues input_ids[pending[p][0]] = the id that the latest launch samples in row
  // pending[p][1], for each of the P pairs (device tensors, i32).
  void write_sampled_ids(const Tensor& input_ids /*[T]*/, const Tensor& pending /*[P, 2]*/,
                         cudaStream_t stream) const;
  // Prompt logprobs, as score_tokens on a host copy: enqueues the scoring of logits
  // ([token_ids.size(), vocab_size] raw f32 on the device, left unchanged) row r for
  // token_ids[r] with its top num_top[r] (in [0, kMaxLogprobs]), and the copy of the scores to
  // pinned host memory; collect_scores reads the oldest outstanding one's once the caller has
  // waited for its work. Two may be outstanding, besides the sampling launches.
  void launch_scores(const Tensor& logits, std::span<const int> token_ids,
                     std::span<const int> num_top, cudaStream_t stream);
  std::vector<TokenLogprobs> collect_scores();

  // Device bytes the buffers hold now (pinned host mirrors hold as many again of the slots').
  size_t held_device_bytes() const;

 private:
  // One launch's uploads and results: device buffers with pinned host mirrors.
  struct RowLogprobs {
    int num_logprobs;  // -1: none asked
    int top_offset;
  };
  struct Slot {
    size_t upload_capacity = 0;
    char* upload = nullptr;
    char* upload_host = nullptr;
    size_t result_capacity = 0;
    char* results = nullptr;
    char* results_host = nullptr;
    // What collect() needs of the launch.
    std::vector<RowLogprobs> rows;
    size_t top_ids_offset = 0, top_logprobs_offset = 0;
  };
  static constexpr int kNumSlots = 2;

  void reserve(int num_rows, int vocab_size);
  // Grows both score slots to hold launch_scores of num_rows rows at the most logprobs.
  void reserve_scores(int num_rows);
  // The bytes of a launch_scores upload and of its results.
  static size_t score_upload_bytes(int num_rows);
  static size_t score_result_bytes(int num_rows, int total_top);
  // Row r's logprobs from the slot's pinned results.
  static TokenLogprobs read_logprobs(const Slot& slot, size_t r);
  static void check_pending_rows(const Slot* previous, const std::vector<int>& pending);
  static void fill_pending_outputs(const Slot& previous, const Slot& slot, size_t args_bytes,
                                   size_t tokens_bytes, size_t num_pending, cudaStream_t stream);
  void release();

  int capacity_rows_ = 0;
  int capacity_vocab_ = 0;
  // Device workspace, [capacity_rows_, capacity_vocab_] each.
  float* work_ = nullptr;
  int* marks_ = nullptr;  // kept all zero between calls
  unsigned long long* keys_ = nullptr;
  Slot slots_[kNumSlots];
  uint64_t num_launches_ = 0, num_collects_ = 0;  // launch i uses slots_[i % kNumSlots]
  Slot score_slots_[kNumSlots];                   // the same, for launch_scores
  uint64_t num_score_launches_ = 0, num_score_collects_ = 0;
};

}  // namespace engine::cuda
