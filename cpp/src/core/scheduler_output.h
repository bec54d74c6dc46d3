#pragma once
// The one struct the scheduler hands the model runner each step, and the runner's answer.
// The runner keeps per-sequence state (token ids, block table) across steps; this struct
// carries only what changed.

#include <optional>
#include <vector>

#include "core/request.h"
#include "engine/outputs.h"
#include "engine/sampling_params.h"

namespace engine {

// A sequence the runner has not seen, or one resumed after preemption (state rebuilt).
struct NewSequenceData {
  SeqId seq_id = 0;
  std::vector<int> token_ids;  // all known tokens: prompt, and outputs when resumed
  int num_prompt_tokens = 0;
  SamplingParams params;
  uint64_t sampling_seed = 0;
  std::vector<int> block_ids;    // its whole block table
  bool prompt_logprobs = false;  // score the prompt's tokens as they are computed
};

struct ScheduledSequence {
  SeqId seq_id = 0;
  int num_computed_tokens = 0;     // position of the first token computed this step
  int num_scheduled_tokens = 0;    // tokens computed this step: token_ids[computed, computed+n)
  std::vector<int> new_block_ids;  // appended to the runner's block table (empty if new)
  bool sample = false;             // this step reaches the end of the sequence: sample a token
};

struct SchedulerOutput {
  std::vector<NewSequenceData> new_sequences;  // runner creates state before the step
  std::vector<ScheduledSequence> scheduled;    // in batch order
  std::vector<SeqId> finished_seq_ids;         // finished, aborted or preempted: drop state
  int total_num_scheduled_tokens = 0;
};

struct SampledToken {
  SeqId seq_id = 0;
  int token_id = 0;
  std::optional<TokenLogprobs> logprobs;  // when the sequence asked for logprobs
};

// The logprobs of prompt tokens [first_position, first_position + logprobs.size()) of a
// sequence, each given the tokens before it: the prompt positions computed this step.
struct PromptLogprobsChunk {
  SeqId seq_id = 0;
  int first_position = 1;
  std::vector<TokenLogprobs> logprobs;
};

// The runner's answer: one entry per scheduled sequence with sample == true, in batch order,
// and the prompt logprobs of the sequences that asked for them.
struct ModelRunnerOutput {
  std::vector<SampledToken> sampled;
  std::vector<PromptLogprobsChunk> prompt_logprobs;
};

}  // namespace engine
