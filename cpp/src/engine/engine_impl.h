#pragma once
// Engine::Impl: validation of requests, the inbox that other threads write to, the n > 1
// fan-out, and the step loop gluing Scheduler, ModelRunner and the per-request outputs.

#include <atomic>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend/backend.h"
#include "core/kv_cache_manager.h"
#include "core/scheduler.h"
#include "engine/engine.h"
#include "model/model.h"
#include "runtime/model_runner.h"

namespace engine {

struct StepOutputs;  // the outputs of one step, by request id

class Engine::Impl {
 public:
  explicit Impl(const EngineConfig& config);

  void add_request(const std::string& request_id, const std::vector<int>& prompt_token_ids,
                   const SamplingParams& params);
  void abort(const std::string& request_id, std::optional<int> sample_index);
  void validate_request(const std::vector<int>& prompt_token_ids,
                        const SamplingParams& params) const;
  std::vector<RequestOutput> step();
  bool has_unfinished_requests() const { return num_unfinished_ > 0; }
  std::vector<RequestOutput> generate(const std::vector<std::vector<int>>& prompts,
                                      const std::vector<SamplingParams>& params);
  const ModelInfo& model_info() const { return info_; }
  EngineStats stats() const;

 private:
  // The n samples of one user request.
  struct RequestGroup {
    std::string request_id;
    SamplingParams params;
    std::vector<SeqId> seq_ids;                  // index = sample index
    std::vector<std::unique_ptr<Request>> held;  // samples waiting for the prompt's KV
    std::vector<bool> finished;
    int num_cached_tokens = -1;
    int num_prompt_tokens = 0;
    bool has_output_tokens = false;  // its prompt is counted in num_prompt_tokens
    // With params.prompt_logprobs: filled chunk by chunk while the prompt is computed, then
    // moved into the request's first output that carries tokens.
    std::vector<TokenLogprobs> prompt_logprobs;
  };
  struct Abort {
    std::string request_id;
    std::optional<int> sample_index;
  };

  std::vector<std::unique_ptr<Request>> make_samples(const std::string& request_id,
                                                     const std::vector<int>& prompt_token_ids,
                                                     const SamplingParams& params);
  // Hands the queued requests to the scheduler and applies the queued aborts, or returns them
  // when `defer_aborts` (to apply once the step in flight has completed).
  std::vector<Abort> drain_inbox(StepOutputs& outputs, bool defer_aborts = false);
  void record_prompt_logprobs(std::vector<PromptLogprobsChunk>& chunks);
  void complete_oldest_step(StepOutputs& outputs);
  // Schedules a step and enqueues it; returns whether it had any work.
  bool schedule_and_launch();
  void apply_abort(const Abort& abort, StepOutputs& outputs);
  void record_cached_tokens(const SchedulerOutput& scheduled);
  void release_held_samples();
  void record_update(const SequenceUpdate& update, StepOutputs& outputs);
  CompletionOutput& output_for(RequestGroup& group, int sample_index, StepOutputs& outputs);

  EngineConfig config_;
  ModelInfo info_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<KVCacheManager> kv_cache_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<ModelRunner> runner_;

  // Written by any thread under inbox_mutex_, drained by the stepping thread.
  mutable std::mutex inbox_mutex_;
  std::vector<std::unique_ptr<RequestGroup>> inbox_adds_;
  std::vector<Abort> inbox_aborts_;
  std::unordered_map<std::string, bool> live_ids_;  // ids added and not yet finished
  std::atomic<int> num_unfinished_{0};
  uint64_t next_seq_id_ = 1;
  uint64_t next_salt_ = 1;

  // Owned by the stepping thread (step_mutex_ makes stats() safe from other threads).
  mutable std::mutex step_mutex_;
  std::unordered_map<std::string, std::unique_ptr<RequestGroup>> groups_;
  std::unordered_map<SeqId, std::pair<RequestGroup*, int>> seq_owner_;  // group, sample index
  std::deque<SchedulerOutput> in_flight_;  // launched, not yet completed; oldest first
  bool async_scheduling_ = false;
  struct StepTiming {
    int64_t num_steps = 0, num_steps_launched_ahead = 0;
    double step_seconds = 0.0, device_wait_seconds = 0.0;
  } timing_;
  struct TokenCounts {
    int64_t num_prompt_tokens = 0, num_generation_tokens = 0;
  } token_counts_;
};

}  // namespace engine
