#include "runtime/model_runner.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace engine {
namespace {

// Slots of the runner's preallocated i32 input buffers.
enum InputSlot {
  kInputIds,
  kPositions,
  kSlotMapping,
  kQueryStartLoc,
  kSeqLens,
  kBlockTable,
  kLogitsIndices,
  kNumInputSlots
};

int ceil_div(int a, int b) { return (a + b - 1) / b; }

bool contains(const std::vector<int>& ids, int id) {
  return std::find(ids.begin(), ids.end(), id) != ids.end();
}

}  // namespace

int64_t kv_cache_bytes_per_block(const ModelConfig& config, int block_size, DType dtype) {
  return int64_t{2} * config.num_hidden_layers * block_size * config.num_key_value_heads *
         config.head_dim * static_cast<int64_t>(dtype_size(dtype));
}

ModelRunner::ModelRunner(Backend& backend, Model& model, const RunnerConfig& config)
    : backend_(backend), model_(model), config_(config) {
  const ModelConfig& mc = model.config();
  const DType dtype = backend.compute_dtype();
  const std::vector<int64_t> layer_shape{config.num_kv_blocks, config.block_size,
                                         mc.num_key_value_heads, mc.head_dim};
  const size_t layer_bytes = Tensor(nullptr, dtype, layer_shape).nbytes();
  for (int layer = 0; layer < mc.num_hidden_layers; ++layer) {
    void* k = kv_buffers_.emplace_back(backend.allocate(layer_bytes)).data();
    void* v = kv_buffers_.emplace_back(backend.allocate(layer_bytes)).data();
    kv_cache_.push_back({Tensor(k, dtype, layer_shape, backend.device_type()),
                         Tensor(v, dtype, layer_shape, backend.device_type())});
  }
  // Every per-step input is bounded by the token budget, max_num_seqs and max_model_len, so
  // the buffers are allocated once here and never per step.
  const int max_blocks_per_seq = ceil_div(config.max_model_len, config.block_size) + 1;
  const int64_t slot_sizes[kNumInputSlots] = {config.max_num_batched_tokens,
                                              config.max_num_batched_tokens,
                                              config.max_num_batched_tokens,
                                              config.max_num_seqs + 1,
                                              config.max_num_seqs,
                                              int64_t{config.max_num_seqs} * max_blocks_per_seq,
                                              config.max_num_seqs};
  for (int64_t size : slot_sizes) {
    input_buffers_.push_back(backend.allocate(static_cast<size_t>(size) * sizeof(int32_t)));
  }
  logits_buffer_ = backend.allocate(static_cast<size_t>(config.max_num_seqs) * mc.vocab_size *
                                    dtype_size(DType::kF32));
  sampler_ = make_logits_sampler(backend, config.max_num_seqs, mc.vocab_size);
  model.allocate_workspace(config.max_num_batched_tokens, config.max_num_seqs);
}

void ModelRunner::apply_state_updates(const SchedulerOutput& scheduled) {
  for (SeqId seq_id : scheduled.finished_seq_ids) sequences_.erase(seq_id);
  for (const NewSequenceData& data : scheduled.new_sequences) {
    sequences_[data.seq_id] = SequenceState{data.token_ids, data.num_prompt_tokens, data.params,
                                            data.sampling_seed, data.block_ids};
  }
  for (const ScheduledSequence& seq : scheduled.scheduled) {
    auto it = sequences_.find(seq.seq_id);
    if (it == sequences_.end()) {
      throw std::logic_error("runner has no state for scheduled sequence " +
                             std::to_string(seq.seq_id));
    }
    std::vector<int>& blocks = it->second.block_ids;
    blocks.insert(blocks.end(), seq.new_block_ids.begin(), seq.new_block_ids.end());
  }
}

ModelRunner::StepInputs ModelRunner::prepare_inputs(const SchedulerOutput& scheduled) const {
  StepInputs in;
  in.query_start_loc.push_back(0);
  for (const ScheduledSequence& seq : scheduled.scheduled) {
    const SequenceState& state = sequences_.at(seq.seq_id);
    in.max_blocks_per_seq =
        std::max(in.max_blocks_per_seq, static_cast<int>(state.block_ids.size()));
  }
  for (const ScheduledSequence& seq : scheduled.scheduled) {
    const SequenceState& state = sequences_.at(seq.seq_id);
    for (int i = 0; i < seq.num_scheduled_tokens; ++i) {
      const int position = seq.num_computed_tokens + i;
      in.input_ids.push_back(state.token_ids.at(position));
      in.positions.push_back(position);
      const int block = state.block_ids.at(position / config_.block_size);
      in.slot_mapping.push_back(block * config_.block_size + position % config_.block_size);
    }
    const int seq_len = seq.num_computed_tokens + seq.num_scheduled_tokens;
    in.query_start_loc.push_back(in.query_start_loc.back() + seq.num_scheduled_tokens);
    in.seq_lens.push_back(seq_len);
    in.max_query_len = std::max(in.max_query_len, seq.num_scheduled_tokens);
    in.max_seq_len = std::max(in.max_seq_len, seq_len);
    in.block_table.insert(in.block_table.end(), state.block_ids.begin(), state.block_ids.end());
    in.block_table.resize(in.seq_lens.size() * in.max_blocks_per_seq, 0);  // null-block padding
    if (seq.sample) {
      in.logits_indices.push_back(in.query_start_loc.back() - 1);
      in.sampled_seq_ids.push_back(seq.seq_id);
    }
  }
  return in;
}

Tensor ModelRunner::upload_i32(const std::vector<int32_t>& host, int slot) {
  Buffer& buffer = input_buffers_.at(slot);
  if (host.size() * sizeof(int32_t) > buffer.nbytes()) {
    throw std::logic_error("step input " + std::to_string(slot) + " exceeds its buffer");
  }
  Tensor tensor(buffer.data(), DType::kI32, {static_cast<int64_t>(host.size())},
                backend_.device_type());
  if (!host.empty()) backend_.copy_from_host(tensor, host.data());
  return tensor;
}

AttentionMetadata ModelRunner::upload_metadata(const StepInputs& in) {
  AttentionMetadata meta;
  meta.num_seqs = static_cast<int>(in.seq_lens.size());
  meta.max_query_len = in.max_query_len;
  meta.max_seq_len = in.max_seq_len;
  meta.max_blocks_per_seq = in.max_blocks_per_seq;
  meta.query_start_loc = upload_i32(in.query_start_loc, kQueryStartLoc);
  meta.seq_lens = upload_i32(in.seq_lens, kSeqLens);
  meta.block_table =
      upload_i32(in.block_table, kBlockTable).view({meta.num_seqs, in.max_blocks_per_seq});
  meta.slot_mapping = upload_i32(in.slot_mapping, kSlotMapping);
  meta.positions = upload_i32(in.positions, kPositions);
  return meta;
}

std::vector<SamplingRow> ModelRunner::sampling_rows(const std::vector<SeqId>& seq_ids) const {
  std::vector<SamplingRow> rows;
  rows.reserve(seq_ids.size());
  for (SeqId seq_id : seq_ids) {
    const SequenceState& state = sequences_.at(seq_id);
    SamplingRow row;
    row.params = &state.params;
    const std::span<const int> tokens(state.token_ids);
    row.prompt_token_ids = tokens.first(state.num_prompt_tokens);
    row.output_token_ids = tokens.subspan(state.num_prompt_tokens);
    row.seed = state.sampling_seed;
    // NOTE: until min_tokens are out, every token that would finish the sequence is masked.
    if (static_cast<int>(row.output_token_ids.size()) < state.params.min_tokens) {
      row.masked_token_ids = state.params.stop_token_ids;
      if (!state.params.ignore_eos) {
        for (int eos : config_.eos_token_ids) {
          if (!contains(row.masked_token_ids, eos)) row.masked_token_ids.push_back(eos);
        }
      }
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

ModelRunnerOutput ModelRunner::execute(const SchedulerOutput& scheduled) {
  apply_state_updates(scheduled);
  ModelRunnerOutput output;
  if (scheduled.scheduled.empty()) return output;

  const StepInputs in = prepare_inputs(scheduled);
  const AttentionMetadata meta = upload_metadata(in);
  ForwardInputs inputs;
  inputs.input_ids = upload_i32(in.input_ids, kInputIds);
  inputs.attention = &meta;
  inputs.logits_indices = upload_i32(in.logits_indices, kLogitsIndices);

  const int vocab_size = model_.config().vocab_size;
  const int64_t num_rows = static_cast<int64_t>(in.logits_indices.size());
  Tensor logits(logits_buffer_.data(), DType::kF32, {num_rows, vocab_size}, backend_.device_type());
  model_.forward(inputs, kv_cache_, logits);
  if (num_rows == 0) return output;

  const std::vector<SampleResult> results =
      sampler_->sample(logits, sampling_rows(in.sampled_seq_ids));
  for (size_t i = 0; i < results.size(); ++i) {
    const SeqId seq_id = in.sampled_seq_ids[i];
    sequences_.at(seq_id).token_ids.push_back(results[i].token_id);
    output.sampled.push_back({seq_id, results[i].token_id, results[i].logprobs});
  }
  return output;
}

}  // namespace engine
