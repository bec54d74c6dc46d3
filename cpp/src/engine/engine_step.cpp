// The step loop of Engine::Impl: drain what other threads queued, schedule, run, sample, and
// turn sequence updates into per-request outputs.

#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <string>

#include "engine/engine_impl.h"

namespace engine {

struct StepOutputs {
  std::vector<RequestOutput> list;
  std::unordered_map<std::string, size_t> index;
};

namespace {

RequestOutput& output_of(StepOutputs& outputs, const std::string& request_id) {
  auto [it, inserted] = outputs.index.try_emplace(request_id, outputs.list.size());
  if (inserted) outputs.list.push_back(RequestOutput{request_id, {}, {}, false, 0, {}});
  return outputs.list[it->second];
}

}  // namespace

CompletionOutput& Engine::Impl::output_for(RequestGroup& group, int sample_index,
                                           StepOutputs& outputs) {
  RequestOutput& request = output_of(outputs, group.request_id);
  for (CompletionOutput& completion : request.outputs) {
    if (completion.index == sample_index) return completion;
  }
  request.outputs.push_back(CompletionOutput{});
  request.outputs.back().index = sample_index;
  return request.outputs.back();
}

void Engine::Impl::record_update(const SequenceUpdate& update, StepOutputs& outputs) {
  auto owner = seq_owner_.find(update.seq_id);
  if (owner == seq_owner_.end()) return;
  auto [group, sample_index] = owner->second;
  CompletionOutput& completion = output_for(*group, sample_index, outputs);
  completion.token_ids.insert(completion.token_ids.end(), update.new_token_ids.begin(),
                              update.new_token_ids.end());
  completion.logprobs.insert(completion.logprobs.end(), update.new_logprobs.begin(),
                             update.new_logprobs.end());
  if (!update.new_token_ids.empty()) {
    token_counts_.num_generation_tokens += static_cast<int64_t>(update.new_token_ids.size());
    if (!group->has_output_tokens) {
      token_counts_.num_prompt_tokens += group->num_prompt_tokens;
      output_of(outputs, group->request_id).prompt_logprobs = std::move(group->prompt_logprobs);
    }
    group->has_output_tokens = true;
  }
  if (update.finish_reason) {
    completion.finish_reason = update.finish_reason;
    completion.stop_token_id = update.stop_token_id;
    group->finished[sample_index] = true;
  }
}

void Engine::Impl::apply_abort(const Abort& abort, StepOutputs& outputs) {
  auto it = groups_.find(abort.request_id);
  if (it == groups_.end()) return;
  RequestGroup& group = *it->second;
  for (int index = 0; index < static_cast<int>(group.seq_ids.size()); ++index) {
    if (abort.sample_index && *abort.sample_index != index) continue;
    if (group.finished[index]) continue;
    const SeqId seq_id = group.seq_ids[index];
    auto held = std::find_if(group.held.begin(), group.held.end(),
                             [&](const auto& r) { return r->seq_id == seq_id; });
    if (held != group.held.end()) {
      group.held.erase(held);
      SequenceUpdate update;
      update.seq_id = seq_id;
      update.finish_reason = FinishReason::kAbort;
      record_update(update, outputs);
      continue;
    }
    for (const SequenceUpdate& update : scheduler_->abort({seq_id})) record_update(update, outputs);
  }
}

std::vector<Engine::Impl::Abort> Engine::Impl::drain_inbox(StepOutputs& outputs,
                                                           bool defer_aborts) {
  std::vector<std::unique_ptr<RequestGroup>> adds;
  std::vector<Abort> aborts;
  {
    std::lock_guard<std::mutex> lock(inbox_mutex_);
    adds.swap(inbox_adds_);
    aborts.swap(inbox_aborts_);
  }
  for (auto& group : adds) {
    for (int index = 0; index < static_cast<int>(group->seq_ids.size()); ++index) {
      seq_owner_[group->seq_ids[index]] = {group.get(), index};
    }
    // The other samples wait until the first has computed the prompt, then hit its blocks.
    std::unique_ptr<Request> first = std::move(group->held.front());
    group->held.erase(group->held.begin());
    scheduler_->add_request(std::move(first));
    groups_[group->request_id] = std::move(group);
  }
  if (defer_aborts) return aborts;
  for (const Abort& abort : aborts) apply_abort(abort, outputs);
  return {};
}

void Engine::Impl::record_cached_tokens(const SchedulerOutput& scheduled) {
  for (const NewSequenceData& data : scheduled.new_sequences) {
    const Request* request = scheduler_->find(data.seq_id);
    auto owner = seq_owner_.find(data.seq_id);
    if (request == nullptr || owner == seq_owner_.end()) continue;
    RequestGroup& group = *owner->second.first;
    if (group.num_cached_tokens < 0) group.num_cached_tokens = request->num_cached_tokens;
  }
}

void Engine::Impl::release_held_samples() {
  for (auto& [request_id, group] : groups_) {
    if (group->held.empty()) continue;
    const Request* first = scheduler_->find(group->seq_ids[0]);
    // Its first token is back once the prompt's KV is in the cache (num_computed_tokens counts
    // scheduled steps too, so it would release them early).
    const bool prompt_done =
        first == nullptr || first->is_finished() || first->num_output_tokens() > 0;
    if (!prompt_done) continue;
    for (auto& sample : group->held) scheduler_->add_request(std::move(sample));
    group->held.clear();
  }
}

void Engine::Impl::record_prompt_logprobs(std::vector<PromptLogprobsChunk>& chunks) {
  for (PromptLogprobsChunk& chunk : chunks) {
    auto owner = seq_owner_.find(chunk.seq_id);
    if (owner == seq_owner_.end()) continue;
    RequestGroup& group = *owner->second.first;
    if (group.has_output_tokens) continue;
    // Entry i scores prompt token i + 1; a recomputed chunk (after preemption) overwrites.
    group.prompt_logprobs.resize(std::max(group.num_prompt_tokens - 1, 0));
    for (size_t k = 0; k < chunk.logprobs.size(); ++k) {
      group.prompt_logprobs.at(chunk.first_position - 1 + k) = std::move(chunk.logprobs[k]);
    }
  }
}

void Engine::Impl::complete_oldest_step(StepOutputs& outputs) {
  const SchedulerOutput scheduled = std::move(in_flight_.front());
  in_flight_.pop_front();
  ModelRunnerOutput sampled = runner_->finish();
  record_prompt_logprobs(sampled.prompt_logprobs);
  for (const SequenceUpdate& update : scheduler_->update_from_output(scheduled, sampled)) {
    record_update(update, outputs);
  }
  release_held_samples();
}

bool Engine::Impl::schedule_and_launch() {
  SchedulerOutput scheduled = scheduler_->schedule();
  record_cached_tokens(scheduled);
  runner_->launch(scheduled);
  if (scheduled.scheduled.empty()) return false;
  in_flight_.push_back(std::move(scheduled));
  return true;
}

std::vector<RequestOutput> Engine::Impl::step() {
  std::lock_guard<std::mutex> step_lock(step_mutex_);
  const auto start = std::chrono::steady_clock::now();
  const double wait_before = backend_->device_wait_seconds();
  StepOutputs outputs;
  // NOTE: steps are pipelined. This call completes the step launched by the previous call and
  // returns its outputs, with the next step already enqueued, so the caller's handling of them
  // (detokenizing, streaming) overlaps the device's next forward. With async scheduling the
  // next step is scheduled and enqueued *before* waiting for the one in flight, so the host's
  // scheduling overlaps the device too. An abort issued in between lands after the steps
  // enqueued: at most two tokens are computed and dropped (the scheduler skips sequences that
  // are no longer running); the step in flight still delivers its tokens first.
  // NOTE: a step's effects on the scheduler happen when it is scheduled, so an exception from
  // launch() leaves its sequences waiting for tokens that never come: the engine is then
  // unusable, and EngineLoop reports it dead.
  bool launched = false, completed = false;
  if (async_scheduling_ && runner_->can_launch_ahead()) {
    const std::vector<Abort> aborts = drain_inbox(outputs, /*defer_aborts=*/true);
    launched = schedule_and_launch();
    timing_.num_steps_launched_ahead += launched ? 1 : 0;
    complete_oldest_step(outputs);
    completed = true;
    for (const Abort& abort : aborts) apply_abort(abort, outputs);
  } else {
    if (!in_flight_.empty()) {
      complete_oldest_step(outputs);
      completed = true;
    }
    drain_inbox(outputs);
    launched = schedule_and_launch();
  }
  // A step launched ahead for sequences that have all finished since (on EOS, a stop token or
  // an abort) computes nothing anyone waits for: completed now, it holds nothing while idle.
  while (!in_flight_.empty() && !scheduler_->has_unfinished()) complete_oldest_step(outputs);
  if (completed || launched) {
    timing_.num_steps += completed ? 1 : 0;
    timing_.step_seconds +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    timing_.device_wait_seconds += backend_->device_wait_seconds() - wait_before;
  }

  for (RequestOutput& output : outputs.list) {
    auto it = groups_.find(output.request_id);
    RequestGroup& group = *it->second;
    output.num_cached_tokens = std::max(group.num_cached_tokens, 0);
    output.finished = std::all_of(group.finished.begin(), group.finished.end(),
                                  [](bool finished) { return finished; });
    if (!output.finished) continue;
    for (SeqId seq_id : group.seq_ids) seq_owner_.erase(seq_id);
    groups_.erase(it);
    std::lock_guard<std::mutex> lock(inbox_mutex_);
    live_ids_.erase(output.request_id);
    --num_unfinished_;
  }
  return std::move(outputs.list);
}

std::vector<RequestOutput> Engine::Impl::generate(const std::vector<std::vector<int>>& prompts,
                                                  const std::vector<SamplingParams>& params) {
  if (params.size() != prompts.size() && params.size() != 1) {
    throw std::invalid_argument("generate() got " + std::to_string(prompts.size()) +
                                " prompts but " + std::to_string(params.size()) +
                                " sampling params; give one, or one per prompt");
  }
  if (has_unfinished_requests()) {
    throw std::logic_error("generate() needs an idle engine; drive add_request() and step()");
  }
  auto params_of = [&](size_t i) -> const SamplingParams& {
    return params.size() == 1 ? params[0] : params[i];
  };
  for (size_t i = 0; i < prompts.size(); ++i) {
    try {
      validate_request(prompts[i], params_of(i));
    } catch (const std::invalid_argument& error) {
      throw std::invalid_argument("request " + std::to_string(i) + ": " + error.what());
    }
  }
  std::vector<RequestOutput> results(prompts.size());
  std::unordered_map<std::string, size_t> index_of;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const std::string id = std::to_string(i);
    results[i].request_id = id;
    results[i].prompt_token_ids = prompts[i];
    results[i].outputs.resize(params_of(i).n);
    for (int s = 0; s < params_of(i).n; ++s) results[i].outputs[s].index = s;
    index_of[id] = i;
    add_request(id, prompts[i], params_of(i));
  }
  while (has_unfinished_requests()) {
    for (RequestOutput& delta : step()) {
      RequestOutput& result = results[index_of.at(delta.request_id)];
      result.finished = delta.finished;
      result.num_cached_tokens = delta.num_cached_tokens;
      if (!delta.prompt_logprobs.empty()) result.prompt_logprobs = std::move(delta.prompt_logprobs);
      for (CompletionOutput& part : delta.outputs) {
        CompletionOutput& full = result.outputs[part.index];
        full.token_ids.insert(full.token_ids.end(), part.token_ids.begin(), part.token_ids.end());
        full.logprobs.insert(full.logprobs.end(), part.logprobs.begin(), part.logprobs.end());
        full.finish_reason = part.finish_reason;
        full.stop_token_id = part.stop_token_id;
      }
    }
  }
  return results;
}

EngineStats Engine::Impl::stats() const {
  std::lock_guard<std::mutex> lock(step_mutex_);
  const SchedulerStats s = scheduler_->stats();
  return EngineStats{s.num_running,
                     s.num_waiting,
                     kv_cache_->block_pool().usage(),
                     s.num_preemptions,
                     s.num_prefix_cache_queries,
                     s.num_prefix_cache_hits,
                     timing_.num_steps,
                     timing_.step_seconds,
                     timing_.device_wait_seconds,
                     timing_.num_steps_launched_ahead,
                     token_counts_.num_prompt_tokens,
                     token_counts_.num_generation_tokens};
}

// The public class forwards to Impl, keeping libengine's ABI free of internal types.
Engine::Engine(const EngineConfig& config) : impl_(std::make_unique<Impl>(config)) {}
Engine::~Engine() = default;
void Engine::add_request(const std::string& request_id, const std::vector<int>& prompt_token_ids,
                         const SamplingParams& params) {
  impl_->add_request(request_id, prompt_token_ids, params);
}
void Engine::validate_request(const std::vector<int>& prompt_token_ids,
                              const SamplingParams& params) const {
  impl_->validate_request(prompt_token_ids, params);
}
void Engine::abort(const std::string& request_id, std::optional<int> sample_index) {
  impl_->abort(request_id, sample_index);
}
std::vector<RequestOutput> Engine::step() { return impl_->step(); }
bool Engine::has_unfinished_requests() const { return impl_->has_unfinished_requests(); }
std::vector<RequestOutput> Engine::generate(const std::vector<std::vector<int>>& prompts,
                                            const std::vector<SamplingParams>& params) {
  return impl_->generate(prompts, params);
}
const ModelInfo& Engine::model_info() const { return impl_->model_info(); }
EngineStats Engine::stats() const { return impl_->stats(); }

}  // namespace engine
