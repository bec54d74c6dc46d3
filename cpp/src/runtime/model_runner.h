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
};

// Bytes of KV cache one block takes across all layers (K and V, in the compute dtype).
int64_t kv_cache_bytes_per_block(const ModelConfig& config, int block_size, DType dtype);

class ModelRunner {
 public:
  ModelRunner(Backend& backend, Model& model, const RunnerConfig& config);

  // One forward over max_num_batched_tokens tokens (and max_num_seqs logits rows) on a
  // one-block scratch cache, so every workspace the largest step needs exists afterwards.
  void profile_run();
  void allocate_kv_cache(int64_t num_blocks);
  // Captures the decode graphs (nothing when graphs are off or unsupported). Needs the cache.
  void capture_decode_graphs();
  std::vector<int> decode_graph_batch_sizes() const { return graphs_.batch_sizes(); }

  // Enqueues the step's forward and sampling and returns without waiting for the device;
  // finish() waits and returns the sampled tokens. One step may be in flight at a time.
  void launch(const SchedulerOutput& scheduled);
  ModelRunnerOutput finish();
  ModelRunnerOutput execute(const SchedulerOutput& scheduled);  // launch, then finish

 private:
  struct SequenceState {
    std::vector<int> token_ids;
    int num_prompt_tokens = 0;
    SamplingParams params;
    uint64_t sampling_seed = 0;
    std::vector<int> block_ids;
    bool prompt_logprobs = false;  // score the prompt while it is computed
  };
  // Logits rows that score prompt tokens [first_position, first_position + count).
  struct PromptRows {
    SeqId seq_id = 0;
    int first_position = 0;
    int count = 0;
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
  void write_inputs(const SchedulerOutput& scheduled, const StepPlan& plan, HostStepArrays host);
  // Enqueues the model's forward over uploaded step inputs (eagerly; also what a graph records),
  // writing [plan.shape.num_logits, vocab] f32 logits to `logits`.
  void run_forward(const StepPlan& plan, const DeviceStepArrays& device,
                   const std::vector<KVCacheLayer>& cache, void* logits);
  StepPlan padded_decode_plan(int batch_size) const;
  // The logits of a step: logits_buffer_, or for a step with prompt rows a buffer grown to fit.
  void* logits_for(const StepPlan& plan);
  int num_prompt_rows(const ScheduledSequence& seq, const SequenceState& state) const;
  void write_prompt_rows(const SchedulerOutput& scheduled, const StepPlan& plan,
                         HostStepArrays host, int first_row);
  std::vector<PromptLogprobsChunk> score_prompt_rows(int first_row);
  std::vector<SamplingRow> sampling_rows(const std::vector<SeqId>& seq_ids) const;
  int max_block_table_width() const;

  Backend& backend_;
  Model& model_;
  RunnerConfig config_;
  std::unordered_map<SeqId, SequenceState> sequences_;
  std::vector<Buffer> kv_buffers_;
  std::vector<KVCacheLayer> kv_cache_;
  StepInputs inputs_;
  Buffer logits_buffer_;         // [max_num_seqs, vocab] f32; what graphs write
  Buffer prompt_logits_buffer_;  // [rows, vocab] f32 for steps with prompt rows; grows
  int64_t prompt_logits_rows_ = 0;
  void* step_logits_ = nullptr;  // the logits of the step in flight
  std::unique_ptr<LogitsSampler> sampler_;
  DecodeGraphs graphs_;
  std::vector<SeqId> sampled_seq_ids_;   // of the step in flight; reused every step
  std::vector<PromptRows> prompt_rows_;  // of the step in flight
  std::vector<int> prompt_targets_;      // the prompt token each prompt row scores
  std::vector<float> prompt_logits_host_;
  bool in_flight_ = false;
};

}  // namespace engine
