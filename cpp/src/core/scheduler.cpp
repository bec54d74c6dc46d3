#include "core/scheduler.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <tuple>

namespace engine {

namespace {

bool contains(const std::vector<int>& ids, int id) {
  return std::find(ids.begin(), ids.end(), id) != ids.end();
}

}  // namespace

Scheduler::Scheduler(const SchedulerConfig& config, KVCacheManager& kv_cache)
    : config_(config), kv_cache_(kv_cache) {
  if (config.max_num_seqs < 1 || config.max_num_batched_tokens < 1 || config.max_model_len < 1) {
    throw std::invalid_argument(
        "SchedulerConfig needs max_num_seqs, max_num_batched_tokens and max_model_len >= 1, got " +
        std::to_string(config.max_num_seqs) + ", " + std::to_string(config.max_num_batched_tokens) +
        ", " + std::to_string(config.max_model_len));
  }
}

void Scheduler::add_request(std::unique_ptr<Request> request) {
  if (!request) throw std::invalid_argument("add_request: request is null");
  if (request->token_ids.empty()) {
    throw std::invalid_argument("add_request: sequence " + std::to_string(request->seq_id) +
                                " has no tokens; it needs at least one prompt token");
  }
  const SeqId seq_id = request->seq_id;
  if (requests_.count(seq_id) != 0) {
    throw std::invalid_argument("add_request: sequence id " + std::to_string(seq_id) +
                                " is already in use; ids must be unique");
  }
  request->status = RequestStatus::kWaiting;
  waiting_.push_back(request.get());
  requests_.emplace(seq_id, std::move(request));
}

std::vector<SequenceUpdate> Scheduler::abort(const std::vector<SeqId>& seq_ids) {
  std::vector<SequenceUpdate> updates;
  for (SeqId seq_id : seq_ids) {
    auto it = requests_.find(seq_id);
    if (it == requests_.end() || it->second->is_finished()) continue;
    finish(*it->second, FinishReason::kAbort);
    SequenceUpdate update;
    update.seq_id = seq_id;
    update.finish_reason = FinishReason::kAbort;
    updates.push_back(std::move(update));
  }
  return updates;
}

SchedulerOutput Scheduler::schedule() {
  SchedulerOutput out;
  // The runner drops these sequences' state; the scheduler forgets them only now, so that
  // the engine could still read them (find()) after the step that finished them.
  for (SeqId seq_id : finished_since_schedule_) {
    out.finished_seq_ids.push_back(seq_id);
    requests_.erase(seq_id);
  }
  finished_since_schedule_.clear();

  StepBudget budget{config_.max_num_batched_tokens, config_.max_num_prompt_logprob_tokens > 0
                                                        ? config_.max_num_prompt_logprob_tokens
                                                        : config_.max_num_batched_tokens};
  bool preempted = false;
  schedule_running(out, budget, preempted);
  // NOTE: after a preemption blocks are scarce; admitting waiting sequences now would only
  // lead to more preemptions next step.
  if (!preempted) schedule_waiting(out, budget);
  out.total_num_scheduled_tokens = config_.max_num_batched_tokens - budget.tokens;
  advance_scheduled(out);
  return out;
}

int Scheduler::StepBudget::allows(const Request& request) const {
  return request.scores_prompt_next() ? std::min(tokens, prompt_logprob_tokens) : tokens;
}

void Scheduler::StepBudget::count(const Request& request, int num_tokens, int sign) {
  tokens -= sign * num_tokens;
  if (request.scores_prompt_next()) prompt_logprob_tokens -= sign * num_tokens;
}

// Counts the step's tokens as computed and its samples as pending now, so the next schedule()
// can run before this step's output is back (the engine overlaps the two).
void Scheduler::advance_scheduled(const SchedulerOutput& out) {
  for (const ScheduledSequence& step : out.scheduled) {
    Request& request = *requests_.at(step.seq_id);
    request.num_computed_tokens += step.num_scheduled_tokens;
    if (step.sample) ++request.num_pending_tokens;
  }
}

// A pending token that will end the sequence by length: nothing is left to schedule for it.
bool Scheduler::finishes_by_length(const Request& request) const {
  const int num_outputs = request.num_output_tokens() + request.num_pending_tokens;
  return num_outputs >= request.params.max_tokens ||
         request.num_tokens_with_pending() >= config_.max_model_len;
}

void Scheduler::schedule_running(SchedulerOutput& out, StepBudget& budget, bool& preempted) {
  size_t i = 0;
  while (i < running_.size() && budget.tokens > 0) {
    Request* request = running_[i];
    const int num_tokens = request->num_tokens_with_pending();
    const int num_new =
        std::min(num_tokens - request->num_computed_tokens, budget.allows(*request));
    // NOTE: one step ahead at most: a second pending token waits for the first.
    const bool waits = request->num_pending_tokens > 1 ||
                       (request->num_pending_tokens == 1 && finishes_by_length(*request));
    if (num_new <= 0 || waits) {
      ++i;
      continue;
    }
    std::optional<std::vector<int>> new_blocks;
    bool preempted_self = false;
    while (!(new_blocks = kv_cache_.allocate_slots(*request, num_new))) {
      preempted = true;
      if (preempt_lowest(out, budget) == request) {
        preempted_self = true;
        break;
      }
    }
    if (preempted_self) break;
    // Victims taken from before this sequence shift it towards the front.
    i = std::find(running_.begin(), running_.end(), request) - running_.begin();
    ScheduledSequence scheduled;
    scheduled.seq_id = request->seq_id;
    scheduled.num_computed_tokens = request->num_computed_tokens;
    scheduled.num_scheduled_tokens = num_new;
    scheduled.new_block_ids = std::move(*new_blocks);
    scheduled.sample = request->num_computed_tokens + num_new == num_tokens;
    out.scheduled.push_back(std::move(scheduled));
    budget.count(*request, num_new, 1);
    ++i;
  }
}

Request* Scheduler::preempt_lowest(SchedulerOutput& out, StepBudget& budget) {
  const bool by_priority = config_.policy == SchedulingPolicy::kPriority;
  auto key = [by_priority](const Request* r) {
    return std::make_tuple(by_priority ? r->params.priority : 0, r->arrival);
  };
  // Ties go to the sequence latest in the running list.
  auto victim_it = running_.begin();
  for (auto it = running_.begin(); it != running_.end(); ++it) {
    if (key(*it) >= key(*victim_it)) victim_it = it;
  }
  Request* victim = *victim_it;
  running_.erase(victim_it);

  auto scheduled_it =
      std::find_if(out.scheduled.begin(), out.scheduled.end(),
                   [victim](const ScheduledSequence& s) { return s.seq_id == victim->seq_id; });
  if (scheduled_it != out.scheduled.end()) {
    budget.count(*victim, scheduled_it->num_scheduled_tokens, -1);
    out.scheduled.erase(scheduled_it);
  }

  kv_cache_.free(*victim);
  victim->num_computed_tokens = 0;
  victim->status = RequestStatus::kPreempted;
  ++victim->num_preemptions;
  ++num_preemptions_;
  // FCFS: the front keeps arrival order, as victims are taken latest arrival first. Under the
  // priority policy the waiting queue is scanned, so the position does not matter.
  waiting_.push_front(victim);
  out.finished_seq_ids.push_back(victim->seq_id);
  return victim;
}

std::deque<Request*>::iterator Scheduler::next_waiting() {
  if (config_.policy == SchedulingPolicy::kFcfs) return waiting_.begin();
  return std::min_element(waiting_.begin(), waiting_.end(), [](const Request* a, const Request* b) {
    return std::tie(a->params.priority, a->arrival) < std::tie(b->params.priority, b->arrival);
  });
}

void Scheduler::schedule_waiting(SchedulerOutput& out, StepBudget& budget) {
  while (!waiting_.empty() && budget.tokens > 0 &&
         static_cast<int>(running_.size()) < config_.max_num_seqs) {
    auto it = next_waiting();
    Request& request = **it;
    // A sequence preempted while a step sampled for it waits for that token first.
    if (request.num_pending_tokens > 0) break;
    // NOTE: prompt logprobs need every prompt position computed, so such a request takes no
    // prefix-cache hit (the blocks it computes are cached for others all the same).
    const ComputedBlocks hit = request.computes_prompt_logprobs()
                                   ? ComputedBlocks{}
                                   : kv_cache_.get_computed_blocks(request);
    const int num_new = std::min(request.num_tokens() - hit.num_tokens, budget.allows(request));
    // NOTE: no skipping ahead: a later, smaller request must not starve the head.
    if (num_new <= 0 || !kv_cache_.allocate_slots(request, num_new, hit)) break;
    waiting_.erase(it);
    budget.count(request, num_new, 1);
    admit(request, hit, num_new, out);
  }
}

void Scheduler::admit(Request& request, const ComputedBlocks& hit, int num_new,
                      SchedulerOutput& out) {
  request.num_computed_tokens = hit.num_tokens;
  if (request.num_cached_tokens < 0) {
    request.num_cached_tokens = hit.num_tokens;
    num_prefix_cache_queries_ += request.num_prompt_tokens;
    num_prefix_cache_hits_ += hit.num_tokens;
  }
  request.status = RequestStatus::kRunning;
  running_.push_back(&request);

  NewSequenceData data;
  data.seq_id = request.seq_id;
  data.token_ids = request.token_ids;
  data.num_prompt_tokens = request.num_prompt_tokens;
  data.params = request.params;
  data.sampling_seed = request.sampling_seed;
  data.block_ids = kv_cache_.block_ids(request.seq_id);
  data.prompt_logprobs = request.computes_prompt_logprobs();
  out.new_sequences.push_back(std::move(data));

  ScheduledSequence scheduled;
  scheduled.seq_id = request.seq_id;
  scheduled.num_computed_tokens = hit.num_tokens;
  scheduled.num_scheduled_tokens = num_new;
  scheduled.sample = hit.num_tokens + num_new == request.num_tokens();
  out.scheduled.push_back(std::move(scheduled));
}

std::vector<SequenceUpdate> Scheduler::update_from_output(const SchedulerOutput& scheduled,
                                                          const ModelRunnerOutput& output) {
  std::unordered_map<SeqId, const SampledToken*> sampled_by_seq;
  for (const SampledToken& sampled : output.sampled) sampled_by_seq[sampled.seq_id] = &sampled;

  std::vector<SequenceUpdate> updates;
  for (const ScheduledSequence& step : scheduled.scheduled) {
    auto it = requests_.find(step.seq_id);
    // Aborted or finished since schedule(): its blocks are gone and its token is dropped.
    if (it == requests_.end() || it->second->is_finished()) continue;
    Request& request = *it->second;
    // NOTE: a sequence preempted since schedule() lost its blocks, so none is cached; it still
    // takes the token sampled for it, which was computed from its whole context.
    const bool running = request.status == RequestStatus::kRunning;
    if (running) {
      kv_cache_.cache_full_blocks(request, step.num_computed_tokens + step.num_scheduled_tokens);
    }
    if (!step.sample) continue;

    auto sampled = sampled_by_seq.find(step.seq_id);
    if (sampled == sampled_by_seq.end()) {
      throw std::logic_error("update_from_output: sequence " + std::to_string(step.seq_id) +
                             " was scheduled with sample=true but the runner sampled no token");
    }
    if (request.num_pending_tokens == 0) {
      throw std::logic_error("update_from_output: sequence " + std::to_string(step.seq_id) +
                             " has no pending token; apply each step's output exactly once");
    }
    --request.num_pending_tokens;
    SequenceUpdate update;
    update.seq_id = step.seq_id;
    if (append_token(request, *sampled->second, update)) finish(request, *update.finish_reason);
    updates.push_back(std::move(update));
  }
  return updates;
}

bool Scheduler::append_token(Request& request, const SampledToken& sampled,
                             SequenceUpdate& update) {
  const int token = sampled.token_id;
  request.token_ids.push_back(token);
  update.new_token_ids.push_back(token);
  if (sampled.logprobs) update.new_logprobs.push_back(*sampled.logprobs);

  const SamplingParams& params = request.params;
  if (request.num_output_tokens() >= params.min_tokens) {
    if (!params.ignore_eos && contains(config_.eos_token_ids, token)) {
      update.finish_reason = FinishReason::kStop;
    } else if (contains(params.stop_token_ids, token)) {
      update.finish_reason = FinishReason::kStop;
      update.stop_token_id = token;
    }
  }
  if (!update.finish_reason) {
    if (request.num_output_tokens() >= params.max_tokens ||
        request.num_tokens() >= config_.max_model_len) {
      update.finish_reason = FinishReason::kLength;
    }
  }
  request.stop_token_id = update.stop_token_id;
  return update.finish_reason.has_value();
}

void Scheduler::finish(Request& request, FinishReason reason) {
  kv_cache_.free(request);
  std::erase(running_, &request);
  std::erase(waiting_, &request);
  request.status = RequestStatus::kFinished;
  request.finish_reason = reason;
  finished_since_schedule_.push_back(request.seq_id);
}

bool Scheduler::has_unfinished() const { return !running_.empty() || !waiting_.empty(); }

const Request* Scheduler::find(SeqId seq_id) const {
  auto it = requests_.find(seq_id);
  return it == requests_.end() ? nullptr : it->second.get();
}

SchedulerStats Scheduler::stats() const {
  SchedulerStats stats;
  stats.num_running = static_cast<int>(running_.size());
  stats.num_waiting = static_cast<int>(waiting_.size());
  stats.num_preemptions = num_preemptions_;
  stats.num_prefix_cache_queries = num_prefix_cache_queries_;
  stats.num_prefix_cache_hits = num_prefix_cache_hits_;
  return stats;
}

}  // namespace engine
