#pragma once
// What Engine::step() and Engine::generate() return: token ids and logprobs, never text.

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace engine {

enum class FinishReason { kStop, kLength, kAbort };

const char* to_string(FinishReason reason);  // "stop", "length", "abort"

struct TokenLogprobs {
  int token_id = 0;      // the sampled token
  float logprob = 0.0f;  // its log-probability under the model's (unpenalised) distribution
  int rank = 0;          // 1 is the most likely token
  std::vector<std::pair<int, float>> top;  // the top-N (token id, logprob), most likely first
};

struct CompletionOutput {
  int index = 0;                        // which of the request's n samples
  std::vector<int> token_ids;           // step(): tokens new in this step; generate(): all
  std::vector<TokenLogprobs> logprobs;  // one per token in token_ids when logprobs were asked
  std::optional<FinishReason> finish_reason;
  std::optional<int> stop_token_id;  // the stop_token_ids entry that finished it, if any
  bool finished() const { return finish_reason.has_value(); }
};

struct RequestOutput {
  std::string request_id;
  std::vector<int> prompt_token_ids;      // filled by generate(); empty in step() deltas
  std::vector<CompletionOutput> outputs;  // step(): the samples that advanced; generate(): all n
  bool finished = false;                  // every sample has finished
  int num_cached_tokens = 0;              // prompt tokens served from the prefix cache
  // With SamplingParams::prompt_logprobs: entry i scores prompt token i + 1 (the first token
  // has no logprob), so there are (prompt length - 1) entries. step() sets them in the
  // request's first output that carries tokens, and generate() in its result; empty otherwise.
  std::vector<TokenLogprobs> prompt_logprobs;
};

}  // namespace engine
