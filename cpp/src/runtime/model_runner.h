#pragma once
// ModelRunner turns a SchedulerOutput into one forward pass and one sampling pass. It keeps
// each sequence's token ids and block table across steps (updated by the scheduler's deltas),
// owns the paged KV cache, and answers with the sampled token ids.

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "backend/backend.h"
#include "core/scheduler_output.h"
#include "model/model.h"
#include "runtime/logits_sampler.h"
#include "runtime/sampler.h"

namespace engine {

struct RunnerConfig {
  int block_size = 16;
  int64_t num_kv_blocks = 0;
  int max_num_batched_tokens = 2048;
  int max_num_seqs = 256;
  int max_model_len = 2048;
  std::vector<int> eos_token_ids;  // masked until min_tokens unless ignore_eos
};

// Bytes of KV cache one block takes across all layers (K and V, in the compute dtype).
int64_t kv_cache_bytes_per_block(const ModelConfig& config, int block_size, DType dtype);

class ModelRunner {
 public:
  ModelRunner(Backend& backend, Model& model, const RunnerConfig& config);

  ModelRunnerOutput execute(const SchedulerOutput& scheduled);

 private:
  struct SequenceState {
    std::vector<int> token_ids;
    int num_prompt_tokens = 0;
    SamplingParams params;
    uint64_t sampling_seed = 0;
    std::vector<int> block_ids;
  };
  // Host-side inputs of one step, copied to the device in one go per tensor.
  struct StepInputs {
    std::vector<int32_t> input_ids, positions, slot_mapping, query_start_loc, seq_lens;
    std::vector<int32_t> block_table, logits_indices;
    std::vector<SeqId> sampled_seq_ids;
    int max_query_len = 0, max_seq_len = 0, max_blocks_per_seq = 0;
  };

  void apply_state_updates(const SchedulerOutput& scheduled);
  StepInputs prepare_inputs(const SchedulerOutput& scheduled) const;
  AttentionMetadata upload_metadata(const StepInputs& inputs);
  std::vector<SamplingRow> sampling_rows(const std::vector<SeqId>& seq_ids) const;
  Tensor upload_i32(const std::vector<int32_t>& host, int slot);

  Backend& backend_;
  Model& model_;
  RunnerConfig config_;
  std::unordered_map<SeqId, SequenceState> sequences_;
  std::vector<Buffer> kv_buffers_;
  std::vector<KVCacheLayer> kv_cache_;
  std::vector<Buffer> input_buffers_;  // one per uploaded i32 array, grown as needed
  Buffer logits_buffer_;               // [max_num_seqs, vocab] f32
  std::unique_ptr<LogitsSampler> sampler_;
};

}  // namespace engine
