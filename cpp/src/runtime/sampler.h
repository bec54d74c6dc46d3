#pragma once
// Sampler: masks, logit_bias, penalties, temperature, top-k / top-p / min-p, counter-based
// per-request RNG and logprobs, on host fp32 logits. One row per sequence that samples this step.

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "engine/outputs.h"
#include "engine/sampling_params.h"

namespace engine {

struct SamplingRow {
  const SamplingParams* params = nullptr;
  std::span<const int> prompt_token_ids;  // for the repetition penalty
  std::span<const int> output_token_ids;  // for all three penalties
  // Outputs sampled by a step still in flight (0 or 1): counted in the output index, missing
  // from output_token_ids. For the penalties, a LogitsSampler reads that output in row
  // pending_row of its previous launch; Sampler itself refuses such a row.
  int num_pending_outputs = 0;
  int pending_row = -1;
  uint64_t seed = 0;                  // with the output index, keys this row's RNG draw
  std::vector<int> masked_token_ids;  // set to -inf before sampling (EOS before min_tokens)

  // Which output this row samples (0 for the first).
  uint64_t output_index() const { return output_token_ids.size() + num_pending_outputs; }
  bool has_penalties() const {
    return params->repetition_penalty != 1.0f || params->frequency_penalty != 0.0f ||
           params->presence_penalty != 0.0f;
  }
};

struct SampleResult {
  int token_id = 0;
  std::optional<TokenLogprobs> logprobs;  // when params->logprobs is set
};

class Sampler {
 public:
  // logits: [rows.size(), vocab_size] row-major fp32, modified in place: on return each row
  // holds the logits it was sampled from (masked, biased by params->logit_bias, penalised and,
  // unless greedy, divided by the temperature). Rows are independent: a row's token depends
  // only on its logits, its params, its tokens and (seed, output index), never on the other
  // rows of the batch.
  std::vector<SampleResult> sample(float* logits, int vocab_size,
                                   const std::vector<SamplingRow>& rows) const;
};

// Throws std::invalid_argument, naming `caller`, unless vocab_size is positive, there is one
// num_top per token id, every id is in [0, vocab_size) and every num_top in
// [0, SamplingParams::kMaxLogprobs]: the rows that score_tokens and the device samplers accept.
void check_score_rows(const char* caller, int vocab_size, std::span<const int> token_ids,
                      std::span<const int> num_top);

// Row r of logits ([token_ids.size(), vocab_size] row-major fp32, raw: no penalty, no
// temperature) scored for token_ids[r]: its logprob and rank, and the top num_top[r]. Rows are
// checked with check_score_rows.
std::vector<TokenLogprobs> score_tokens(const float* logits, int vocab_size,
                                        std::span<const int> token_ids,
                                        std::span<const int> num_top);

// The uniform draw in [0, 1) for (seed, output index): the same value in any batch.
double uniform_draw(uint64_t seed, uint64_t counter);

}  // namespace engine
