#pragma once
// EngineLoop: an Engine whose step loop runs on a thread of its own, for servers.
//
// The loop thread steps while there are unfinished requests and sleeps on a condition variable
// otherwise. Any thread may add and abort requests (they land in the Engine's inbox; the loop
// is never blocked by a caller) and one consumer collects the outputs with wait_outputs(). The
// loop never waits for the consumer: outputs queue up between two wait_outputs() calls, merged
// per request, so a slow consumer costs memory for one output per live request, not per step.
//
// If a step throws, the loop records the error and stops: wait_outputs() hands out what was
// queued before and then throws EngineDeadError, and so does every later add_request(). A C++
// consumer therefore learns that its unfinished requests will never finish; nothing hangs.

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "engine/engine.h"

namespace engine {

// The loop has died (a step threw; what() says why) or has been shut down.
class EngineDeadError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class EngineLoop {
 public:
  // Loads the model (throws what Engine's constructor throws), then starts the loop thread.
  explicit EngineLoop(const EngineConfig& config);
  ~EngineLoop();  // shutdown()
  EngineLoop(const EngineLoop&) = delete;
  EngineLoop& operator=(const EngineLoop&) = delete;

  // Queues a request; the loop wakes and runs it. Throws std::invalid_argument as
  // Engine::add_request does (bad input, an id still in use), EngineDeadError once the loop has
  // died or shutdown() has been called.
  void add_request(const std::string& request_id, const std::vector<int>& prompt_token_ids,
                   const SamplingParams& params);
  void validate_request(const std::vector<int>& prompt_token_ids,
                        const SamplingParams& params) const;
  // As Engine::abort: the request (or one sample) finishes with "abort" within two steps and
  // its blocks are freed. Unknown and finished ids, and calls on a stopped loop, are ignored.
  void abort(const std::string& request_id, std::optional<int> sample_index = std::nullopt);

  // Takes every output queued since the last call: per request, the tokens new since then (the
  // deltas of several steps merged in order) and its finish. Blocks until there is at least one,
  // the loop stops, or `timeout` passes (nullopt: no limit); returns an empty vector for the
  // last two. Once the loop has died and its queue is empty, throws EngineDeadError.
  std::vector<RequestOutput> wait_outputs(
      std::optional<std::chrono::duration<double>> timeout = std::nullopt);

  // False once the loop thread has stopped (died, or shut down with its last outputs queued).
  bool is_alive() const;
  // Why the loop died; nullopt while it runs or after a clean shutdown.
  std::optional<std::string> error() const;
  // Stops taking requests, aborts the unfinished ones, steps until their "abort" outputs are
  // queued, and joins the loop thread. Idempotent; safe from any thread but the loop's own.
  void shutdown();

  const ModelInfo& model_info() const { return engine_->model_info(); }
  // The engine's stats as of the last completed step (a snapshot the loop takes after each
  // step, so this never waits for a step to finish).
  EngineStats stats() const;
  int num_unfinished_requests() const;  // added and not yet reported finished

  // Fault injection for tests and failure drills: the next step throws
  // std::runtime_error(message) inside the loop, as a failing forward pass would.
  void fail_next_step(const std::string& message);

 private:
  void run();
  void queue_outputs(std::vector<RequestOutput>& outputs, const EngineStats& stats);
  void stop(std::optional<std::string> error);

  std::unique_ptr<Engine> engine_;

  mutable std::mutex mutex_;                   // guards everything below but the thread itself
  std::condition_variable wake_;               // the loop waits here for work or shutdown
  std::condition_variable outputs_ready_;      // the consumer waits here for outputs or a stop
  std::unordered_map<std::string, int> live_;  // added, not yet reported finished (by id)
  std::vector<RequestOutput> pending_;         // queued for the consumer, in first-output order
  std::unordered_map<std::string, size_t> pending_index_;  // request id -> index in pending_
  EngineStats stats_;
  std::optional<std::string> fail_next_step_;
  bool shutdown_requested_ = false;
  bool stopped_ = false;
  std::optional<std::string> error_;

  std::mutex join_mutex_;  // shutdown() from two threads must not join twice
  std::thread thread_;
};

}  // namespace engine
