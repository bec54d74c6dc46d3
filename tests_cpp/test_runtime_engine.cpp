// The public Engine on a tiny dummy-weight Llama: request validation, n > 1 block sharing,
// and adding/aborting from other threads while one thread steps.

#include "engine/engine.h"

#include <gtest/gtest.h>

#include "engine_test_util.h"

#include <atomic>
#include <chrono>
#include <map>
#include <optional>
#include <random>
#include <thread>

namespace engine {
namespace {

using test::greedy;
using test::prompt_of;
constexpr int kBlockSize = 16;

EngineConfig tiny_config(bool enable_prefix_caching = true) {
  EngineConfig config;
  config.model = test::write_tiny_llama_config("engine-test");
  config.load_format = "dummy";
  config.max_model_len = 128;
  config.block_size = kBlockSize;
  config.num_kv_blocks = 64;
  config.enable_prefix_caching = enable_prefix_caching;
  return config;
}

TEST(Engine, RejectsBadRequestsWithTheNumbers) {
  Engine engine(tiny_config());
  auto message_of = [&](const std::vector<int>& prompt, const SamplingParams& params) {
    try {
      engine.add_request("bad", prompt, params);
    } catch (const std::invalid_argument& error) {
      return std::string(error.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message_of(prompt_of(129), greedy(1)),
            "prompt has 129 tokens but max_model_len is 128");
  EXPECT_EQ(message_of({}, greedy(1)), "prompt is empty: give at least one token");
  EXPECT_EQ(message_of({1, 128}, greedy(1)),
            "prompt token id 128 at position 1 is outside the vocabulary [0, 128)");
  SamplingParams bad = greedy(1);
  bad.top_p = 1.5f;
  EXPECT_EQ(message_of({1}, bad), "top_p must be in (0, 1], got 1.5");
  engine.add_request("dup", {1, 2}, greedy(1));
  EXPECT_EQ(std::string("request id 'dup' is already in use"), [&] {
    try {
      engine.add_request("dup", {1, 2}, greedy(1));
    } catch (const std::invalid_argument& error) {
      return std::string(error.what());
    }
    return std::string("no error");
  }());
  EXPECT_TRUE(engine.has_unfinished_requests());
}

TEST(Engine, GenerationStopsAtMaxModelLenWithLength) {
  Engine engine(tiny_config());
  const auto outputs = engine.generate({prompt_of(120)}, {greedy(50)});
  ASSERT_EQ(outputs.size(), 1u);
  EXPECT_EQ(outputs[0].outputs[0].token_ids.size(), 8u);  // 120 + 8 = max_model_len
  EXPECT_EQ(outputs[0].outputs[0].finish_reason, FinishReason::kLength);
}

TEST(Engine, SamplesOfOneRequestShareThePromptBlocksWithPrefixCachingOff) {
  Engine engine(tiny_config(/*enable_prefix_caching=*/false));
  SamplingParams params = greedy(4);
  params.n = 4;
  params.temperature = 1.0f;
  params.seed = 7;
  const auto outputs = engine.generate({prompt_of(64)}, {params});
  ASSERT_EQ(outputs[0].outputs.size(), 4u);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(outputs[0].outputs[i].index, i);
    EXPECT_EQ(outputs[0].outputs[i].token_ids.size(), 4u);
  }
  // Samples 1..3 each find the 64-token prompt cached; one block is recomputed so that the
  // step has logits: 48 tokens hit each.
  EXPECT_EQ(engine.stats().num_prefix_cache_hits, 3 * 48);
  // A second request with the same prompt shares nothing: caching is off across requests.
  engine.generate({prompt_of(64)}, {greedy(2)});
  EXPECT_EQ(engine.stats().num_prefix_cache_hits, 3 * 48);
  EXPECT_EQ(engine.stats().kv_cache_usage, 0.0);
}

TEST(Engine, OtherThreadsAddAndAbortWhileOneThreadSteps) {
  Engine engine(tiny_config());
  constexpr int kNumRequests = 40;
  std::atomic<bool> adding_done{false};
  std::map<std::string, std::vector<int>> tokens;
  std::map<std::string, FinishReason> reasons;

  std::thread producer([&] {
    std::mt19937 rng(1);
    for (int i = 0; i < kNumRequests; ++i) {
      engine.add_request(std::to_string(i), prompt_of(1 + rng() % 40, i), greedy(20));
      if (i % 3 == 0) engine.abort(std::to_string(i / 2));
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % 500));
    }
    adding_done = true;
  });
  // A failing step must not leave the producer joinable (that would abort the whole binary).
  std::string step_error;
  try {
    while (!adding_done || engine.has_unfinished_requests()) {
      for (const RequestOutput& output : engine.step()) {
        auto& ids = tokens[output.request_id];
        for (const CompletionOutput& part : output.outputs) {
          ids.insert(ids.end(), part.token_ids.begin(), part.token_ids.end());
          if (part.finish_reason) reasons[output.request_id] = *part.finish_reason;
        }
        if (output.finished) EXPECT_TRUE(reasons.count(output.request_id));
      }
    }
  } catch (const std::exception& error) {
    step_error = error.what();
  }
  producer.join();
  ASSERT_EQ(step_error, "");

  // Every request ended exactly once: 20 tokens and "length", or aborted (fewer tokens).
  ASSERT_EQ(reasons.size(), static_cast<size_t>(kNumRequests));
  for (const auto& [id, reason] : reasons) {
    if (reason == FinishReason::kLength) {
      EXPECT_EQ(tokens[id].size(), 20u) << id;
    } else {
      EXPECT_EQ(reason, FinishReason::kAbort) << id;
      EXPECT_LT(tokens[id].size(), 20u) << id;
    }
  }
  EXPECT_FALSE(engine.has_unfinished_requests());
  EXPECT_EQ(engine.stats().kv_cache_usage, 0.0);
  EXPECT_EQ(engine.stats().num_running + engine.stats().num_waiting, 0);
}

TEST(Engine, StatsSplitStepTimeIntoHostAndDeviceWait) {
  Engine engine(tiny_config());
  EXPECT_EQ(engine.stats().num_steps, 0);
  engine.generate({prompt_of(20), prompt_of(5)}, {greedy(6)});
  const EngineStats stats = engine.stats();
  EXPECT_GE(stats.num_steps, 6);  // one prefill step, then a decode step per token
  EXPECT_GT(stats.step_seconds, 0.0);
  EXPECT_GE(stats.device_wait_seconds, 0.0);
  EXPECT_LE(stats.device_wait_seconds, stats.step_seconds);
}

TEST(Engine, RejectsGpuMemoryUtilizationOutsideZeroToOne) {
  for (double bad : {0.0, -0.5, 1.5}) {
    EngineConfig config = tiny_config();
    config.gpu_memory_utilization = bad;
    try {
      Engine engine(config);
      ADD_FAILURE() << "no error for " << bad;
    } catch (const std::invalid_argument& error) {
      EXPECT_NE(std::string(error.what()).find("gpu_memory_utilization must be in (0, 1]"),
                std::string::npos)
          << error.what();
    }
  }
}

// kv_cache_dtype "fp8" stores one byte per value: from the same memory budget the CPU's fp32
// cache (4 bytes) gets four times the blocks. Unknown names are refused with the allowed ones.
TEST(Engine, Fp8KvCacheHoldsFourTimesTheFp32Blocks) {
  EngineConfig config = tiny_config();
  config.num_kv_blocks.reset();
  config.max_num_seqs = 1024;  // so the cap (every sequence at full length) does not bind
  config.kv_cache_memory_bytes = int64_t{1} << 20;
  Engine fp32(config);
  config.kv_cache_dtype = "fp8";
  Engine fp8(config);
  EXPECT_EQ(fp32.model_info().kv_cache_dtype, "float32");
  EXPECT_EQ(fp8.model_info().kv_cache_dtype, "float8_e4m3fn");
  EXPECT_EQ(fp8.model_info().num_kv_blocks, 4 * fp32.model_info().num_kv_blocks);
  const auto outputs = fp8.generate({prompt_of(40), prompt_of(3)}, {greedy(10)});
  ASSERT_EQ(outputs.size(), 2u);
  for (const RequestOutput& output : outputs) EXPECT_EQ(output.outputs[0].token_ids.size(), 10u);
  config.kv_cache_dtype = "fp8_e5m2";
  try {
    Engine engine(config);
    ADD_FAILURE() << "no error for fp8_e5m2";
  } catch (const std::invalid_argument& error) {
    EXPECT_EQ(std::string(error.what()),
              "kv_cache_dtype must be one of auto, fp8, fp8_e4m3, got 'fp8_e5m2'");
  }
}

// The CUDA engine, or nullopt (the test skips) in a build or on a machine without one.
std::optional<Engine> cuda_engine(EngineConfig config) {
  config.device = "cuda";
  try {
    return std::optional<Engine>(std::in_place, config);
  } catch (const std::invalid_argument& error) {
    const std::string what = error.what();
    if (what.find("no CUDA backend") != std::string::npos ||
        what.find("CUDA device(s) visible") != std::string::npos) {
      return std::nullopt;
    }
    throw;
  }
}

std::vector<std::vector<int>> greedy_tokens(Engine& engine, int batch) {
  std::vector<std::vector<int>> prompts;
  for (int i = 0; i < batch; ++i) prompts.push_back(prompt_of(5 + 7 * i, 3 + i));
  std::vector<std::vector<int>> tokens;
  for (const RequestOutput& output : engine.generate(prompts, {greedy(12)})) {
    tokens.push_back(output.outputs[0].token_ids);
  }
  return tokens;
}

TEST(EngineCuda, DecodeGraphsGiveTheTokensOfEagerSteps) {
  EngineConfig config = tiny_config();
  config.num_kv_blocks.reset();  // sized from the GPU's memory after a profiling forward
  config.max_num_seqs = 16;
  std::optional<Engine> graphs = cuda_engine(config);
  if (!graphs) GTEST_SKIP() << "no CUDA backend or device";
  EXPECT_EQ(graphs->model_info().cuda_graph_batch_sizes, (std::vector<int>{1, 2, 4, 8, 16}));
  EXPECT_GT(graphs->model_info().num_kv_blocks, 64);
  config.enforce_eager = true;
  std::optional<Engine> eager = cuda_engine(config);
  EXPECT_TRUE(eager->model_info().cuda_graph_batch_sizes.empty());
  // At a captured size the graph replays the eager step's kernels on the same shapes, so the
  // tokens are equal, not merely close (equal max_tokens and ignore_eos keep every decode step
  // at the full batch size).
  for (int batch : {1, 2, 4, 8}) {
    EXPECT_EQ(greedy_tokens(*graphs, batch), greedy_tokens(*eager, batch)) << "batch " << batch;
  }
}

// With async scheduling (the GPU default) each decode step's input ids come from the step
// before it on the device; the tokens are those of one step at a time, graphs on and off.
TEST(EngineCuda, AsyncSchedulingGivesTheTokensOfOneStepAtATime) {
  EngineConfig config = tiny_config();
  config.num_kv_blocks.reset();
  config.max_num_seqs = 16;
  for (bool eager : {false, true}) {
    SCOPED_TRACE(eager ? "eager" : "graphs");
    config.enforce_eager = eager;
    config.async_scheduling = true;
    std::optional<Engine> ahead = cuda_engine(config);
    if (!ahead) GTEST_SKIP() << "no CUDA backend or device";
    config.async_scheduling = false;
    std::optional<Engine> one_at_a_time = cuda_engine(config);
    for (int batch : {1, 3, 8}) {
      EXPECT_EQ(greedy_tokens(*ahead, batch), greedy_tokens(*one_at_a_time, batch))
          << "batch " << batch;
    }
    // Equal lengths and ignore_eos give both engines the same steps, so bf16 GEMMs see the
    // same shapes and the seeded draws the same logits.
    SamplingParams seeded = greedy(16);
    seeded.temperature = 0.8f;
    seeded.top_p = 0.9f;
    seeded.seed = 11;
    const std::vector<std::vector<int>> prompts{prompt_of(20), prompt_of(33, 7), prompt_of(9, 40)};
    const auto a = ahead->generate(prompts, {seeded});
    const auto b = one_at_a_time->generate(prompts, {seeded});
    for (size_t r = 0; r < a.size(); ++r) {
      EXPECT_EQ(a[r].outputs[0].token_ids, b[r].outputs[0].token_ids) << "request " << r;
    }
    EXPECT_GT(ahead->stats().num_steps_launched_ahead, 0);
    EXPECT_EQ(one_at_a_time->stats().num_steps_launched_ahead, 0);
  }
}

// A request's tokens and prompt logprobs, gathered from step() deltas.
struct StreamedResult {
  std::vector<int> tokens;
  std::vector<TokenLogprobs> prompt_logprobs;
};

// Request "0" is added and stepped once before the others arrive, so their first step is
// scheduled while its step is in flight.
std::vector<StreamedResult> run_staggered(Engine& engine,
                                          const std::vector<std::vector<int>>& prompts,
                                          const std::vector<SamplingParams>& params) {
  std::vector<StreamedResult> results(prompts.size());
  auto take = [&](const std::vector<RequestOutput>& outputs) {
    for (const RequestOutput& output : outputs) {
      StreamedResult& result = results.at(std::stoul(output.request_id));
      for (int id : output.outputs.at(0).token_ids) result.tokens.push_back(id);
      if (!output.prompt_logprobs.empty()) result.prompt_logprobs = output.prompt_logprobs;
    }
  };
  engine.add_request("0", prompts[0], params[0]);
  take(engine.step());
  for (size_t i = 1; i < prompts.size(); ++i) {
    engine.add_request(std::to_string(i), prompts[i], params[i]);
  }
  for (int step = 0; engine.has_unfinished_requests(); ++step) {
    if (step == 500) {
      ADD_FAILURE() << "still unfinished after 500 steps";
      break;
    }
    take(engine.step());
  }
  return results;
}

// Prompt logprobs on the GPU are scored behind each step's sampling, so a scored step runs
// ahead under async scheduling: a scored prompt arrives while another scored step is in
// flight (the prompt-logits buffer grows meanwhile), a long one is chunked. Scores and tokens
// equal those of one step at a time, bit for bit (the same steps run the same kernels).
TEST(EngineCuda, AsyncSchedulingScoresPromptsLikeOneStepAtATime) {
  EngineConfig config = tiny_config();
  config.num_kv_blocks.reset();
  config.max_num_seqs = 16;
  config.max_num_batched_tokens = 64;
  SamplingParams scored = greedy(8);
  scored.prompt_logprobs = 5;
  const std::vector<std::vector<int>> prompts{prompt_of(6, 2), prompt_of(50, 7), prompt_of(100, 11),
                                              prompt_of(12, 5)};
  const std::vector<SamplingParams> params{scored, scored, scored, greedy(8)};
  config.async_scheduling = true;
  std::optional<Engine> ahead = cuda_engine(config);
  if (!ahead) GTEST_SKIP() << "no CUDA backend or device";
  config.async_scheduling = false;
  std::optional<Engine> one_at_a_time = cuda_engine(config);
  const std::vector<StreamedResult> got = run_staggered(*ahead, prompts, params);
  const std::vector<StreamedResult> want = run_staggered(*one_at_a_time, prompts, params);
  for (size_t r = 0; r < prompts.size(); ++r) {
    SCOPED_TRACE("request " + std::to_string(r));
    EXPECT_EQ(got[r].tokens, want[r].tokens);
    const size_t num_scored = params[r].prompt_logprobs ? prompts[r].size() - 1 : 0;
    ASSERT_EQ(got[r].prompt_logprobs.size(), num_scored);
    ASSERT_EQ(want[r].prompt_logprobs.size(), num_scored);
    for (size_t i = 0; i < num_scored; ++i) {
      const TokenLogprobs &g = got[r].prompt_logprobs[i], &w = want[r].prompt_logprobs[i];
      EXPECT_EQ(g.token_id, prompts[r][i + 1]) << "entry " << i;
      EXPECT_EQ(g.token_id, w.token_id) << "entry " << i;
      EXPECT_EQ(g.rank, w.rank) << "entry " << i;
      EXPECT_EQ(g.logprob, w.logprob) << "entry " << i;
      EXPECT_EQ(g.top, w.top) << "entry " << i;
      EXPECT_EQ(g.top.size(), 5u) << "entry " << i;
    }
  }
  EXPECT_GT(ahead->stats().num_steps_launched_ahead, 0);
}

TEST(EngineCuda, TooLowGpuMemoryUtilizationSaysWhatToChange) {
  EngineConfig config = tiny_config();
  config.num_kv_blocks.reset();
  config.gpu_memory_utilization = 1e-4;  // ~14 MiB of an H100/H200: less than in use already
  try {
    std::optional<Engine> engine = cuda_engine(config);
    if (!engine) GTEST_SKIP() << "no CUDA backend or device";
    ADD_FAILURE() << "no error";
  } catch (const std::invalid_argument& error) {
    EXPECT_NE(std::string(error.what()).find("raise gpu_memory_utilization"), std::string::npos)
        << error.what();
  }
}

}  // namespace
}  // namespace engine
