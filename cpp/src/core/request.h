#pragma once
// A request as the scheduler sees it: one sequence of token ids (prompt, then outputs) and
// how many of them have their KV computed. A user request with n > 1 becomes n of these.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/outputs.h"
#include "engine/sampling_params.h"

namespace engine {

using SeqId = uint64_t;  // internal id of one sequence, unique for the engine's lifetime

enum class RequestStatus { kWaiting, kRunning, kPreempted, kFinished };

struct Request {
  SeqId seq_id = 0;
  std::string request_id;  // the user's id, shared by the n samples of one request
  int sample_index = 0;    // which of the n samples
  SamplingParams params;
  uint64_t sampling_seed = 0;  // counter-based RNG key: the same draws in any batch
  uint64_t cache_salt = 0;     // mixed into block hashes; unique per request when prefix
                               // caching is off, so only the n samples share blocks
  uint64_t arrival = 0;        // arrival order, for FCFS and priority ties

  std::vector<int> token_ids;  // prompt then outputs
  int num_prompt_tokens = 0;
  // Tokens whose KV is in the cache or being computed by a scheduled step: advanced when a step
  // is scheduled, reset by preemption.
  int num_computed_tokens = 0;
  // Tokens sampled by scheduled steps whose output has not come back yet (one per step in
  // flight, so at most 2): counted in the sequence's length, absent from token_ids until
  // update_from_output appends them.
  int num_pending_tokens = 0;
  int num_cached_tokens = -1;  // prefix-cache hit at first scheduling; -1 until then
  int num_preemptions = 0;
  RequestStatus status = RequestStatus::kWaiting;
  std::optional<FinishReason> finish_reason;
  std::optional<int> stop_token_id;

  int num_tokens() const { return static_cast<int>(token_ids.size()); }
  int num_tokens_with_pending() const { return num_tokens() + num_pending_tokens; }
  int num_output_tokens() const { return num_tokens() - num_prompt_tokens; }
  bool is_finished() const { return status == RequestStatus::kFinished; }
  // The prompt's logprobs are still to be computed, by this sequence (the first sample).
  bool computes_prompt_logprobs() const {
    return params.prompt_logprobs.has_value() && sample_index == 0 && num_output_tokens() == 0;
  }
  // The tokens it computes next are prompt positions whose logprobs it reports.
  bool scores_prompt_next() const {
    return computes_prompt_logprobs() && num_computed_tokens < num_prompt_tokens;
  }
};

}  // namespace engine
