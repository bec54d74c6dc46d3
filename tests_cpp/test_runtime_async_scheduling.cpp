// Async scheduling on a tiny dummy-weight Llama: the engine that schedules and enqueues step
// N + 1 before step N is back gives exactly the outputs of the engine that runs one step at a
// time, whatever ends the sequences (length, stop tokens, EOS after min_tokens), however the
// steps are cut (chunked prefill, prefix hits, preemption, n > 1), with penalties counting the
// pending token, and with prompt logprobs (scored on the device as their steps run) in the
// same batch.

#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine_test_util.h"

namespace engine {
namespace {

using test::greedy;
using test::prompt_of;

EngineConfig tiny_config(bool async_scheduling) {
  EngineConfig config;
  config.model = test::write_tiny_llama_config("async-scheduling-test");
  config.load_format = "dummy";
  config.max_model_len = 128;
  config.block_size = 16;
  config.num_kv_blocks = 64;
  config.async_scheduling = async_scheduling;
  return config;
}

// Everything a request's outputs say, in one comparable value.
struct Result {
  std::vector<std::vector<int>> tokens;
  std::vector<std::optional<FinishReason>> reasons;
  std::vector<std::vector<TokenLogprobs>> logprobs;
  std::vector<TokenLogprobs> prompt_logprobs;
};

std::vector<Result> results_of(const std::vector<RequestOutput>& outputs) {
  std::vector<Result> results;
  for (const RequestOutput& output : outputs) {
    Result result;
    for (const CompletionOutput& c : output.outputs) {
      result.tokens.push_back(c.token_ids);
      result.reasons.push_back(c.finish_reason);
      result.logprobs.push_back(c.logprobs);
    }
    result.prompt_logprobs = output.prompt_logprobs;
    results.push_back(std::move(result));
  }
  return results;
}

void expect_same_logprobs(const std::vector<TokenLogprobs>& a,
                          const std::vector<TokenLogprobs>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].token_id, b[i].token_id) << "entry " << i;
    EXPECT_EQ(a[i].rank, b[i].rank) << "entry " << i;
    EXPECT_FLOAT_EQ(a[i].logprob, b[i].logprob) << "entry " << i;
    EXPECT_EQ(a[i].top, b[i].top) << "entry " << i;
  }
}

// Runs the workload on an engine of each kind; the async one must have launched steps ahead.
void expect_same_outputs(const EngineConfig& base, const std::vector<std::vector<int>>& prompts,
                         const std::vector<SamplingParams>& params,
                         bool expect_launched_ahead = true) {
  EngineConfig sync_config = base, async_config = base;
  sync_config.async_scheduling = false;
  async_config.async_scheduling = true;
  Engine sync_engine(sync_config), async_engine(async_config);
  const std::vector<Result> expected = results_of(sync_engine.generate(prompts, params));
  const std::vector<Result> got = results_of(async_engine.generate(prompts, params));
  ASSERT_EQ(got.size(), expected.size());
  for (size_t r = 0; r < got.size(); ++r) {
    SCOPED_TRACE("request " + std::to_string(r));
    EXPECT_EQ(got[r].tokens, expected[r].tokens);
    EXPECT_EQ(got[r].reasons, expected[r].reasons);
    ASSERT_EQ(got[r].logprobs.size(), expected[r].logprobs.size());
    for (size_t s = 0; s < got[r].logprobs.size(); ++s) {
      expect_same_logprobs(got[r].logprobs[s], expected[r].logprobs[s]);
    }
    expect_same_logprobs(got[r].prompt_logprobs, expected[r].prompt_logprobs);
  }
  EXPECT_EQ(sync_engine.stats().num_steps_launched_ahead, 0);
  if (expect_launched_ahead) EXPECT_GT(async_engine.stats().num_steps_launched_ahead, 0);
  EXPECT_FALSE(async_engine.has_unfinished_requests());
  EXPECT_EQ(async_engine.stats().kv_cache_usage, 0.0);
  EXPECT_EQ(async_engine.stats().num_running, 0);
}

std::vector<std::vector<int>> prompts_of(int count, int first_length = 5) {
  std::vector<std::vector<int>> prompts;
  for (int i = 0; i < count; ++i) prompts.push_back(prompt_of(first_length + 7 * i, 3 + 11 * i));
  return prompts;
}

SamplingParams seeded(int max_tokens, uint64_t seed) {
  SamplingParams params = greedy(max_tokens);
  params.temperature = 0.9f;
  params.top_p = 0.9f;
  params.top_k = 40;
  params.seed = seed;
  return params;
}

TEST(AsyncScheduling, GreedyBatchOfUnequalLengthsMatches) {
  std::vector<SamplingParams> params;
  for (int i = 0; i < 6; ++i) params.push_back(greedy(3 + 5 * i));
  expect_same_outputs(tiny_config(true), prompts_of(6), params);
}

TEST(AsyncScheduling, SeededSamplingWithLogprobsAndNSamplesMatches) {
  std::vector<SamplingParams> params;
  for (int i = 0; i < 4; ++i) {
    SamplingParams p = seeded(12, 100 + i);
    p.logprobs = i;
    p.n = 1 + i % 3;
    params.push_back(p);
  }
  expect_same_outputs(tiny_config(true), prompts_of(4, 20), params);
}

// Stop tokens taken from the run itself, so the sequences do stop early: the step already
// launched for a sequence whose pending token stops it is dropped.
TEST(AsyncScheduling, StopTokensEosAndMinTokensMatch) {
  const std::vector<std::vector<int>> prompts = prompts_of(5);
  Engine probe(tiny_config(false));
  const std::vector<RequestOutput> free_run = probe.generate(prompts, {greedy(24)});
  std::vector<SamplingParams> params;
  for (int i = 0; i < 5; ++i) {
    SamplingParams p = greedy(24);
    const std::vector<int>& tokens = free_run[i].outputs[0].token_ids;
    p.stop_token_ids = {tokens[static_cast<size_t>(2 + 3 * i) % tokens.size()]};
    if (i % 2 == 1) {  // that token as EOS instead, after min_tokens
      p.ignore_eos = false;
      p.min_tokens = 4;
    }
    params.push_back(p);
  }
  EngineConfig config = tiny_config(true);
  expect_same_outputs(config, prompts, params);
}

TEST(AsyncScheduling, ChunkedPrefillAndPrefixHitsMatch) {
  EngineConfig config = tiny_config(true);
  config.max_num_batched_tokens = 24;  // prompts of up to 60 tokens take several steps
  std::vector<std::vector<int>> prompts = prompts_of(4, 30);
  prompts.push_back(prompts[1]);  // the same prompt again: a prefix hit
  std::vector<SamplingParams> params(5, greedy(10));
  params[4] = seeded(10, 5);
  expect_same_outputs(config, prompts, params);
}

TEST(AsyncScheduling, PreemptionUnderBlockPressureMatches) {
  EngineConfig config = tiny_config(true);
  config.num_kv_blocks = 12;  // 11 usable blocks of 16 for 8 sequences of up to 70 tokens
  std::vector<SamplingParams> params;
  for (int i = 0; i < 8; ++i) params.push_back(i % 2 ? seeded(24, i) : greedy(24));
  const std::vector<std::vector<int>> prompts = prompts_of(8, 10);
  expect_same_outputs(config, prompts, params);
  EngineConfig async_config = config;
  Engine engine(async_config);
  engine.generate(prompts, params);
  EXPECT_GT(engine.stats().num_preemptions, 0);
}

// Penalties count the pending token where the sampler left it, and prompt rows are scored
// before a later step can overwrite their logits, so both run ahead.
TEST(AsyncScheduling, PenaltiesAndPromptLogprobsMatch) {
  std::vector<SamplingParams> params;
  for (int i = 0; i < 4; ++i) params.push_back(seeded(16, 40 + i));
  params[1].repetition_penalty = 1.3f;
  params[1].frequency_penalty = 0.5f;
  params[2].prompt_logprobs = 3;
  expect_same_outputs(tiny_config(true), prompts_of(4, 12), params);
}

// A long prompt scored chunk by chunk: each chunk's step is launched ahead of the one before,
// next to a request that decodes meanwhile, and the scores are those of one step at a time.
TEST(AsyncScheduling, PromptLogprobChunksRunAhead) {
  EngineConfig config = tiny_config(true);
  config.max_num_batched_tokens = 16;
  const std::vector<std::vector<int>> prompts = {prompt_of(90, 7), prompt_of(6, 2)};
  SamplingParams scored = greedy(4);
  scored.prompt_logprobs = 5;
  const std::vector<SamplingParams> params = {scored, greedy(30)};
  expect_same_outputs(config, prompts, params);

  Engine engine(config);
  const std::vector<RequestOutput> outputs = engine.generate(prompts, params);
  ASSERT_EQ(outputs[0].prompt_logprobs.size(), 89u);
  const EngineStats stats = engine.stats();
  // The 90 tokens take at least 6 steps of 16; all but the first step are launched ahead.
  EXPECT_GE(stats.num_steps, 6);
  EXPECT_EQ(stats.num_steps_launched_ahead, stats.num_steps - 1);
}

// Strong penalties on a greedy run: each token changes the next one's logits, so a pending
// token left out of the count would change the output.
TEST(AsyncScheduling, PenalisedRequestsRunAheadAndCountTheirPendingToken) {
  SamplingParams p = greedy(24);
  p.repetition_penalty = 2.0f;
  p.presence_penalty = 1.5f;
  p.frequency_penalty = 1.0f;
  SamplingParams sampled = seeded(24, 9);
  sampled.frequency_penalty = 1.5f;
  expect_same_outputs(tiny_config(true), prompts_of(4), {p, sampled, p, sampled});
}

TEST(AsyncScheduling, AbortsFreeEverythingWithStepsInFlight) {
  Engine engine(tiny_config(true));
  for (int i = 0; i < 6; ++i) {
    engine.add_request("r" + std::to_string(i), prompt_of(8 + i, 3 + i), greedy(40));
  }
  std::vector<int> num_tokens(6, 0);
  std::vector<bool> finished(6, false);
  for (int step = 0; engine.has_unfinished_requests(); ++step) {
    ASSERT_LT(step, 200);
    if (step == 5) {
      engine.abort("r1", std::nullopt);
      engine.abort("r4", std::nullopt);
    }
    for (const RequestOutput& output : engine.step()) {
      const int r = std::stoi(output.request_id.substr(1));
      ASSERT_FALSE(finished[r]) << "output after the last for " << output.request_id;
      num_tokens[r] += static_cast<int>(output.outputs.at(0).token_ids.size());
      finished[r] = output.finished;
      if (output.finished && (r == 1 || r == 4)) {
        EXPECT_EQ(output.outputs[0].finish_reason, FinishReason::kAbort);
      }
    }
  }
  for (int r : {0, 2, 3, 5}) EXPECT_EQ(num_tokens[r], 40) << "request " << r;
  for (int r : {1, 4}) EXPECT_LT(num_tokens[r], 40) << "request " << r;
  EXPECT_GT(engine.stats().num_steps_launched_ahead, 0);
  EXPECT_EQ(engine.stats().kv_cache_usage, 0.0);
  // The engine still serves, with the same tokens as one that never aborted anything.
  Engine fresh(tiny_config(false));
  EXPECT_EQ(engine.generate({prompt_of(9)}, {greedy(12)})[0].outputs[0].token_ids,
            fresh.generate({prompt_of(9)}, {greedy(12)})[0].outputs[0].token_ids);
}

// An abort that arrives while the step sampling a request's last token is in flight comes
// after that token, in both modes: the request ends by length with all its tokens.
TEST(AsyncScheduling, AbortAfterTheLastTokenIsLaunchedKeepsIt) {
  for (bool async_scheduling : {false, true}) {
    SCOPED_TRACE(async_scheduling ? "async" : "one step at a time");
    Engine engine(tiny_config(async_scheduling));
    engine.add_request("r", prompt_of(9), greedy(5));
    std::vector<int> tokens;
    std::optional<FinishReason> reason;
    while (tokens.size() < 4) {
      for (const RequestOutput& output : engine.step()) {
        for (int id : output.outputs[0].token_ids) tokens.push_back(id);
      }
    }
    engine.abort("r", std::nullopt);  // the step sampling token 5 is in flight
    for (int step = 0; engine.has_unfinished_requests(); ++step) {
      ASSERT_LT(step, 10);
      for (const RequestOutput& output : engine.step()) {
        for (int id : output.outputs[0].token_ids) tokens.push_back(id);
        reason = output.outputs[0].finish_reason;
      }
    }
    EXPECT_EQ(tokens.size(), 5u);
    EXPECT_EQ(reason, FinishReason::kLength);
  }
}

}  // namespace
}  // namespace engine
