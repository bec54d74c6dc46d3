#include "engine/engine_loop.h"

#include <algorithm>
#include <utility>

#ifdef __linux__
#include <pthread.h>
#endif

namespace engine {
namespace {

// Far beyond any useful wait, and far from overflowing the clock's nanosecond count.
constexpr double kMaxWaitSeconds = 1e8;

// Appends one step's delta of a request to what the consumer has not taken yet.
void merge_output(RequestOutput& queued, RequestOutput& delta) {
  for (CompletionOutput& part : delta.outputs) {
    auto same = std::find_if(queued.outputs.begin(), queued.outputs.end(),
                             [&](const CompletionOutput& q) { return q.index == part.index; });
    if (same == queued.outputs.end()) {
      queued.outputs.push_back(std::move(part));
      continue;
    }
    same->token_ids.insert(same->token_ids.end(), part.token_ids.begin(), part.token_ids.end());
    same->logprobs.insert(same->logprobs.end(), std::make_move_iterator(part.logprobs.begin()),
                          std::make_move_iterator(part.logprobs.end()));
    if (part.finish_reason) {
      same->finish_reason = part.finish_reason;
      same->stop_token_id = part.stop_token_id;
    }
  }
  if (!delta.prompt_logprobs.empty()) queued.prompt_logprobs = std::move(delta.prompt_logprobs);
  queued.finished = delta.finished;
  queued.num_cached_tokens = delta.num_cached_tokens;
}

}  // namespace

EngineLoop::EngineLoop(const EngineConfig& config)
    : engine_(std::make_unique<Engine>(config)), stats_(engine_->stats()) {
  thread_ = std::thread([this] { run(); });
}

EngineLoop::~EngineLoop() { shutdown(); }

void EngineLoop::add_request(const std::string& request_id,
                             const std::vector<int>& prompt_token_ids,
                             const SamplingParams& params) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (error_) throw EngineDeadError("the engine loop has died: " + *error_);
    if (shutdown_requested_) throw EngineDeadError("the engine loop has been shut down");
    // NOTE: the id is counted live under the lock that the loop takes to count finished ones,
    // so the loop cannot see the request finish before it is counted. A count, not a flag: the
    // engine frees an id a moment before the loop learns of it, and it may be reused between.
    engine_->add_request(request_id, prompt_token_ids, params);
    ++live_[request_id];
  }
  wake_.notify_one();
}

void EngineLoop::validate_request(const std::vector<int>& prompt_token_ids,
                                  const SamplingParams& params) const {
  engine_->validate_request(prompt_token_ids, params);
}

void EngineLoop::abort(const std::string& request_id, std::optional<int> sample_index) {
  // A live request keeps the loop stepping, so the abort lands without a wake-up.
  engine_->abort(request_id, sample_index);
}

std::vector<RequestOutput> EngineLoop::wait_outputs(
    std::optional<std::chrono::duration<double>> timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  auto ready = [this] { return !pending_.empty() || stopped_; };
  if (!timeout) {
    outputs_ready_.wait(lock, ready);
  } else {
    const double seconds = std::clamp(timeout->count(), 0.0, kMaxWaitSeconds);
    outputs_ready_.wait_for(lock,
                            std::chrono::duration_cast<std::chrono::nanoseconds>(
                                std::chrono::duration<double>(seconds)),
                            ready);
  }
  if (pending_.empty() && error_) throw EngineDeadError("the engine loop has died: " + *error_);
  pending_index_.clear();
  return std::exchange(pending_, {});
}

bool EngineLoop::is_alive() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return !stopped_;
}

std::optional<std::string> EngineLoop::error() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return error_;
}

void EngineLoop::shutdown() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    shutdown_requested_ = true;
  }
  wake_.notify_all();
  std::lock_guard<std::mutex> join_lock(join_mutex_);
  if (thread_.joinable()) thread_.join();
}

EngineStats EngineLoop::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

int EngineLoop::num_unfinished_requests() const {
  std::lock_guard<std::mutex> lock(mutex_);
  int count = 0;
  for (const auto& [request_id, num_live] : live_) count += num_live;
  return count;
}

void EngineLoop::fail_next_step(const std::string& message) {
  std::lock_guard<std::mutex> lock(mutex_);
  fail_next_step_ = message;
}

void EngineLoop::run() {
#ifdef __linux__
  // Named, so top -H, py-spy and /proc show which thread the core's time goes to.
  pthread_setname_np(pthread_self(), "ember-core");
#endif
  std::optional<std::string> error;
  try {
    bool aborted_all = false;
    std::vector<std::string> to_abort;
    while (true) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [this] { return shutdown_requested_ || !live_.empty(); });
        if (live_.empty()) break;  // shut down, and nothing left to finish
        if (shutdown_requested_ && !aborted_all) {
          for (const auto& [request_id, num_live] : live_) to_abort.push_back(request_id);
          aborted_all = true;
        }
        if (fail_next_step_) {
          const std::string message = std::exchange(fail_next_step_, std::nullopt).value();
          throw std::runtime_error(message);
        }
      }
      for (const std::string& request_id : to_abort) engine_->abort(request_id);
      to_abort.clear();
      std::vector<RequestOutput> outputs = engine_->step();
      queue_outputs(outputs, engine_->stats());
    }
  } catch (const std::exception& failure) {
    error = failure.what();
  } catch (...) {
    error = "a step threw something that is not a std::exception";
  }
  stop(std::move(error));
}

void EngineLoop::queue_outputs(std::vector<RequestOutput>& outputs, const EngineStats& stats) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    // NOTE: the stats and the outputs of a step are published together, so a consumer that has
    // seen a request finish also sees the stats of the step that freed its blocks.
    stats_ = stats;
    for (RequestOutput& output : outputs) {
      if (output.finished) {
        auto live = live_.find(output.request_id);
        if (live != live_.end() && --live->second == 0) live_.erase(live);
      }
      auto queued = pending_index_.find(output.request_id);
      // A finished entry is never merged into: its id may already belong to a new request.
      if (queued != pending_index_.end() && !pending_[queued->second].finished) {
        merge_output(pending_[queued->second], output);
        continue;
      }
      pending_index_[output.request_id] = pending_.size();
      pending_.push_back(std::move(output));
    }
  }
  if (!outputs.empty()) outputs_ready_.notify_all();
}

void EngineLoop::stop(std::optional<std::string> error) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    error_ = std::move(error);
    stopped_ = true;
  }
  outputs_ready_.notify_all();
}

}  // namespace engine
