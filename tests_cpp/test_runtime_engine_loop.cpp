// EngineLoop on a tiny dummy-weight Llama: adds and aborts from several threads while the loop
// steps on its own, outputs complete and in order (against Engine::generate), merged outputs
// for a consumer that is away, shutdown and a failing step with requests in flight, and an
// idle loop that sleeps instead of spinning.

#include "engine/engine_loop.h"

#include <gtest/gtest.h>

#include "engine_test_util.h"

#include <time.h>

#include <atomic>
#include <chrono>
#include <map>
#include <random>
#include <set>
#include <thread>

namespace engine {
namespace {

using namespace std::chrono_literals;

using test::greedy;
using test::prompt_of;

EngineConfig tiny_config() {
  EngineConfig config;
  config.model = test::write_tiny_llama_config("engine-loop-test");
  config.load_format = "dummy";
  config.device = "cpu";
  config.max_model_len = 128;
  config.block_size = 16;
  config.num_kv_blocks = 64;
  config.num_threads = 1;  // the loop, the test's threads and ctest's neighbours share 2 cores
  return config;
}

struct Collected {
  std::vector<int> token_ids;
  std::optional<FinishReason> finish_reason;
  int num_finished_outputs = 0;  // outputs with finished set: must be exactly one
  bool token_after_finish = false;
};

// Consumes outputs until `num_requests` requests have finished (or a minute has passed).
std::map<std::string, Collected> collect(EngineLoop& loop, size_t num_requests) {
  std::map<std::string, Collected> collected;
  size_t num_finished = 0;
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  while (num_finished < num_requests && std::chrono::steady_clock::now() < deadline) {
    for (RequestOutput& output : loop.wait_outputs(1s)) {
      Collected& request = collected[output.request_id];
      for (const CompletionOutput& part : output.outputs) {
        if (request.finish_reason && !part.token_ids.empty()) request.token_after_finish = true;
        request.token_ids.insert(request.token_ids.end(), part.token_ids.begin(),
                                 part.token_ids.end());
        if (part.finish_reason) request.finish_reason = part.finish_reason;
      }
      if (output.finished) {
        ++request.num_finished_outputs;
        ++num_finished;
      }
    }
  }
  return collected;
}

// Polls (the test's own waiting, not the product's) until `done` holds, up to a minute.
template <typename Condition>
bool eventually(Condition done) {
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

double process_cpu_seconds() {
  timespec now{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
  return static_cast<double>(now.tv_sec) + 1e-9 * static_cast<double>(now.tv_nsec);
}

TEST(EngineLoop, AddsAndAbortsFromSeveralThreadsLoseNothingAndKeepTokenOrder) {
  constexpr int kNumThreads = 4;
  constexpr int kPerThread = 15;
  constexpr int kMaxTokens = 64;  // long enough that most aborts land mid-generation
  auto prompt_for = [](int i) { return prompt_of(1 + (i * 7) % 40, i); };
  // The reference: the same prompts through the synchronous Engine, all in one batch.
  std::vector<std::vector<int>> prompts;
  for (int i = 0; i < kNumThreads * kPerThread; ++i) prompts.push_back(prompt_for(i));
  std::vector<RequestOutput> expected;
  {
    Engine reference(tiny_config());
    expected = reference.generate(prompts, {greedy(kMaxTokens)});
  }

  EngineLoop loop(tiny_config());
  std::map<std::string, Collected> collected;
  std::thread consumer([&] { collected = collect(loop, prompts.size()); });
  std::vector<std::thread> producers;
  for (int t = 0; t < kNumThreads; ++t) {
    producers.emplace_back([&, t] {
      std::mt19937 rng(t);
      for (int k = 0; k < kPerThread; ++k) {
        const int i = t * kPerThread + k;
        loop.add_request("r" + std::to_string(i), prompt_for(i), greedy(kMaxTokens));
        // Every third thread-local request aborts one added earlier by this thread.
        if (k % 3 == 2) loop.abort("r" + std::to_string(i - 1));
        std::this_thread::sleep_for(std::chrono::microseconds(rng() % 2000));
      }
    });
  }
  for (std::thread& producer : producers) producer.join();
  consumer.join();

  ASSERT_EQ(collected.size(), prompts.size());
  int num_aborted = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const std::string id = "r" + std::to_string(i);
    const Collected& request = collected[id];
    const std::vector<int>& want = expected[i].outputs[0].token_ids;
    EXPECT_EQ(request.num_finished_outputs, 1) << id;
    EXPECT_FALSE(request.token_after_finish) << id;
    ASSERT_TRUE(request.finish_reason.has_value()) << id;
    if (*request.finish_reason == FinishReason::kLength) {
      EXPECT_EQ(request.token_ids, want) << id;
    } else {
      EXPECT_EQ(*request.finish_reason, FinishReason::kAbort) << id;
      ++num_aborted;
      ASSERT_LE(request.token_ids.size(), want.size()) << id;
      EXPECT_TRUE(std::equal(request.token_ids.begin(), request.token_ids.end(), want.begin()))
          << id << ": an aborted request's tokens are a prefix of the full run's";
    }
  }
  // Each abort follows its request's add by a few ms, well before 64 tokens: most land while
  // the request runs (all 20 did in every run here), and 64 blocks make 60 requests preempt.
  EXPECT_GT(num_aborted, 0);
  EXPECT_GT(loop.stats().num_preemptions, 0);
  EXPECT_EQ(loop.num_unfinished_requests(), 0);
  const EngineStats stats = loop.stats();
  EXPECT_EQ(stats.num_running + stats.num_waiting, 0);
  EXPECT_EQ(stats.kv_cache_usage, 0.0);
  EXPECT_TRUE(loop.is_alive());
}

TEST(EngineLoop, MergesTheStepsOfAConsumerThatIsAwayAndNeverMergesAcrossReusedIds) {
  EngineLoop loop(tiny_config());
  loop.add_request("a", prompt_of(10, 3), greedy(20));
  ASSERT_TRUE(eventually([&] { return loop.num_unfinished_requests() == 0; }));
  // The id is free in the engine again: the second "a" is a new request.
  loop.add_request("a", prompt_of(5, 9), greedy(7));
  ASSERT_TRUE(eventually([&] { return loop.num_unfinished_requests() == 0; }));

  std::vector<RequestOutput> outputs = loop.wait_outputs(0s);
  ASSERT_EQ(outputs.size(), 2u);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(outputs[i].request_id, "a");
    EXPECT_TRUE(outputs[i].finished);
    ASSERT_EQ(outputs[i].outputs.size(), 1u);
    EXPECT_EQ(outputs[i].outputs[0].finish_reason, FinishReason::kLength);
  }
  EXPECT_EQ(outputs[0].outputs[0].token_ids.size(), 20u);
  EXPECT_EQ(outputs[1].outputs[0].token_ids.size(), 7u);
  Engine reference(tiny_config());
  EXPECT_EQ(outputs[0].outputs[0].token_ids,
            reference.generate({prompt_of(10, 3)}, {greedy(20)})[0].outputs[0].token_ids);
  EXPECT_TRUE(loop.wait_outputs(10ms).empty());  // nothing left: the timeout passes
}

TEST(EngineLoop, CountsPromptAndGenerationTokensAndSamplesOfOneRequest) {
  EngineLoop loop(tiny_config());
  SamplingParams three = greedy(6);
  three.n = 3;
  three.temperature = 1.0f;
  three.seed = 5;
  loop.add_request("x", prompt_of(20, 1), three);
  loop.add_request("y", prompt_of(5, 40), greedy(4));
  const auto collected = collect(loop, 2);
  ASSERT_EQ(collected.size(), 2u);
  EXPECT_EQ(collected.at("x").token_ids.size(), 18u);  // 3 samples of 6
  const EngineStats stats = loop.stats();
  EXPECT_EQ(stats.num_prompt_tokens, 25);  // each prompt once, however many samples
  EXPECT_EQ(stats.num_generation_tokens, 22);
  EXPECT_EQ(stats.kv_cache_usage, 0.0);
}

TEST(EngineLoop, BadRequestsThrowAndDoNotDisturbTheOthers) {
  EngineLoop loop(tiny_config());
  // 120 tokens: "good" surely runs through the next few microseconds' checks.
  loop.add_request("good", prompt_of(8, 1), greedy(120));
  EXPECT_THROW(loop.add_request("good", prompt_of(8, 1), greedy(1)), std::invalid_argument);
  EXPECT_THROW(loop.add_request("bad", prompt_of(129, 1), greedy(1)), std::invalid_argument);
  EXPECT_THROW(loop.add_request("bad", {1, test::kTinyVocab}, greedy(1)), std::invalid_argument);
  const auto collected = collect(loop, 1);
  ASSERT_EQ(collected.count("good"), 1u);
  EXPECT_EQ(collected.at("good").token_ids.size(), 120u);
  EXPECT_EQ(loop.num_unfinished_requests(), 0);
}

TEST(EngineLoop, ShutdownWithRequestsInFlightAbortsThemAndRefusesNewOnes) {
  EngineLoop loop(tiny_config());
  for (int i = 0; i < 8; ++i) loop.add_request(std::to_string(i), prompt_of(8, i), greedy(120));
  // Let them start: some tokens are out before the shutdown.
  std::map<std::string, Collected> collected;
  while (collected.empty()) {
    for (RequestOutput& output : loop.wait_outputs(1s)) {
      for (const CompletionOutput& part : output.outputs) {
        auto& ids = collected[output.request_id].token_ids;
        ids.insert(ids.end(), part.token_ids.begin(), part.token_ids.end());
      }
    }
  }
  loop.shutdown();
  EXPECT_FALSE(loop.is_alive());
  EXPECT_EQ(loop.error(), std::nullopt);
  std::set<std::string> aborted;
  for (RequestOutput& output : loop.wait_outputs(0s)) {
    EXPECT_TRUE(output.finished) << output.request_id;
    for (const CompletionOutput& part : output.outputs) {
      EXPECT_EQ(part.finish_reason, FinishReason::kAbort) << output.request_id;
    }
    aborted.insert(output.request_id);
  }
  EXPECT_EQ(aborted.size(), 8u);                         // every request ended, with "abort"
  EXPECT_TRUE(loop.wait_outputs(std::nullopt).empty());  // stopped: returns at once
  EXPECT_EQ(loop.num_unfinished_requests(), 0);
  EXPECT_EQ(loop.stats().kv_cache_usage, 0.0);
  EXPECT_THROW(loop.add_request("late", prompt_of(4, 1), greedy(1)), EngineDeadError);
  loop.abort("0");  // ignored
  loop.shutdown();  // idempotent
}

TEST(EngineLoop, DestructorWithRequestsInFlightReturns) {
  auto loop = std::make_unique<EngineLoop>(tiny_config());
  for (int i = 0; i < 4; ++i) loop->add_request(std::to_string(i), prompt_of(20, i), greedy(100));
  ASSERT_TRUE(eventually([&] { return loop->stats().num_steps > 2; }));
  loop.reset();  // a hang here fails the test by ctest's timeout
}

TEST(EngineLoop, AFailingStepKillsTheLoopAndEveryRequestLearnsWhy) {
  EngineLoop loop(tiny_config());
  for (int i = 0; i < 4; ++i) loop.add_request(std::to_string(i), prompt_of(8, i), greedy(120));
  loop.fail_next_step("the forward pass failed (injected)");
  std::string message;
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  try {
    while (std::chrono::steady_clock::now() < deadline) loop.wait_outputs(1s);
  } catch (const EngineDeadError& error) {
    message = error.what();
  }
  EXPECT_EQ(message, "the engine loop has died: the forward pass failed (injected)");
  EXPECT_FALSE(loop.is_alive());
  EXPECT_EQ(loop.error(), "the forward pass failed (injected)");
  EXPECT_EQ(loop.num_unfinished_requests(), 4);  // they will never finish: the consumer knows
  EXPECT_THROW(loop.wait_outputs(std::nullopt), EngineDeadError);  // at once, every time
  try {
    loop.add_request("new", prompt_of(4, 1), greedy(1));
    ADD_FAILURE() << "a dead loop took a request";
  } catch (const EngineDeadError& error) {
    EXPECT_EQ(std::string(error.what()),
              "the engine loop has died: the forward pass failed (injected)");
  }
  loop.shutdown();
}

TEST(EngineLoop, AnIdleLoopSleepsAndWakesForTheNextRequest) {
  EngineLoop loop(tiny_config());
  loop.add_request("warm", prompt_of(10, 1), greedy(5));
  ASSERT_EQ(collect(loop, 1).size(), 1u);
  const int64_t num_steps = loop.stats().num_steps;
  std::this_thread::sleep_for(50ms);  // OpenMP workers stop spinning after their short spin
  const double cpu_before = process_cpu_seconds();
  const auto wall_before = std::chrono::steady_clock::now();
  EXPECT_TRUE(loop.wait_outputs(300ms).empty());
  const double wall =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_before).count();
  const double cpu = process_cpu_seconds() - cpu_before;
  // A loop that polled would burn a core for the whole wait.
  EXPECT_LT(cpu, 0.2 * wall) << "cpu " << cpu << " s in " << wall << " s of idle wall time";
  EXPECT_EQ(loop.stats().num_steps, num_steps);

  loop.add_request("later", prompt_of(6, 2), greedy(3));
  const auto collected = collect(loop, 1);
  ASSERT_EQ(collected.count("later"), 1u);
  EXPECT_EQ(collected.at("later").token_ids.size(), 3u);
}

}  // namespace
}  // namespace engine
