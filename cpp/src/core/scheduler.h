#pragma once
// Scheduler: one token budget per step, no prefill/decode phases. Every step each running
// sequence's num_computed_tokens catches up toward its num_tokens within
// max_num_batched_tokens; chunked prefill, decode and prefix hits fall out of the same loop.
// When blocks run out the lowest-priority running sequence is preempted (blocks freed,
// recomputed later).

#include <deque>
#include <memory>
#include <unordered_map>
#include <vector>

#include "core/kv_cache_manager.h"
#include "core/request.h"
#include "core/scheduler_output.h"
#include "engine/engine_config.h"

namespace engine {

struct SchedulerConfig {
  int max_num_seqs = 256;
  int max_num_batched_tokens = 2048;
  int max_model_len = 2048;
  SchedulingPolicy policy = SchedulingPolicy::kFcfs;
  std::vector<int> eos_token_ids;
  // Of the token budget, the most prompt tokens per step whose logprobs are reported (each one
  // a logits row the runner holds); 0: the whole budget.
  int max_num_prompt_logprob_tokens = 0;
};

// A sequence that advanced or finished in update_from_output (or was aborted).
struct SequenceUpdate {
  SeqId seq_id = 0;
  std::vector<int> new_token_ids;
  std::vector<TokenLogprobs> new_logprobs;
  std::optional<FinishReason> finish_reason;  // set once finished
  std::optional<int> stop_token_id;           // the stop_token_ids entry that finished it
};

struct SchedulerStats {
  int num_running = 0;
  int num_waiting = 0;
  int64_t num_preemptions = 0;
  int64_t num_prefix_cache_queries = 0;  // prompt tokens looked up in the prefix cache
  int64_t num_prefix_cache_hits = 0;
};

class Scheduler {
 public:
  Scheduler(const SchedulerConfig& config, KVCacheManager& kv_cache);

  void add_request(std::unique_ptr<Request> request);
  // Finishes the sequences with finish reason kAbort, frees their blocks; returns an update
  // for each one that was still unfinished. Unknown ids are ignored.
  std::vector<SequenceUpdate> abort(const std::vector<SeqId>& seq_ids);

  // Picks the next step. Its tokens count as computed and its samples as pending at once, so
  // schedule() may run again before the step's output is applied (one step ahead at most): a
  // sequence then computes the position of its pending token, whose id the runner takes from
  // the step in flight. A pending token that ends the sequence by length is not scheduled past.
  SchedulerOutput schedule();
  // Applies the runner's sampled tokens: appends them, checks stop conditions (EOS unless
  // ignore_eos, stop_token_ids, max_tokens, max_model_len, with min_tokens), caches newly full
  // blocks, frees finished sequences. A sequence finished or aborted since schedule() is
  // skipped (its token dropped).
  std::vector<SequenceUpdate> update_from_output(const SchedulerOutput& scheduled,
                                                 const ModelRunnerOutput& output);

  bool has_unfinished() const;
  // A finished or aborted sequence stays findable until the next schedule(), which reports
  // it in finished_seq_ids and then deletes it.
  const Request* find(SeqId seq_id) const;
  SchedulerStats stats() const;

 private:
  // What is left of a step's budgets: tokens, and of those, prompt tokens that are scored.
  struct StepBudget {
    int tokens = 0;
    int prompt_logprob_tokens = 0;
    // The most tokens `request` may compute within both.
    int allows(const Request& request) const;
    // `sign` 1 takes num_tokens of `request` from the budgets, -1 gives them back.
    void count(const Request& request, int num_tokens, int sign);
  };

  void schedule_running(SchedulerOutput& out, StepBudget& budget, bool& preempted);
  void schedule_waiting(SchedulerOutput& out, StepBudget& budget);
  void advance_scheduled(const SchedulerOutput& out);
  bool finishes_by_length(const Request& request) const;
  // Preempts the lowest-priority running sequence (un-scheduling it if it was scheduled in
  // `out`) and returns it.
  Request* preempt_lowest(SchedulerOutput& out, StepBudget& budget);
  std::deque<Request*>::iterator next_waiting();
  void admit(Request& request, const ComputedBlocks& hit, int num_new, SchedulerOutput& out);
  // Appends the token; returns true when the sequence has finished.
  bool append_token(Request& request, const SampledToken& sampled, SequenceUpdate& update);
  void finish(Request& request, FinishReason reason);

  SchedulerConfig config_;
  KVCacheManager& kv_cache_;
  std::unordered_map<SeqId, std::unique_ptr<Request>> requests_;  // live and just finished
  std::vector<Request*> running_;
  std::deque<Request*> waiting_;  // FCFS: queue order; priority: scanned for the min
  std::vector<SeqId> finished_since_schedule_;
  int64_t num_preemptions_ = 0;
  int64_t num_prefix_cache_queries_ = 0;
  int64_t num_prefix_cache_hits_ = 0;
};

}  // namespace engine
