#pragma once
// Where a step's logits are sampled, and prompt tokens scored: a strategy chosen once per
// runner. On the CPU backend the logits are already host memory; on a GPU they are sampled and
// scored on the device and only the ids and logprobs come back.

#include <memory>
#include <span>
#include <vector>

#include "backend/backend.h"
#include "runtime/sampler.h"

namespace engine {

class LogitsSampler {
 public:
  virtual ~LogitsSampler() = default;
  // Enqueues the sampling of logits ([rows.size(), vocab] f32 on the backend's device) after
  // the work already on the device; the rows are read before this returns. At most two
  // launches are outstanding (not yet collected).
  virtual void launch(const Tensor& logits, const std::vector<SamplingRow>& rows) = 0;
  // Waits for the oldest outstanding launch and returns its results, one per row.
  virtual std::vector<SampleResult> collect() = 0;
  // Enqueues input_ids[pending[p][0]] = the id the latest launch samples in row pending[p][1]
  // (device tensors, i32): the next step's inputs take the ids without waiting for them.
  virtual void write_sampled_ids(const Tensor& input_ids /*[T]*/,
                                 const Tensor& pending /*[P, 2]*/) = 0;
  // Enqueues the scoring of logits ([token_ids.size(), vocab] raw f32 on the backend's device)
  // after the work already on the device: row r for token_ids[r], with its top num_top[r]
  // (score_tokens' results; num_top[r] in [0, SamplingParams::kMaxLogprobs]). Work enqueued
  // later may overwrite the logits. At most two are outstanding, apart from launch()'s.
  virtual void launch_scores(const Tensor& logits, std::span<const int> token_ids,
                             std::span<const int> num_top) = 0;
  // Waits for the oldest outstanding launch_scores and returns its scores, one per row; only
  // these cross to the host, never the logits.
  virtual std::vector<TokenLogprobs> collect_scores() = 0;
};

// The sampler for this backend: the device sampler where the backend has one, else copy to
// the host and run Sampler. Its buffers are sized up front for launches of up to max_rows rows
// and launch_scores of up to max_score_rows, so steps within those allocate nothing.
std::unique_ptr<LogitsSampler> make_logits_sampler(Backend& backend, int max_rows,
                                                   int max_score_rows, int vocab_size);

// The CUDA backend's device sampler; defined in cuda/backend/ (builds with EMBER_WITH_CUDA).
std::unique_ptr<LogitsSampler> make_cuda_logits_sampler(Backend& backend, int max_rows,
                                                        int max_score_rows, int vocab_size);

}  // namespace engine
