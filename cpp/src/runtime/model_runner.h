#pragma once
// ModelRunner turns a SchedulerOutput into one forward pass and one sampling pass. It keeps
// each sequence's token ids and block table across steps (updated by the scheduler's deltas),
// owns the paged KV cache and the decode CUDA graphs, and answers with the sampled token ids.
//
// Start-up order: construct (activation and step buffers), profile_run() (on a GPU, to measure
// what a full step needs before the KV cache takes the rest), allocate_kv_cache(), then
// capture_decode_graphs().

#include <cstdint>
#include <memory>
#include <optional>
#include <unordered_map>
#include <vector>

#include "backend/backend.h"
#include "core/scheduler_output.h"
#include "model/model.h"
#include "runtime/decode_graphs.h"
#include "runtime/logits_sampler.h"
#include "runtime/sampler.h"
#include "runtime/step_inputs.h"

namespace engine {

struct RunnerConfig {
  int block_size = 16;
  int max_num_batched_tokens = 2048;
  int max_num_seqs = 256;
  int max_model_len = 2048;
  std::vector<int> eos_token_ids;  // masked until min_tokens unless ignore_eos
  bool use_cuda_graphs = true;     // where the backend supports graphs
  // The KV cache's element type: the backend's compute dtype when unset, or kFP8E4M3.
  std::optional<DType> kv_cache_dtype;
  // Prompt tokens scored per step (the scheduler's cap); 0: max_num_batched_tokens.
  int max_num_prompt_logprob_tokens = 0;
};

// Bytes of KV cache one block takes across all layers (K and V, in the cache's dtype).
int64_t kv_cache_bytes_per_block(const ModelConfig& config, int block_size, DType dtype);

class ModelRunner {
 public:
  ModelRunner(Backend& backend, Model& model, const RunnerConfig& config);

  // One forward over max_num_batched_tokens tokens (and max_num_seqs logits rows) on a
  // one-block scratch cache, so every workspace the largest step needs exists afterwards.
  void profile_run();
  // An fp8 cache takes the checkpoint's calibrated K/V scales where it has them (scale 1
  // otherwise); a cache in the compute dtype always uses 1, as vLLM's does.
  void allocate_kv_cache(int64_t num_blocks);
  // Whether the cache allocate_kv_cache() made uses the checkpoint's calibrated scales.
  bool uses_calibrated_kv_cache_scales() const;
  // Captures the decode graphs (nothing when graphs are off or unsupported). Needs the cache.
  void capture_decode_graphs();
  std::vector<int> decode_graph_batch_sizes() const { return graphs_.batch_sizes(); }

  // Enqueues the step's forward, sampling and prompt scoring and returns without waiting for
  // the device; finish() waits for the oldest step in flight and returns its sampled tokens and
  // prompt logprobs. Two steps may be in flight when can_launch_ahead() allowed the second: its
  // sequences may then compute the token the first samples for them, which the device writes
  // into the second's inputs.
  void launch(const SchedulerOutput& scheduled);
  ModelRunnerOutput finish();
  ModelRunnerOutput execute(const SchedulerOutput& scheduled);  // launch, then finish
  // Whether a step may be launched before the one in flight is finished: exactly one is in
  // flight. The penalties of a sequence whose last token is pending count it where the sampler
  // left it; prompt rows are scored on the device before a later step can overwrite them.
  bool can_launch_ahead() const;
  int num_in_flight() const { return num_in_flight_; }

 private:
  struct SequenceState {
    std::vector<int> token_ids;
    int num_prompt_tokens = 0;
    SamplingParams params;
    uint64_t sampling_seed = 0;
    std::vector<int> block_ids;
    bool prompt_logprobs = false;  // score the prompt while it is computed
    // Tokens sampled by steps in flight (at most 2), not yet in token_ids, and the row of the
    // latest such step: a step launched ahead reads its input at position token_ids.size() from
    // that row, when exactly one is pending.
    int num_pending = 0;
    int pending_row = -1;
  };
  // Logits rows that score prompt tokens [first_position, first_position + count).
  struct PromptRows {
    SeqId seq_id = 0;
    int first_position = 0;
    int count = 0;
  };
  // What finish() needs of a launched step; two are kept and reused, so a step allocates
  // nothing once their vectors have grown.
  struct InFlightStep {
    std::vector<SeqId> sampled_seq_ids;   // in sampled-row order
    std::vector<PromptRows> prompt_rows;  // after the sampled rows
    std::vector<int> prompt_targets;      // the prompt token each prompt row scores
    std::vector<int> prompt_num_top;      // and the top logprobs it returns
    uint64_t fence = 0;                   // after the step's work
  };
  // A step's shape and what the attention kernels plan with.
  struct StepPlan {
    StepShape shape;  // padded to the graph's bucket when replaying one
    int num_real_seqs = 0;
    int max_query_len = 0;
    int max_seq_len = 0;
    int num_prompt_rows = 0;  // logits rows after the sampled ones, scoring prompt tokens
    std::optional<int> graph_batch_size;
  };

  void apply_state_updates(const SchedulerOutput& scheduled);
  StepPlan plan_step(const SchedulerOutput& scheduled) const;
  void write_inputs(const SchedulerOutput& scheduled, const StepPlan& plan, HostStepArrays host,
                    InFlightStep& step);
  // The sampled rows' states, once the step is enqueued: each has one more token pending.
  void mark_pending(const InFlightStep& step);
  // Enqueues the model's forward over uploaded step inputs (eagerly; also what a graph records),
  // writing [plan.shape.num_logits, vocab] f32 logits to `logits`.
  void run_forward(const StepPlan& plan, const DeviceStepArrays& device,
                   const std::vector<KVCacheLayer>& cache, void* logits);
  StepPlan padded_decode_plan(int batch_size) const;
  int num_prompt_rows(const ScheduledSequence& seq, const SequenceState& state) const;
  void write_prompt_rows(const SchedulerOutput& scheduled, const StepPlan& plan,
                         HostStepArrays host, int first_row, InFlightStep& step);
  // Enqueues the scoring of the step's prompt rows (after its sampled rows in `logits`).
  void launch_prompt_scores(const InFlightStep& step, void* logits);
  std::vector<PromptLogprobsChunk> collect_prompt_scores(const InFlightStep& step);
  std::vector<SamplingRow> sampling_rows(const std::vector<SeqId>& seq_ids) const;
  int max_block_table_width() const;
  // Scored prompt tokens a step may have (the scheduler's cap, else its token budget).
  int max_scored_prompt_rows() const;
  // Logits rows a step may have: one per sampled sequence, one per scored prompt token.
  int max_logits_rows() const;
  DType kv_cache_dtype() const;  // config_'s, else the backend's compute dtype

  Backend& backend_;
  Model& model_;
  RunnerConfig config_;
  std::unordered_map<SeqId, SequenceState> sequences_;
  std::vector<Buffer> kv_buffers_;
  std::vector<KVCacheLayer> kv_cache_;
  StepInputs inputs_;
  // [max_logits_rows(), vocab] f32, allocated before the KV cache: every step's sampled rows,
  // then its scored prompt rows. Graphs write its first rows.
  Buffer logits_buffer_;
  std::unique_ptr<LogitsSampler> sampler_;
  DecodeGraphs graphs_;
  InFlightStep steps_[2];  // the oldest in flight is steps_[oldest_]
  int oldest_ = 0;
  int num_in_flight_ = 0;
};

}  // namespace engine
