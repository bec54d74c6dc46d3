#pragma once
// Per-request sampling parameters, named as vLLM names them. Token-level only: stop strings
// are matched on detokenized text by the Python layer, which aborts the request on a match.

#include <cstdint>
#include <map>
#include <optional>
#include <vector>

namespace engine {

struct SamplingParams {
  int n = 1;                 // independent samples of one prompt; they share its KV blocks
  float temperature = 1.0f;  // < kGreedyTemperature means greedy (argmax)
  float top_p = 1.0f;        // (0, 1]
  int top_k = 0;             // 0 or -1: off
  float min_p = 0.0f;        // [0, 1]
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  float repetition_penalty = 1.0f;  // > 0; 1 is off
  std::optional<uint64_t> seed;     // reproducible whatever the batch around the request
  // OpenAI's logit_bias: token id -> bias in [-100, 100], added to that token's logit after
  // the masks and before the penalties, temperature and filters (vLLM's order), so greedy
  // requests honour it too. A map: one bias per id, in id order.
  std::map<int, float> logit_bias;
  std::vector<int> stop_token_ids;  // finish (reason "stop") after sampling one of these
  bool ignore_eos = false;
  int max_tokens = 16;          // >= 1
  int min_tokens = 0;           // EOS and stop_token_ids are masked until this many tokens
  std::optional<int> logprobs;  // top-N logprobs per sampled token, N in [0, 20]
  // Logprobs of the prompt's tokens (each but the first, scored by the model given the tokens
  // before it) with the top-N, N in [0, 20]. The first sample computes the whole prompt: it
  // takes no prefix-cache hit (as in vLLM), though the blocks it computes are cached for others.
  std::optional<int> prompt_logprobs;
  int priority = 0;  // lower runs first under the priority policy

  static constexpr float kGreedyTemperature = 1e-5f;
  static constexpr int kMaxLogprobs = 20;
  static constexpr float kMaxLogitBias = 100.0f;

  bool is_greedy() const { return temperature < kGreedyTemperature; }

  // Throws std::invalid_argument naming the field, its value and what is allowed.
  void validate() const;
};

}  // namespace engine
