// Prompt logprobs on a tiny dummy-weight Llama. Each entry must equal what the engine reports
// when that same token is sampled after the same prefix (forced by logit_bias, scored on the
// raw logits), and prefix caching, chunked prefill, n > 1 and preemption must change nothing.

#include <gtest/gtest.h>

#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine_test_util.h"

namespace engine {
namespace {

using test::greedy;
using test::prompt_of;
constexpr int kNumTop = 5;
// The prompt is scored in one forward, the reference one prefix at a time: other GEMM shapes,
// so float sums in another order.
constexpr float kTolerance = 1e-4f;

EngineConfig tiny_config(bool enable_prefix_caching = true, int max_num_batched_tokens = 256,
                         int num_kv_blocks = 64, int max_model_len = 128) {
  EngineConfig config;
  config.model = test::write_tiny_llama_config("prompt-logprobs-test");
  config.load_format = "dummy";
  config.max_model_len = max_model_len;
  config.block_size = 16;
  config.num_kv_blocks = num_kv_blocks;
  config.max_num_batched_tokens = max_num_batched_tokens;
  config.enable_prefix_caching = enable_prefix_caching;
  return config;
}

SamplingParams with_prompt_logprobs(int max_tokens, int num_top = kNumTop) {
  SamplingParams params = greedy(max_tokens);
  params.prompt_logprobs = num_top;
  return params;
}

// What the engine says of prompt[i + 1] after prompt[0..i], for every i: that token forced as
// the one sampled (logit_bias +100, greedy), its logprobs taken on the unbiased logits.
std::vector<TokenLogprobs> scored_one_by_one(const std::vector<int>& prompt) {
  Engine engine(tiny_config(/*enable_prefix_caching=*/false));
  std::vector<std::vector<int>> prefixes;
  std::vector<SamplingParams> params;
  for (size_t i = 0; i + 1 < prompt.size(); ++i) {
    prefixes.emplace_back(prompt.begin(), prompt.begin() + static_cast<std::ptrdiff_t>(i) + 1);
    SamplingParams p = greedy(1);
    p.logprobs = kNumTop;
    p.logit_bias[prompt[i + 1]] = SamplingParams::kMaxLogitBias;
    params.push_back(p);
  }
  std::vector<TokenLogprobs> scored;
  for (const RequestOutput& output : engine.generate(prefixes, params)) {
    scored.push_back(output.outputs.at(0).logprobs.at(0));
  }
  return scored;
}

void expect_same_scores(const std::vector<TokenLogprobs>& actual,
                        const std::vector<TokenLogprobs>& expected) {
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t i = 0; i < actual.size(); ++i) {
    SCOPED_TRACE("prompt token " + std::to_string(i + 1));
    EXPECT_EQ(actual[i].token_id, expected[i].token_id);
    EXPECT_NEAR(actual[i].logprob, expected[i].logprob, kTolerance);
    EXPECT_EQ(actual[i].rank, expected[i].rank);
    ASSERT_EQ(actual[i].top.size(), expected[i].top.size());
    for (size_t k = 0; k < actual[i].top.size(); ++k) {
      EXPECT_EQ(actual[i].top[k].first, expected[i].top[k].first);
      EXPECT_NEAR(actual[i].top[k].second, expected[i].top[k].second, kTolerance);
    }
  }
}

TEST(PromptLogprobs, EachTokenScoresAsItWouldIfSampledAfterItsPrefix) {
  const std::vector<int> prompt = prompt_of(37, 5);  // 2 full blocks and a partial one
  const std::vector<TokenLogprobs> expected = scored_one_by_one(prompt);
  ASSERT_EQ(expected.size(), 36u);
  for (const TokenLogprobs& entry : expected) ASSERT_EQ(entry.top.size(), size_t{kNumTop});

  Engine engine(tiny_config());
  const auto outputs = engine.generate({prompt}, {with_prompt_logprobs(3)});
  expect_same_scores(outputs[0].prompt_logprobs, expected);
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(outputs[0].prompt_logprobs[i].token_id, prompt[i + 1]);
  }
  EXPECT_EQ(outputs[0].outputs[0].token_ids.size(), 3u);
}

TEST(PromptLogprobs, ChunkedPrefillACachedPrefixAndNGreaterThanOneChangeNothing) {
  const std::vector<int> prompt = prompt_of(50, 9);
  Engine reference(tiny_config());
  const auto expected = reference.generate({prompt}, {with_prompt_logprobs(2)});

  // Chunks of 16 tokens; the prompt's first blocks are cached by an earlier request.
  Engine engine(tiny_config(/*enable_prefix_caching=*/true, /*max_num_batched_tokens=*/16));
  engine.generate({prompt}, {greedy(2)});
  SamplingParams params = with_prompt_logprobs(2);
  params.n = 3;
  params.temperature = 1.0f;
  params.seed = 11;
  const auto outputs = engine.generate({prompt}, {params});
  EXPECT_EQ(outputs[0].num_cached_tokens, 0) << "prompt logprobs need the whole prompt computed";
  EXPECT_EQ(outputs[0].outputs.size(), 3u);
  expect_same_scores(outputs[0].prompt_logprobs, expected[0].prompt_logprobs);
}

// 3 scored prompt tokens a step (the logits rows the engine reserves), the token budget of 256
// shared with a plain request: the same scores in 17 chunks, the plain request unhindered.
TEST(PromptLogprobs, ACapOnScoredTokensPerStepChunksThePromptAlike) {
  const std::vector<int> prompt = prompt_of(50, 9);
  Engine reference(tiny_config());
  const auto expected = reference.generate({prompt}, {with_prompt_logprobs(2)});

  EngineConfig config = tiny_config();
  config.max_num_prompt_logprob_tokens = 3;
  Engine engine(config);
  engine.add_request("scored", prompt, with_prompt_logprobs(2));
  engine.add_request("plain", prompt_of(40, 3), greedy(30));
  std::vector<TokenLogprobs> scores;
  size_t plain_tokens = 0;  // up to the step that brings the scores
  while (engine.has_unfinished_requests()) {
    const bool scored_before = !scores.empty();
    for (const RequestOutput& output : engine.step()) {
      if (output.request_id == "plain" && !scored_before) {
        plain_tokens += output.outputs.at(0).token_ids.size();
      } else if (output.request_id == "scored" && !output.prompt_logprobs.empty()) {
        scores = output.prompt_logprobs;
      }
    }
  }
  expect_same_scores(scores, expected[0].prompt_logprobs);
  // 50 prompt tokens, 3 a step: the 17th step samples; the plain request, whose 40-token
  // prompt took one step, had a token from each of them.
  EXPECT_EQ(plain_tokens, 17u);
}

TEST(PromptLogprobs, TheCapMustFitTheTokenBudget) {
  EngineConfig config = tiny_config(true, 16);
  config.max_num_prompt_logprob_tokens = 17;
  EXPECT_THROW(
      {
        try {
          Engine engine(config);
        } catch (const std::invalid_argument& e) {
          EXPECT_STREQ(e.what(),
                       "max_num_prompt_logprob_tokens must be in [1, max_num_batched_tokens = "
                       "16], got 17");
          throw;
        }
      },
      std::invalid_argument);
  config.max_num_prompt_logprob_tokens = 0;
  EXPECT_THROW(Engine engine(config), std::invalid_argument);
}

TEST(PromptLogprobs, StepDeliversThemOnceWithTheFirstTokens) {
  Engine engine(tiny_config(/*enable_prefix_caching=*/false, /*max_num_batched_tokens=*/16));
  const std::vector<int> prompt = prompt_of(40, 3);
  engine.add_request("scored", prompt, with_prompt_logprobs(4, 0));
  engine.add_request("plain", prompt_of(20, 7), greedy(4));
  int num_with = 0;
  bool tokens_before = false;
  while (engine.has_unfinished_requests()) {
    for (const RequestOutput& output : engine.step()) {
      if (output.request_id == "plain") {
        EXPECT_TRUE(output.prompt_logprobs.empty());
        continue;
      }
      if (output.prompt_logprobs.empty()) {
        tokens_before = tokens_before || num_with == 0;
        continue;
      }
      ++num_with;
      EXPECT_EQ(output.outputs.at(0).token_ids.size(), 1u) << "the first output carries them";
      ASSERT_EQ(output.prompt_logprobs.size(), prompt.size() - 1);
      for (const TokenLogprobs& entry : output.prompt_logprobs) {
        EXPECT_TRUE(entry.top.empty());  // prompt_logprobs = 0: no top entries
        EXPECT_LE(entry.logprob, 0.0f);
        EXPECT_GE(entry.rank, 1);
      }
    }
  }
  EXPECT_EQ(num_with, 1);
  EXPECT_FALSE(tokens_before);
}

TEST(PromptLogprobs, PreemptionBeforeTheFirstTokenRecomputesThemAlike) {
  const std::vector<std::vector<int>> prompts{prompt_of(17, 4), prompt_of(60, 30)};
  const std::vector<SamplingParams> params{with_prompt_logprobs(40), with_prompt_logprobs(1)};
  Engine reference(tiny_config());
  const auto expected = reference.generate(prompts, params);

  // 5 blocks of 16 tokens and 4 tokens a step: the second prompt is computed 3 tokens a step
  // beside the first's decodes, and has 48 of its 60 tokens when the first needs its third
  // block: the second is preempted mid-prompt, then computed again from the start.
  Engine engine(tiny_config(/*enable_prefix_caching=*/false, /*max_num_batched_tokens=*/4,
                            /*num_kv_blocks=*/5, /*max_model_len=*/64));
  const auto outputs = engine.generate(prompts, params);
  EXPECT_GT(engine.stats().num_preemptions, 0);
  for (size_t i = 0; i < prompts.size(); ++i) {
    SCOPED_TRACE("request " + std::to_string(i));
    expect_same_scores(outputs[i].prompt_logprobs, expected[i].prompt_logprobs);
  }
}

TEST(PromptLogprobs, AOneTokenPromptHasNoneAndTheBoundIsChecked) {
  Engine engine(tiny_config());
  const auto outputs = engine.generate({{7}}, {with_prompt_logprobs(2)});
  EXPECT_TRUE(outputs[0].prompt_logprobs.empty());
  EXPECT_EQ(outputs[0].outputs[0].token_ids.size(), 2u);
  try {
    engine.add_request("bad", {1, 2}, with_prompt_logprobs(1, 21));
    FAIL() << "prompt_logprobs = 21 was accepted";
  } catch (const std::invalid_argument& error) {
    EXPECT_EQ(std::string(error.what()), "prompt_logprobs must be in [0, 20], got 21");
  }
}

}  // namespace
}  // namespace engine
