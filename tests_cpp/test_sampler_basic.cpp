// Sampler: greedy, masks, logit_bias, penalties and logprobs against hand-computed values and
// a naive log_softmax; uniform_draw's range and uniformity.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/sampler.h"

namespace engine {
namespace {

std::vector<float> random_logits(int vocab_size, uint32_t seed, float scale = 3.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> logits(vocab_size);
  for (float& x : logits) x = normal(gen);
  return logits;
}

SamplingParams greedy_params() {
  SamplingParams p;
  p.temperature = 0.0f;
  return p;
}

// Samples one row; logits are modified in place as the sampler does.
SampleResult sample_one(std::vector<float>& logits, const SamplingParams& params,
                        std::span<const int> prompt = {}, std::span<const int> output = {},
                        uint64_t seed = 0, std::vector<int> masked = {}) {
  SamplingRow row;
  row.params = &params;
  row.prompt_token_ids = prompt;
  row.output_token_ids = output;
  row.seed = seed;
  row.masked_token_ids = std::move(masked);
  Sampler sampler;
  auto results = sampler.sample(logits.data(), static_cast<int>(logits.size()), {row});
  EXPECT_EQ(results.size(), 1u);
  return results[0];
}

std::vector<double> naive_log_softmax(const std::vector<float>& logits) {
  double max_logit = -INFINITY;
  for (float x : logits) max_logit = std::max(max_logit, static_cast<double>(x));
  double sum = 0.0;
  for (float x : logits) sum += std::exp(x - max_logit);
  std::vector<double> out;
  for (float x : logits) out.push_back(x - max_logit - std::log(sum));
  return out;
}

TEST(SamplerGreedy, PicksTheArgmax) {
  for (uint32_t seed = 0; seed < 20; ++seed) {
    std::vector<float> logits = random_logits(1000, seed);
    const int expected =
        static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    EXPECT_EQ(sample_one(logits, greedy_params()).token_id, expected) << "seed " << seed;
  }
}

TEST(SamplerGreedy, TieGoesToTheSmallerTokenId) {
  std::vector<float> logits = {0.5f, 1.0f, 2.0f, -1.0f, 2.0f, 2.0f};
  EXPECT_EQ(sample_one(logits, greedy_params()).token_id, 2);
}

TEST(SamplerGreedy, IgnoresSeedAndOutputIndex) {
  const std::vector<float> logits = random_logits(300, 7);
  const std::vector<int> output = {1, 2, 3, 4};
  std::set<int> tokens;
  for (uint64_t seed = 0; seed < 10; ++seed) {
    std::vector<float> copy = logits;
    tokens.insert(sample_one(copy, greedy_params(), {}, output, seed).token_id);
  }
  EXPECT_EQ(tokens.size(), 1u);
}

TEST(SamplerMask, MaskedArgmaxFallsToTheNextBest) {
  std::vector<float> logits = {1.0f, 5.0f, 4.0f, 3.0f};
  EXPECT_EQ(sample_one(logits, greedy_params(), {}, {}, 0, {1}).token_id, 2);
  EXPECT_EQ(logits[1], -INFINITY);
}

TEST(SamplerMask, MaskedTokensAreNeverDrawn) {
  const std::vector<float> base = {3.0f, 3.0f, 0.0f, 2.9f, 1.0f, 3.0f};
  const std::vector<int> masked = {0, 1, 5};
  const std::vector<int> zeros(4000, 0);
  SamplingParams p;  // temperature 1: the masked tokens would otherwise take most of the mass
  std::set<int> drawn;
  for (size_t counter = 0; counter < 4000; ++counter) {
    std::vector<float> logits = base;
    const int token =
        sample_one(logits, p, {}, std::span(zeros).first(counter), 9, masked).token_id;
    ASSERT_TRUE(token != 0 && token != 1 && token != 5) << "counter " << counter;
    drawn.insert(token);
  }
  EXPECT_EQ(drawn, (std::set<int>{2, 3, 4}));
}

TEST(SamplerPenalty, RepetitionDividesPositiveAndMultipliesNegativeOncePerToken) {
  std::vector<float> logits = {2.0f, 1.5f, -1.0f, -0.5f, 0.3f};
  const std::vector<int> prompt = {0, 2, 2};
  const std::vector<int> output = {2, 3, 0};
  SamplingParams p = greedy_params();
  p.repetition_penalty = 2.0f;
  EXPECT_EQ(sample_one(logits, p, prompt, output).token_id, 1);
  const std::vector<float> expected = {1.0f, 1.5f, -2.0f, -1.0f, 0.3f};
  for (size_t i = 0; i < expected.size(); ++i) EXPECT_FLOAT_EQ(logits[i], expected[i]) << i;
}

TEST(SamplerPenalty, FrequencyAndPresenceCountOutputTokensOnly) {
  std::vector<float> logits = {1.0f, 1.0f, 1.0f, 1.0f};
  const std::vector<int> prompt = {3, 3, 0};
  const std::vector<int> output = {1, 2, 1};
  SamplingParams p = greedy_params();
  p.frequency_penalty = 0.5f;
  p.presence_penalty = 0.25f;
  EXPECT_EQ(sample_one(logits, p, prompt, output).token_id, 0);
  // token 1: 1 - 0.5 * 2 - 0.25; token 2: 1 - 0.5 * 1 - 0.25; prompt-only tokens untouched.
  const std::vector<float> expected = {1.0f, -0.25f, 0.25f, 1.0f};
  for (size_t i = 0; i < expected.size(); ++i) EXPECT_FLOAT_EQ(logits[i], expected[i]) << i;
}

TEST(SamplerPenalty, NegativePenaltiesRaiseOutputTokens) {
  std::vector<float> logits = {1.0f, 0.0f, 0.5f};
  const std::vector<int> output = {1};
  SamplingParams p = greedy_params();
  p.presence_penalty = -1.5f;
  EXPECT_EQ(sample_one(logits, p, {}, output).token_id, 1);
  EXPECT_FLOAT_EQ(logits[1], 1.5f);
}

TEST(SamplerPenalty, RepetitionThenFrequencyThenPresence) {
  std::vector<float> logits = {3.0f, -1.0f, 0.0f};
  const std::vector<int> output = {0, 0, 1};
  SamplingParams p = greedy_params();
  p.repetition_penalty = 1.5f;
  p.frequency_penalty = 0.1f;
  p.presence_penalty = 0.2f;
  sample_one(logits, p, {}, output);
  EXPECT_FLOAT_EQ(logits[0], 3.0f / 1.5f - 0.2f - 0.2f);
  EXPECT_FLOAT_EQ(logits[1], -1.0f * 1.5f - 0.1f - 0.2f);
  EXPECT_FLOAT_EQ(logits[2], 0.0f);
}

TEST(SamplerTemperature, RowHoldsTheScaledLogitsAfterARandomDraw) {
  std::vector<float> logits = {1.0f, -2.0f, 0.5f};
  SamplingParams p;
  p.temperature = 0.5f;
  sample_one(logits, p);
  EXPECT_FLOAT_EQ(logits[0], 2.0f);
  EXPECT_FLOAT_EQ(logits[1], -4.0f);
  EXPECT_FLOAT_EQ(logits[2], 1.0f);
}

// The rank and top-N a naive full sort gives: value descending, then token id ascending.
void expect_logprobs_match(const std::vector<float>& raw, const TokenLogprobs& got, int num_top) {
  const std::vector<double> reference = naive_log_softmax(raw);
  const int token = got.token_id;
  EXPECT_NEAR(got.logprob, reference[token], 1e-5);
  int num_larger = 0;
  for (float x : raw) num_larger += x > raw[token] ? 1 : 0;
  EXPECT_EQ(got.rank, 1 + num_larger);

  std::vector<int> order(raw.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int>(i);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return raw[a] > raw[b]; });
  ASSERT_EQ(got.top.size(), static_cast<size_t>(num_top));
  for (int i = 0; i < num_top; ++i) {
    EXPECT_EQ(got.top[i].first, order[i]) << "position " << i;
    EXPECT_NEAR(got.top[i].second, reference[order[i]], 1e-5) << "position " << i;
  }
}

TEST(SamplerLogprobs, GreedyMatchesNaiveLogSoftmax) {
  const std::vector<float> raw = random_logits(49152, 3, 4.0f);
  std::vector<float> logits = raw;
  SamplingParams p = greedy_params();
  p.logprobs = 20;
  const SampleResult result = sample_one(logits, p);
  ASSERT_TRUE(result.logprobs.has_value());
  EXPECT_EQ(result.logprobs->rank, 1);
  expect_logprobs_match(raw, *result.logprobs, 20);
}

TEST(SamplerLogprobs, ComeFromRawLogitsBeforePenaltiesMasksAndTemperature) {
  std::vector<float> raw = random_logits(500, 11);
  raw[10] = raw[20] = raw[30] = 2.5f;  // ties: the top list must order them by token id
  raw[40] = 9.0f;
  const std::vector<int> prompt = {40, 10, 3};
  const std::vector<int> output = {3, 3, 7};
  const std::vector<int> zeros(64, 0);
  SamplingParams p;
  p.temperature = 0.7f;
  p.repetition_penalty = 1.3f;
  p.frequency_penalty = 0.4f;
  p.top_k = 50;
  p.logprobs = 8;
  for (uint64_t seed = 0; seed < 30; ++seed) {
    std::vector<float> logits = raw;
    const SampleResult result = sample_one(logits, p, prompt, output, seed, {40});
    ASSERT_TRUE(result.logprobs.has_value());
    EXPECT_EQ(result.logprobs->token_id, result.token_id);
    expect_logprobs_match(raw, *result.logprobs, 8);
  }
}

TEST(SamplerLogprobs, ZeroGivesOnlyTheSampledTokensLogprobAndRank) {
  const std::vector<float> raw = {0.0f, 3.0f, 1.0f, 3.0f, 2.0f};
  std::vector<float> logits = raw;
  SamplingParams p = greedy_params();
  p.logprobs = 0;
  // With tokens 1 and 3 masked, greedy picks 4, which two tokens outrank.
  const SampleResult result = sample_one(logits, p, {}, {}, 0, {1, 3});
  ASSERT_TRUE(result.logprobs.has_value());
  EXPECT_EQ(result.token_id, 4);
  EXPECT_EQ(result.logprobs->rank, 3);
  EXPECT_TRUE(result.logprobs->top.empty());
  expect_logprobs_match(raw, *result.logprobs, 0);
}

TEST(SamplerLogprobs, AbsentWhenNotAsked) {
  std::vector<float> logits = random_logits(100, 5);
  EXPECT_FALSE(sample_one(logits, greedy_params()).logprobs.has_value());
}

TEST(SamplerLogitBias, LargeBiasForcesATokenUnderGreedy) {
  const std::vector<float> raw = random_logits(1000, 21);
  const int weakest = static_cast<int>(std::min_element(raw.begin(), raw.end()) - raw.begin());
  SamplingParams p = greedy_params();
  p.logit_bias = {{weakest, 100.0f}, {3, -2.5f}};
  std::vector<float> logits = raw;
  EXPECT_EQ(sample_one(logits, p).token_id, weakest);
  EXPECT_EQ(logits[weakest], raw[weakest] + 100.0f);
  EXPECT_EQ(logits[3], raw[3] - 2.5f);
  for (int i = 0; i < 1000; ++i) {
    if (i != weakest && i != 3) ASSERT_EQ(logits[i], raw[i]) << "token " << i;
  }
}

TEST(SamplerLogitBias, LargeBiasForcesATokenUnderSampling) {
  const std::vector<float> raw = random_logits(1000, 22);
  const std::vector<int> zeros(300, 0);
  SamplingParams p;
  p.temperature = 1.5f;
  p.logit_bias = {{617, 100.0f}};
  for (size_t counter = 0; counter < 300; ++counter) {
    std::vector<float> logits = raw;
    ASSERT_EQ(sample_one(logits, p, {}, std::span(zeros).first(counter), 5).token_id, 617)
        << "counter " << counter;
  }
}

TEST(SamplerLogitBias, MinusHundredExcludesAToken) {
  // Token 1 would take most of the mass; biased by -100 it is 95 nats below the rest, where
  // its weight is exactly 0.
  const std::vector<float> base = {0.0f, 5.0f, 0.5f, -0.5f};
  const std::vector<int> zeros(4000, 0);
  SamplingParams p;
  p.logit_bias = {{1, -100.0f}};
  std::set<int> drawn;
  for (size_t counter = 0; counter < 4000; ++counter) {
    std::vector<float> logits = base;
    const int token = sample_one(logits, p, {}, std::span(zeros).first(counter), 3).token_id;
    ASSERT_NE(token, 1) << "counter " << counter;
    drawn.insert(token);
  }
  EXPECT_EQ(drawn, (std::set<int>{0, 2, 3}));
  std::vector<float> logits = base;
  SamplingParams g = greedy_params();
  g.logit_bias = p.logit_bias;
  EXPECT_EQ(sample_one(logits, g).token_id, 2);
}

TEST(SamplerLogitBias, AppliesBeforeTopK) {
  // Without the bias top_k = 1 would keep token 0; the bias makes token 4 the only survivor.
  const std::vector<float> base = {4.0f, 3.0f, 2.0f, 1.0f, 0.0f};
  const std::vector<int> zeros(500, 0);
  SamplingParams p;
  p.top_k = 1;
  p.logit_bias = {{4, 10.0f}};
  SamplingParams q;
  q.top_k = 2;
  q.logit_bias = {{0, -10.0f}};  // top_k now keeps tokens 1 and 2
  std::set<int> drawn_p, drawn_q;
  for (size_t counter = 0; counter < 500; ++counter) {
    std::vector<float> a = base, b = base;
    drawn_p.insert(sample_one(a, p, {}, std::span(zeros).first(counter), 8).token_id);
    drawn_q.insert(sample_one(b, q, {}, std::span(zeros).first(counter), 8).token_id);
  }
  EXPECT_EQ(drawn_p, (std::set<int>{4}));
  EXPECT_EQ(drawn_q, (std::set<int>{1, 2}));
}

TEST(SamplerLogitBias, AppliesBeforeTopP) {
  // Unbiased, token 0 holds 0.71 of the mass and top_p = 0.5 keeps it alone. Biased, token 3
  // holds 0.96 of it, so the nucleus is token 3 alone.
  const std::vector<float> base = {2.0f, 0.0f, 0.0f, 0.0f};
  const std::vector<int> zeros(500, 0);
  SamplingParams p;
  p.top_p = 0.5f;
  p.logit_bias = {{3, 5.5f}};
  std::set<int> drawn;
  for (size_t counter = 0; counter < 500; ++counter) {
    std::vector<float> logits = base;
    drawn.insert(sample_one(logits, p, {}, std::span(zeros).first(counter), 4).token_id);
  }
  EXPECT_EQ(drawn, (std::set<int>{3}));
}

TEST(SamplerLogitBias, AppliesAfterMasksAndBeforePenalties) {
  std::vector<float> logits = {1.0f, -1.0f, 0.0f, 0.2f, 7.0f};
  const std::vector<int> output = {0, 1, 1};
  SamplingParams p = greedy_params();
  p.repetition_penalty = 2.0f;
  p.frequency_penalty = 0.25f;
  p.logit_bias = {{0, 1.0f}, {1, 0.5f}, {4, 100.0f}};
  // Token 4 is masked: its +100 bias leaves it at -inf.
  EXPECT_EQ(sample_one(logits, p, {}, output, 0, {4}).token_id, 0);
  // Biased first: (1 + 1) / 2 - 0.25; (-1 + 0.5) * 2 - 0.5. Penalised first would give 1.25
  // and -2.0.
  EXPECT_FLOAT_EQ(logits[0], 0.75f);
  EXPECT_FLOAT_EQ(logits[1], -1.5f);
  EXPECT_EQ(logits[4], -INFINITY);
}

TEST(SamplerLogitBias, ChangesNeitherTheLogprobsNorOtherRows) {
  // Logprobs come from the raw logits (vLLM's default raw_logprobs); the sampled token's rank
  // shows where the bias moved it from.
  const std::vector<float> raw = {3.0f, 2.0f, 1.0f, 0.0f};
  SamplingParams biased = greedy_params();
  biased.logprobs = 2;
  biased.logit_bias = {{3, 50.0f}};
  SamplingParams plain = greedy_params();
  std::vector<float> logits(raw);
  logits.insert(logits.end(), raw.begin(), raw.end());
  SamplingRow a, b;
  a.params = &biased;
  b.params = &plain;
  const auto results = Sampler().sample(logits.data(), 4, {a, b});
  EXPECT_EQ(results[0].token_id, 3);
  ASSERT_TRUE(results[0].logprobs.has_value());
  EXPECT_EQ(results[0].logprobs->rank, 4);
  expect_logprobs_match(raw, *results[0].logprobs, 2);
  EXPECT_EQ(results[1].token_id, 0);
}

TEST(SamplerErrors, RejectsOutOfRangeTokenIdsAndMissingParams) {
  std::vector<float> logits(10, 0.0f);
  SamplingParams p;
  EXPECT_THROW(sample_one(logits, p, {}, {}, 0, {10}), std::out_of_range);
  p.repetition_penalty = 1.2f;
  const std::vector<int> bad = {-1};
  EXPECT_THROW(sample_one(logits, p, bad), std::out_of_range);
  SamplingRow row;
  EXPECT_THROW(Sampler().sample(logits.data(), 10, {row}), std::invalid_argument);
  SamplingParams biased;
  biased.logit_bias = {{10, 1.0f}};
  try {
    sample_one(logits, biased);
    ADD_FAILURE() << "no error for a logit_bias id outside the vocabulary";
  } catch (const std::out_of_range& error) {
    EXPECT_STREQ(error.what(), "sampler row 0: logit_bias token id 10 is outside [0, 10)");
  }
}

TEST(UniformDraw, IsDeterministicAndInRange) {
  for (uint64_t seed : {0ull, 1ull, 42ull, ~0ull}) {
    for (uint64_t counter = 0; counter < 1000; ++counter) {
      const double u = uniform_draw(seed, counter);
      ASSERT_GE(u, 0.0);
      ASSERT_LT(u, 1.0);
      ASSERT_EQ(u, uniform_draw(seed, counter));
    }
  }
}

TEST(UniformDraw, CountersAndSeedsGiveDifferentDraws) {
  std::set<double> values;
  for (uint64_t counter = 0; counter < 10000; ++counter) values.insert(uniform_draw(7, counter));
  for (uint64_t seed = 0; seed < 10000; ++seed) values.insert(uniform_draw(seed, 7));
  // 20,000 draws of 53-bit values: a collision other than (7, 7) itself would mean a flaw.
  EXPECT_EQ(values.size(), 19999u);
}

// Chi-square over 20 equal bins; with 19 degrees of freedom, 45 is exceeded with probability
// about 1e-3 by a true uniform, and the draws are deterministic, so this cannot flake.
TEST(UniformDraw, IsRoughlyUniformOverCountersAndOverSeeds) {
  constexpr int kBins = 20, kDraws = 200000;
  for (bool vary_seed : {false, true}) {
    std::vector<int> counts(kBins, 0);
    double mean = 0.0;
    for (uint64_t i = 0; i < kDraws; ++i) {
      const double u = vary_seed ? uniform_draw(i, 3) : uniform_draw(12345, i);
      ++counts[static_cast<int>(u * kBins)];
      mean += u / kDraws;
    }
    const double expected = static_cast<double>(kDraws) / kBins;
    double chi2 = 0.0;
    for (int c : counts) chi2 += (c - expected) * (c - expected) / expected;
    EXPECT_LT(chi2, 45.0) << (vary_seed ? "over seeds" : "over counters");
    EXPECT_NEAR(mean, 0.5, 0.003);
  }
}

// score_tokens (and the device samplers, through check_score_rows) refuse rows they cannot
// score, with the row and the allowed range in the message.
TEST(ScoreTokens, RejectsRowsItCannotScore) {
  const std::vector<float> logits(2 * 5, 0.5f);
  auto message = [&](std::vector<int> ids, std::vector<int> num_top) {
    try {
      score_tokens(logits.data(), 5, ids, num_top);
    } catch (const std::invalid_argument& error) {
      return std::string(error.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message({1, 5}, {0, 0}),
            "score_tokens: row 1 token id 5 is outside the vocabulary [0, 5)");
  EXPECT_EQ(message({1, 2}, {3, 21}),
            "score_tokens: row 1 asks for 21 top logprobs; allowed is "
            "[0, 20]");
  EXPECT_EQ(message({1, 2}, {-1, 0}),
            "score_tokens: row 0 asks for -1 top logprobs; allowed is "
            "[0, 20]");
  EXPECT_EQ(message({1, 2}, {0}),
            "score_tokens: 2 token ids but 1 num_top entries; give one per "
            "row");
  const std::vector<TokenLogprobs> scored = score_tokens(logits.data(), 5, {{1, 2}}, {{20, 0}});
  ASSERT_EQ(scored.size(), 2u);
  EXPECT_EQ(scored[0].top.size(), 5u);  // clamped to the vocabulary
  EXPECT_TRUE(scored[1].top.empty());
}

}  // namespace
}  // namespace engine
