// Validation of the public parameter structs. Every message names the field, the value given
// and what is allowed, so a user (or the server, which turns these into HTTP 400s) can act on it.

#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>

#include "engine/engine_config.h"
#include "engine/outputs.h"
#include "engine/sampling_params.h"

namespace engine {
namespace {

template <typename T>
[[noreturn]] void fail(const char* field, const T& value, const char* allowed) {
  std::ostringstream message;
  message << field << " must be " << allowed << ", got " << value;
  throw std::invalid_argument(message.str());
}

// NaN fails every comparison, so ranges are written as "!(in range)".
void check_range(const char* field, float value, float lo, float hi, const char* allowed) {
  if (!(value >= lo && value <= hi)) fail(field, value, allowed);
}

}  // namespace

const char* to_string(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kAbort:
      return "abort";
  }
  return "unknown";
}

void SamplingParams::validate() const {
  if (n < 1) fail("n", n, "at least 1");
  if (!(temperature >= 0.0f) || std::isinf(temperature)) {
    fail("temperature", temperature, "a finite number >= 0 (0 means greedy)");
  }
  if (!(top_p > 0.0f && top_p <= 1.0f)) fail("top_p", top_p, "in (0, 1]");
  if (top_k < -1) fail("top_k", top_k, "-1 or 0 (disabled) or a positive number of tokens");
  check_range("min_p", min_p, 0.0f, 1.0f, "in [0, 1]");
  check_range("presence_penalty", presence_penalty, -2.0f, 2.0f, "in [-2, 2]");
  check_range("frequency_penalty", frequency_penalty, -2.0f, 2.0f, "in [-2, 2]");
  if (!(repetition_penalty > 0.0f) || std::isinf(repetition_penalty)) {
    fail("repetition_penalty", repetition_penalty, "a finite number > 0 (1 disables it)");
  }
  if (max_tokens < 1) fail("max_tokens", max_tokens, "at least 1");
  if (min_tokens < 0) fail("min_tokens", min_tokens, "at least 0");
  if (min_tokens > max_tokens) {
    std::ostringstream allowed;
    allowed << "at most max_tokens (" << max_tokens << ")";
    fail("min_tokens", min_tokens, allowed.str().c_str());
  }
  if (logprobs && (*logprobs < 0 || *logprobs > kMaxLogprobs)) {
    fail("logprobs", *logprobs, "in [0, 20]");
  }
  if (prompt_logprobs && (*prompt_logprobs < 0 || *prompt_logprobs > kMaxLogprobs)) {
    fail("prompt_logprobs", *prompt_logprobs, "in [0, 20]");
  }
  for (int token_id : stop_token_ids) {
    if (token_id < 0) fail("stop_token_ids", token_id, "non-negative token ids");
  }
  // The upper bound on ids needs the vocabulary: Engine::Impl::validate_request checks it.
  for (const auto& [token_id, bias] : logit_bias) {
    if (token_id < 0) fail("logit_bias token id", token_id, "a non-negative token id");
    const std::string field = "logit_bias[" + std::to_string(token_id) + "]";
    check_range(field.c_str(), bias, -kMaxLogitBias, kMaxLogitBias, "a number in [-100, 100]");
  }
}

void EngineConfig::validate() const {
  if (model.empty()) throw std::invalid_argument("model must name a checkpoint directory, got ''");
  if (dtype != "auto" && dtype != "float32" && dtype != "bfloat16" && dtype != "float16") {
    fail("dtype", "'" + dtype + "'", "one of auto, float32, bfloat16, float16");
  }
  if (load_format != "auto" && load_format != "safetensors" && load_format != "dummy") {
    fail("load_format", "'" + load_format + "'", "one of auto, safetensors, dummy");
  }
  if (device != "auto" && device != "cpu" && device.rfind("cuda", 0) != 0) {
    fail("device", "'" + device + "'", "auto, cpu or cuda[:N]");
  }
  if (kv_cache_dtype != "auto" && kv_cache_dtype != "fp8" && kv_cache_dtype != "fp8_e4m3") {
    fail("kv_cache_dtype", "'" + kv_cache_dtype + "'", "one of auto, fp8, fp8_e4m3");
  }
  if (max_model_len && *max_model_len < 1) fail("max_model_len", *max_model_len, "at least 1");
  if (block_size < 1 || block_size > 1024) fail("block_size", block_size, "in [1, 1024]");
  if (max_num_seqs < 1) fail("max_num_seqs", max_num_seqs, "at least 1");
  if (max_num_batched_tokens < 1) {
    fail("max_num_batched_tokens", max_num_batched_tokens, "at least 1");
  }
  if (max_num_prompt_logprob_tokens && (*max_num_prompt_logprob_tokens < 1 ||
                                        *max_num_prompt_logprob_tokens > max_num_batched_tokens)) {
    const std::string allowed =
        "in [1, max_num_batched_tokens = " + std::to_string(max_num_batched_tokens) + "]";
    fail("max_num_prompt_logprob_tokens", *max_num_prompt_logprob_tokens, allowed.c_str());
  }
  if (num_kv_blocks && *num_kv_blocks < 2) fail("num_kv_blocks", *num_kv_blocks, "at least 2");
  if (kv_cache_memory_bytes && *kv_cache_memory_bytes < 1) {
    fail("kv_cache_memory_bytes", *kv_cache_memory_bytes, "positive");
  }
  if (num_threads < 0) fail("num_threads", num_threads, "0 (default) or a positive count");
  if (!(gpu_memory_utilization > 0.0 && gpu_memory_utilization <= 1.0)) {
    fail("gpu_memory_utilization", gpu_memory_utilization, "in (0, 1]");
  }
}

}  // namespace engine
