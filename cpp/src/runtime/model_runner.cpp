#include "runtime/model_runner.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace engine {
namespace {

int ceil_div(int a, int b) { return (a + b - 1) / b; }

bool contains(const std::vector<int>& ids, int id) {
  return std::find(ids.begin(), ids.end(), id) != ids.end();
}

// Rows the null block serves: a dummy token at position 0, cached in slot 0 of block 0 (never
// handed to a request), attending to itself alone. query_start_loc[first_seq] must be set.
void write_padding_rows(HostStepArrays host, int first_seq, int num_seqs, int width) {
  for (int i = first_seq; i < num_seqs; ++i) {
    const int t = host.query_start_loc[i];
    host.input_ids[t] = 0;
    host.positions[t] = 0;
    host.slot_mapping[t] = 0;
    host.logits_indices[i] = t;
    host.query_start_loc[i + 1] = t + 1;
    host.seq_lens[i] = 1;
    std::fill_n(host.block_table + int64_t{i} * width, width, 0);
  }
}

}  // namespace

int64_t kv_cache_bytes_per_block(const ModelConfig& config, int block_size, DType dtype) {
  return int64_t{2} * config.num_hidden_layers * block_size * config.num_key_value_heads *
         config.head_dim * static_cast<int64_t>(dtype_size(dtype));
}

// Every per-step input is bounded by the token budget, max_num_seqs and max_model_len, so the
// buffers are allocated once here and never per step.
ModelRunner::ModelRunner(Backend& backend, Model& model, const RunnerConfig& config)
    : backend_(backend),
      model_(model),
      config_(config),
      inputs_(backend, config.max_num_batched_tokens, config.max_num_seqs,
              ceil_div(config.max_model_len, config.block_size) + 1,
              config.max_num_seqs + config.max_num_batched_tokens) {
  const ModelConfig& mc = model.config();
  logits_buffer_ = backend.allocate(static_cast<size_t>(max_logits_rows()) * mc.vocab_size *
                                    dtype_size(DType::kF32));
  sampler_ =
      make_logits_sampler(backend, config.max_num_seqs, max_scored_prompt_rows(), mc.vocab_size);
  model.allocate_workspace(config.max_num_batched_tokens, max_logits_rows());
}

int ModelRunner::max_scored_prompt_rows() const {
  return config_.max_num_prompt_logprob_tokens > 0 ? config_.max_num_prompt_logprob_tokens
                                                   : config_.max_num_batched_tokens;
}

int ModelRunner::max_logits_rows() const { return config_.max_num_seqs + max_scored_prompt_rows(); }

DType ModelRunner::kv_cache_dtype() const {
  return config_.kv_cache_dtype.value_or(backend_.compute_dtype());
}

int ModelRunner::max_block_table_width() const {
  return ceil_div(config_.max_model_len, config_.block_size) + 1;
}

void ModelRunner::allocate_kv_cache(int64_t num_blocks) {
  const ModelConfig& mc = model_.config();
  const DType dtype = kv_cache_dtype();
  const std::vector<int64_t> layer_shape{num_blocks, config_.block_size, mc.num_key_value_heads,
                                         mc.head_dim};
  const size_t layer_bytes = Tensor(nullptr, dtype, layer_shape).nbytes();
  const bool scaled = uses_calibrated_kv_cache_scales();
  kv_buffers_.clear();
  kv_cache_.clear();
  for (int layer = 0; layer < mc.num_hidden_layers; ++layer) {
    void* k = kv_buffers_.emplace_back(backend_.allocate(layer_bytes)).data();
    void* v = kv_buffers_.emplace_back(backend_.allocate(layer_bytes)).data();
    kv_cache_.push_back({Tensor(k, dtype, layer_shape, backend_.device_type()),
                         Tensor(v, dtype, layer_shape, backend_.device_type()),
                         scaled ? model_.kv_cache_scales().at(layer) : KVCacheScales{}});
  }
}

bool ModelRunner::uses_calibrated_kv_cache_scales() const {
  return kv_cache_dtype() == DType::kFP8E4M3 && !model_.kv_cache_scales().empty();
}

void ModelRunner::run_forward(const StepPlan& plan, const DeviceStepArrays& device,
                              const std::vector<KVCacheLayer>& cache, void* logits) {
  AttentionMetadata meta;
  meta.num_seqs = plan.shape.num_seqs;
  meta.max_query_len = plan.max_query_len;
  meta.max_seq_len = plan.max_seq_len;
  meta.max_blocks_per_seq = plan.shape.block_table_width;
  meta.query_start_loc = device.query_start_loc;
  meta.seq_lens = device.seq_lens;
  meta.block_table = device.block_table;
  meta.slot_mapping = device.slot_mapping;
  meta.positions = device.positions;
  ForwardInputs inputs{device.input_ids, &meta, device.logits_indices};
  model_.forward(inputs, cache,
                 Tensor(logits, DType::kF32, {plan.shape.num_logits, model_.config().vocab_size},
                        backend_.device_type()));
}

void ModelRunner::profile_run() {
  // Sequences of up to max_model_len tokens (positions stay inside the rope table) filling the
  // token budget; all of them cache into block 0 of a one-block scratch cache.
  const int len = std::min(config_.max_model_len, config_.max_num_batched_tokens);
  const int num_seqs =
      std::min(config_.max_num_seqs, ceil_div(config_.max_num_batched_tokens, len));
  const int num_tokens = std::min(config_.max_num_batched_tokens, num_seqs * len);
  StepPlan plan;
  plan.shape = {num_tokens, num_seqs, std::min(num_tokens, config_.max_num_seqs),
                ceil_div(len, config_.block_size)};
  plan.max_query_len = len;
  plan.max_seq_len = len;
  HostStepArrays host = inputs_.begin(plan.shape);
  host.query_start_loc[0] = 0;
  for (int i = 0; i < num_seqs; ++i) {
    const int begin = i * len, end = std::min(num_tokens, begin + len);
    for (int t = begin; t < end; ++t) {
      host.input_ids[t] = 0;
      host.positions[t] = t - begin;
      host.slot_mapping[t] = (t - begin) % config_.block_size;
    }
    host.query_start_loc[i + 1] = end;
    host.seq_lens[i] = end - begin;
  }
  std::fill_n(host.block_table, int64_t{num_seqs} * plan.shape.block_table_width, 0);
  for (int s = 0; s < plan.shape.num_logits; ++s) host.logits_indices[s] = s;

  const ModelConfig& mc = model_.config();
  const DType dtype = kv_cache_dtype();
  const std::vector<int64_t> shape{1, config_.block_size, mc.num_key_value_heads, mc.head_dim};
  Buffer k = backend_.allocate(Tensor(nullptr, dtype, shape).nbytes());
  Buffer v = backend_.allocate(Tensor(nullptr, dtype, shape).nbytes());
  const std::vector<KVCacheLayer> scratch_cache(
      mc.num_hidden_layers,
      KVCacheLayer{Tensor(k.data(), dtype, shape, backend_.device_type()),
                   Tensor(v.data(), dtype, shape, backend_.device_type()), KVCacheScales{}});
  run_forward(plan, inputs_.upload(), scratch_cache, logits_buffer_.data());
  backend_.synchronize();
}

ModelRunner::StepPlan ModelRunner::padded_decode_plan(int batch_size) const {
  StepPlan plan;
  plan.shape = {batch_size, batch_size, batch_size, max_block_table_width()};
  plan.max_query_len = 1;
  // NOTE: a graph keeps the launch shapes it was captured with, so attention plans for the
  // longest context; kernels read each sequence's real length from seq_lens.
  plan.max_seq_len = config_.max_model_len;
  plan.graph_batch_size = batch_size;
  return plan;
}

void ModelRunner::capture_decode_graphs() {
  if (!config_.use_cuda_graphs || !backend_.supports_graphs() || kv_cache_.empty()) return;
  const std::vector<int> sizes = engine::decode_graph_batch_sizes(
      std::min(config_.max_num_seqs, config_.max_num_batched_tokens));
  // Every size runs eagerly first, largest first, so workspaces that grow on first use (the
  // attention split scratch, GEMM algorithm caches) have their final addresses before any graph
  // records them.
  for (auto it = sizes.rbegin(); it != sizes.rend(); ++it) {
    const StepPlan plan = padded_decode_plan(*it);
    HostStepArrays host = inputs_.begin(plan.shape);
    host.query_start_loc[0] = 0;
    write_padding_rows(host, 0, *it, plan.shape.block_table_width);
    run_forward(plan, inputs_.upload(), kv_cache_, logits_buffer_.data());
    backend_.synchronize();  // the next size rewrites the staged inputs
  }
  for (int size : sizes) {
    const StepPlan plan = padded_decode_plan(size);
    HostStepArrays host = inputs_.begin(plan.shape);
    host.query_start_loc[0] = 0;
    write_padding_rows(host, 0, size, plan.shape.block_table_width);
    const DeviceStepArrays device = inputs_.upload();
    backend_.synchronize();
    // The recorded work owns copies of its plan and views (a backend may replay the callable).
    auto forward = [this, plan, device] {
      run_forward(plan, device, kv_cache_, logits_buffer_.data());
    };
    graphs_.add(size, backend_.capture(forward), device.pending_tokens.data);
  }
}

void ModelRunner::apply_state_updates(const SchedulerOutput& scheduled) {
  for (SeqId seq_id : scheduled.finished_seq_ids) sequences_.erase(seq_id);
  for (const NewSequenceData& data : scheduled.new_sequences) {
    sequences_[data.seq_id] =
        SequenceState{data.token_ids,     data.num_prompt_tokens, data.params,
                      data.sampling_seed, data.block_ids,         data.prompt_logprobs};
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

ModelRunner::StepPlan ModelRunner::plan_step(const SchedulerOutput& scheduled) const {
  StepPlan plan;
  const int num_seqs = static_cast<int>(scheduled.scheduled.size());
  bool pure_decode = true;
  for (const ScheduledSequence& seq : scheduled.scheduled) {
    const SequenceState& state = sequences_.at(seq.seq_id);
    const int num_known = static_cast<int>(state.token_ids.size());
    const int end = seq.num_computed_tokens + seq.num_scheduled_tokens;
    if (end > num_known) {
      // Only the one token a step in flight samples may be missing.
      if (end != num_known + 1 || state.num_pending != 1) {
        throw std::logic_error("sequence " + std::to_string(seq.seq_id) + " is scheduled up to " +
                               std::to_string(end) + " tokens but has " +
                               std::to_string(num_known) + " and " +
                               std::to_string(state.num_pending) + " pending");
      }
      ++plan.shape.num_pending;
    }
    plan.shape.num_tokens += seq.num_scheduled_tokens;
    plan.shape.num_logits += seq.sample ? 1 : 0;
    plan.num_prompt_rows += num_prompt_rows(seq, state);
    plan.shape.block_table_width =
        std::max(plan.shape.block_table_width, static_cast<int>(state.block_ids.size()));
    plan.max_query_len = std::max(plan.max_query_len, seq.num_scheduled_tokens);
    plan.max_seq_len =
        std::max(plan.max_seq_len, seq.num_computed_tokens + seq.num_scheduled_tokens);
    pure_decode = pure_decode && seq.num_scheduled_tokens == 1 && seq.sample;
  }
  plan.shape.num_logits += plan.num_prompt_rows;
  plan.shape.num_seqs = num_seqs;
  plan.num_real_seqs = num_seqs;
  if (pure_decode && plan.num_prompt_rows == 0) {
    if (std::optional<int> bucket = graphs_.bucket_for(num_seqs)) {
      const int num_pending = plan.shape.num_pending;
      plan = padded_decode_plan(*bucket);
      plan.num_real_seqs = num_seqs;
      plan.shape.num_pending = num_pending;
    }
  }
  return plan;
}

void ModelRunner::write_inputs(const SchedulerOutput& scheduled, const StepPlan& plan,
                               HostStepArrays host, InFlightStep& step) {
  const int width = plan.shape.block_table_width;
  const int block_size = config_.block_size;
  int t = 0, s = 0, p = 0;
  host.query_start_loc[0] = 0;
  step.sampled_seq_ids.clear();
  for (size_t i = 0; i < scheduled.scheduled.size(); ++i) {
    const ScheduledSequence& seq = scheduled.scheduled[i];
    const SequenceState& state = sequences_.at(seq.seq_id);
    const int num_known = static_cast<int>(state.token_ids.size());
    for (int k = 0; k < seq.num_scheduled_tokens; ++k, ++t) {
      const int position = seq.num_computed_tokens + k;
      if (position < num_known) {
        host.input_ids[t] = state.token_ids[position];
      } else {  // the token the step in flight samples (plan_step checked there is one)
        host.input_ids[t] = 0;
        host.pending_tokens[2 * p] = t;
        host.pending_tokens[2 * p + 1] = state.pending_row;
        ++p;
      }
      host.positions[t] = position;
      host.slot_mapping[t] =
          state.block_ids.at(position / block_size) * block_size + position % block_size;
    }
    host.query_start_loc[i + 1] = t;
    host.seq_lens[i] = seq.num_computed_tokens + seq.num_scheduled_tokens;
    int32_t* row = host.block_table + int64_t(i) * width;
    std::copy(state.block_ids.begin(), state.block_ids.end(), row);
    std::fill(row + state.block_ids.size(), row + width, 0);  // null-block padding
    if (seq.sample) {
      host.logits_indices[s++] = t - 1;
      step.sampled_seq_ids.push_back(seq.seq_id);
    }
  }
  write_prompt_rows(scheduled, plan, host, s, step);
  write_padding_rows(host, plan.num_real_seqs, plan.shape.num_seqs, width);
}

void ModelRunner::mark_pending(const InFlightStep& step) {
  for (size_t row = 0; row < step.sampled_seq_ids.size(); ++row) {
    SequenceState& state = sequences_.at(step.sampled_seq_ids[row]);
    ++state.num_pending;
    state.pending_row = static_cast<int>(row);
  }
}

// The rows at positions p of the step with p + 1 still in the prompt: logits at p score token
// p + 1. Only before the sequence's first output (a preempted one is not scored twice).
int ModelRunner::num_prompt_rows(const ScheduledSequence& seq, const SequenceState& state) const {
  if (!state.prompt_logprobs ||
      static_cast<int>(state.token_ids.size()) != state.num_prompt_tokens) {
    return 0;
  }
  const int end =
      std::min(seq.num_computed_tokens + seq.num_scheduled_tokens, state.num_prompt_tokens - 1);
  return std::max(0, end - seq.num_computed_tokens);
}

void ModelRunner::write_prompt_rows(const SchedulerOutput& scheduled, const StepPlan& plan,
                                    HostStepArrays host, int first_row, InFlightStep& step) {
  step.prompt_rows.clear();
  step.prompt_targets.clear();
  step.prompt_num_top.clear();
  if (plan.num_prompt_rows == 0) return;  // the common step: no sequence scores its prompt
  int row = first_row;
  for (size_t i = 0; i < scheduled.scheduled.size(); ++i) {
    const ScheduledSequence& seq = scheduled.scheduled[i];
    const SequenceState& state = sequences_.at(seq.seq_id);
    const int count = num_prompt_rows(seq, state);
    if (count == 0) continue;
    const int first_token = host.query_start_loc[i];
    for (int k = 0; k < count; ++k) {
      host.logits_indices[row++] = first_token + k;
      step.prompt_targets.push_back(state.token_ids[seq.num_computed_tokens + k + 1]);
      step.prompt_num_top.push_back(*state.params.prompt_logprobs);
    }
    step.prompt_rows.push_back({seq.seq_id, seq.num_computed_tokens + 1, count});
  }
}

void ModelRunner::launch_prompt_scores(const InFlightStep& step, void* logits) {
  if (step.prompt_rows.empty()) return;
  const int64_t vocab = model_.config().vocab_size;
  const auto first_row = static_cast<int64_t>(step.sampled_seq_ids.size());
  const auto num_rows = static_cast<int64_t>(step.prompt_targets.size());
  const Tensor rows(static_cast<float*>(logits) + first_row * vocab, DType::kF32, {num_rows, vocab},
                    backend_.device_type());
  sampler_->launch_scores(rows, step.prompt_targets, step.prompt_num_top);
}

std::vector<PromptLogprobsChunk> ModelRunner::collect_prompt_scores(const InFlightStep& step) {
  std::vector<PromptLogprobsChunk> chunks;
  if (step.prompt_rows.empty()) return chunks;
  std::vector<TokenLogprobs> scores = sampler_->collect_scores();
  auto next = scores.begin();
  for (const PromptRows& part : step.prompt_rows) {
    chunks.push_back({part.seq_id, part.first_position,
                      std::vector<TokenLogprobs>(std::make_move_iterator(next),
                                                 std::make_move_iterator(next + part.count))});
    next += part.count;
  }
  return chunks;
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
    row.num_pending_outputs = state.num_pending;
    row.pending_row = state.num_pending > 0 ? state.pending_row : -1;  // of the step in flight
    row.seed = state.sampling_seed;
    // NOTE: until min_tokens are out, every token that would finish the sequence is masked.
    if (static_cast<int>(row.output_index()) < state.params.min_tokens) {
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

bool ModelRunner::can_launch_ahead() const { return num_in_flight_ == 1; }

void ModelRunner::launch(const SchedulerOutput& scheduled) {
  if (num_in_flight_ == 2) {
    throw std::logic_error(
        "ModelRunner::launch: two steps are in flight; finish() the oldest first");
  }
  apply_state_updates(scheduled);
  if (scheduled.scheduled.empty()) return;

  const StepPlan plan = plan_step(scheduled);
  InFlightStep& step = steps_[(oldest_ + num_in_flight_) % 2];
  if (plan.shape.num_logits > max_logits_rows()) {
    throw std::logic_error("ModelRunner::launch: " + std::to_string(plan.shape.num_logits) +
                           " logits rows but the buffer holds " +
                           std::to_string(max_logits_rows()) +
                           "; the scheduler caps scored prompt tokens per step");
  }
  void* logits = logits_buffer_.data();
  write_inputs(scheduled, plan, inputs_.begin(plan.shape), step);
  const DeviceStepArrays device = inputs_.upload();
  // Ids the step in flight samples become this step's inputs on the device, after its sampling.
  if (plan.shape.num_pending > 0)
    sampler_->write_sampled_ids(device.input_ids, device.pending_tokens);
  if (plan.graph_batch_size) {
    graphs_.replay(*plan.graph_batch_size, device.pending_tokens.data);
  } else {
    run_forward(plan, device, kv_cache_, logits);
  }
  const int64_t num_rows = static_cast<int64_t>(step.sampled_seq_ids.size());
  if (num_rows > 0) {
    // Built while the device runs the forward.
    const std::vector<SamplingRow> rows = sampling_rows(step.sampled_seq_ids);
    sampler_->launch(
        Tensor(logits, DType::kF32, {num_rows, model_.config().vocab_size}, backend_.device_type()),
        rows);
    mark_pending(step);
  }
  launch_prompt_scores(step, logits);
  step.fence = backend_.record_fence();
  // Counted last: a step that threw on the way never looks in flight with a stale fence.
  ++num_in_flight_;
}

ModelRunnerOutput ModelRunner::finish() {
  ModelRunnerOutput output;
  if (num_in_flight_ == 0) return output;
  const InFlightStep& step = steps_[oldest_];
  oldest_ = (oldest_ + 1) % 2;
  --num_in_flight_;
  // Its staged inputs are rewritten by the step after next.
  backend_.wait_for_fence(step.fence);
  output.prompt_logprobs = collect_prompt_scores(step);
  if (step.sampled_seq_ids.empty()) return output;
  const std::vector<SampleResult> results = sampler_->collect();
  output.sampled.reserve(results.size());
  for (size_t i = 0; i < results.size(); ++i) {
    const SeqId seq_id = step.sampled_seq_ids[i];
    // A sequence finished, aborted or preempted since has no state; its token still goes out.
    auto state = sequences_.find(seq_id);
    if (state != sequences_.end()) {
      state->second.token_ids.push_back(results[i].token_id);
      if (--state->second.num_pending == 0) state->second.pending_row = -1;
    }
    output.sampled.push_back({seq_id, results[i].token_id, results[i].logprobs});
  }
  return output;
}

ModelRunnerOutput ModelRunner::execute(const SchedulerOutput& scheduled) {
  launch(scheduled);
  return finish();
}

}  // namespace engine
