#pragma once
// libengine's entry point: token ids in, token ids (and logprobs) out.
//
// One thread drives step(); add_request() and abort() may be called from any thread at any
// time (they take effect at the start of the next step). Bad input throws
// std::invalid_argument with a message naming what is wrong and what is allowed.

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/engine_config.h"
#include "engine/outputs.h"
#include "engine/sampling_params.h"

namespace engine {

// The architectures (config.json "architectures") this build can run.
std::vector<std::string> supported_architectures();

struct ModelInfo {
  std::string architecture;
  int vocab_size = 0;
  int max_model_len = 0;
  std::vector<int> eos_token_ids;
  std::string device;  // "cpu" or "cuda:N"
  int64_t num_kv_blocks = 0;
  int block_size = 0;
  std::vector<int> cuda_graph_batch_sizes;  // decode batch sizes with a captured graph
  std::string kv_cache_dtype;  // the cache's element type: "bfloat16", "float8_e4m3fn", ...
  // Whether the fp8 cache uses the checkpoint's calibrated per-layer K/V scales (else 1).
  bool calibrated_kv_cache_scales = false;
};

struct EngineStats {
  int num_running = 0;
  int num_waiting = 0;
  double kv_cache_usage = 0.0;  // fraction of KV blocks in use
  int64_t num_preemptions = 0;
  int64_t num_prefix_cache_queries = 0;  // prompt tokens looked up
  int64_t num_prefix_cache_hits = 0;     // of which found cached
  // Where step() spends its time: the host's share is step_seconds - device_wait_seconds
  // (scheduling, step inputs, launches, outputs); the rest is blocked waiting for the device.
  int64_t num_steps = 0;             // model steps completed
  double step_seconds = 0.0;         // wall time inside step() calls that ran the model
  double device_wait_seconds = 0.0;  // of which blocked on the device
  // Steps scheduled and enqueued while the step before them was still on the device (async
  // scheduling): their host work overlapped the device's.
  int64_t num_steps_launched_ahead = 0;
  // Token counters, as vLLM's Prometheus counters count them: the prompt of a request counts
  // once, when its first token comes out (preemption recomputes it without counting again);
  // every generated token of every sample counts.
  int64_t num_prompt_tokens = 0;
  int64_t num_generation_tokens = 0;
};

class Engine {
 public:
  explicit Engine(const EngineConfig& config);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a request. Throws std::invalid_argument for a duplicate id, an empty prompt,
  // token ids outside the vocabulary, a prompt longer than max_model_len or invalid params.
  // Generation that would pass max_model_len stops there with finish reason "length".
  void add_request(const std::string& request_id, const std::vector<int>& prompt_token_ids,
                   const SamplingParams& params);
  // The checks add_request makes, without adding: lets a caller validate a whole batch first.
  void validate_request(const std::vector<int>& prompt_token_ids,
                        const SamplingParams& params) const;
  // Aborts a request: all its samples, or only sample `sample_index` (the Python layer
  // finishes one sample on a stop string this way). Unknown or finished ids are ignored.
  void abort(const std::string& request_id, std::optional<int> sample_index = std::nullopt);
  // Runs one scheduling step and one forward pass; returns the requests that advanced, with
  // the tokens new in this step, and those finished (including aborted ones).
  std::vector<RequestOutput> step();
  bool has_unfinished_requests() const;
  // Blocking: adds the requests (ids "0", "1", ...), steps until all finish, returns full
  // outputs in input order. Validates every request before running any.
  std::vector<RequestOutput> generate(const std::vector<std::vector<int>>& prompts,
                                      const std::vector<SamplingParams>& params);

  const ModelInfo& model_info() const;
  EngineStats stats() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace engine
