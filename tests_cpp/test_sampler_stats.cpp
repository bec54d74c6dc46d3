// Sampler statistics: the drawn distribution against softmax(logits / T), the top-k / top-p /
// min-p kept sets (with logit_bias added first) against a naive full sort, seeded reproducibility
// whatever the batch, and the time per row at the real vocabulary size.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "runtime/sampler.h"

namespace engine {
namespace {

constexpr int kRealVocab = 49152;

std::vector<float> random_logits(int vocab_size, uint32_t seed, float scale = 3.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> logits(vocab_size);
  for (float& x : logits) x = normal(gen);
  return logits;
}

// Output tokens whose only role is to set the output index (the RNG counter).
std::span<const int> output_of_length(size_t n) {
  static const std::vector<int> zeros(100000, 0);
  return std::span<const int>(zeros).first(n);
}

int draw(const std::vector<float>& logits, const SamplingParams& params, uint64_t seed,
         size_t counter) {
  std::vector<float> copy = logits;
  SamplingRow row;
  row.params = &params;
  row.output_token_ids = output_of_length(counter);
  row.seed = seed;
  return Sampler().sample(copy.data(), static_cast<int>(copy.size()), {row})[0].token_id;
}

// How often each token was drawn over counters 0 .. num_draws-1, as frequencies.
std::map<int, double> draw_frequencies(const std::vector<float>& logits, const SamplingParams& p,
                                       uint64_t seed, int num_draws) {
  std::map<int, double> freq;
  for (int i = 0; i < num_draws; ++i) freq[draw(logits, p, seed, i)] += 1.0 / num_draws;
  return freq;
}

// The kept set and its renormalised probabilities by the definition, in double precision:
// full sort by probability (ties by id), then min_p, top_k, top_p as prefixes.
struct Reference {
  std::map<int, double> probs;
  double margin = INFINITY;  // distance of the top_p cumulative mass from its threshold
};

Reference reference_filter(const std::vector<float>& logits, const SamplingParams& p) {
  const int n = static_cast<int>(logits.size());
  std::vector<double> prob(n);
  const double max_logit = *std::max_element(logits.begin(), logits.end());
  for (int i = 0; i < n; ++i) prob[i] = std::exp((logits[i] - max_logit) / p.temperature);
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return prob[a] > prob[b]; });
  size_t kept = 0;
  while (kept < order.size() && prob[order[kept]] >= p.min_p * prob[order[0]]) ++kept;
  if (p.top_k > 0) kept = std::min<size_t>(kept, p.top_k);
  double mass = 0.0;
  for (size_t i = 0; i < kept; ++i) mass += prob[order[i]];
  Reference ref;
  if (p.top_p < 1.0f) {
    double cumulative = 0.0;
    size_t i = 0;
    while (i < kept) {
      cumulative += prob[order[i++]];
      ref.margin = std::min(ref.margin, std::abs(cumulative / mass - p.top_p));
      if (cumulative >= p.top_p * mass) break;
    }
    kept = i;
    mass = cumulative;
  }
  for (size_t i = 0; i < kept; ++i) ref.probs[order[i]] = prob[order[i]] / mass;
  return ref;
}

// Every draw inside the reference set, every kept token drawn, frequencies close. The
// reference sees the logits with p.logit_bias added, as the definition says.
void expect_draws_follow_reference(const std::vector<float>& logits, const SamplingParams& p,
                                   int num_draws, double tolerance) {
  std::vector<float> biased = logits;
  for (const auto& [id, bias] : p.logit_bias) biased[id] += bias;
  const Reference ref = reference_filter(biased, p);
  ASSERT_GT(ref.margin, 1e-4) << "test logits put the top_p boundary too close to call";
  const std::map<int, double> freq = draw_frequencies(logits, p, 2024, num_draws);
  for (const auto& [token, f] : freq) EXPECT_TRUE(ref.probs.count(token)) << "drew " << token;
  for (const auto& [token, prob] : ref.probs) {
    EXPECT_TRUE(freq.count(token)) << "never drew kept token " << token << " (p " << prob << ")";
    EXPECT_NEAR(freq.count(token) ? freq.at(token) : 0.0, prob, tolerance) << "token " << token;
  }
}

// Pearson chi-square of 40,000 draws over 8 tokens: 7 degrees of freedom, so a correct sampler
// exceeds 30 with probability about 1e-4; sampling at the wrong temperature gives hundreds.
TEST(SamplerDistribution, TemperatureMatchesSoftmaxOfScaledLogits) {
  const std::vector<float> logits = {1.0f, 0.2f, -0.5f, 2.0f, 0.0f, 1.5f, -2.0f, 0.7f};
  constexpr int kDraws = 40000;
  for (float temperature : {0.5f, 1.0f, 1.7f}) {
    SamplingParams p;
    p.temperature = temperature;
    const std::map<int, double> freq = draw_frequencies(logits, p, 99, kDraws);
    const Reference ref = reference_filter(logits, p);
    double chi2 = 0.0;
    for (const auto& [token, prob] : ref.probs) {
      const double observed = freq.count(token) ? freq.at(token) * kDraws : 0.0;
      chi2 += (observed - prob * kDraws) * (observed - prob * kDraws) / (prob * kDraws);
    }
    EXPECT_LT(chi2, 30.0) << "temperature " << temperature;
  }
}

TEST(SamplerFilters, TopKKeepsTheKMostProbable) {
  SamplingParams p;
  p.top_k = 8;
  expect_draws_follow_reference(random_logits(200, 1, 1.0f), p, 8000, 0.025);
}

TEST(SamplerFilters, TopPKeepsTheSmallestNucleus) {
  SamplingParams p;
  p.top_p = 0.6f;
  p.temperature = 0.8f;
  expect_draws_follow_reference(random_logits(200, 2, 1.5f), p, 8000, 0.025);
}

TEST(SamplerFilters, MinPDropsTokensBelowAFractionOfTheBest) {
  SamplingParams p;
  p.min_p = 0.2f;
  expect_draws_follow_reference(random_logits(200, 3, 1.0f), p, 8000, 0.025);
}

TEST(SamplerFilters, AllThreeComposeInVllmOrder) {
  SamplingParams p;
  p.min_p = 0.05f;
  p.top_k = 12;
  p.top_p = 0.8f;
  p.temperature = 1.3f;
  expect_draws_follow_reference(random_logits(300, 4, 1.0f), p, 8000, 0.025);
}

// The bias moves tokens into and out of the kept set: the weakest token becomes the most
// likely, the strongest drops out of the top 12.
TEST(SamplerFilters, LogitBiasAppliesBeforeTemperatureAndFilters) {
  const std::vector<float> logits = random_logits(300, 6, 1.0f);
  const auto [weakest, strongest] = std::minmax_element(logits.begin(), logits.end());
  SamplingParams p;
  p.temperature = 0.9f;
  p.top_k = 12;
  p.top_p = 0.8f;
  p.logit_bias = {{static_cast<int>(weakest - logits.begin()), 7.0f},
                  {static_cast<int>(strongest - logits.begin()), -6.0f},
                  {17, 1.5f},
                  {42, -0.75f}};
  expect_draws_follow_reference(logits, p, 8000, 0.025);
}

// A flat row: almost every token passes the first cut-off, so the nucleus selection works on
// tens of thousands of candidates.
TEST(SamplerFilters, TopPOnAFlatRealSizeVocabulary) {
  std::vector<float> logits(kRealVocab);
  std::mt19937 gen(5);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  for (float& x : logits) x = uniform(gen);
  SamplingParams p;
  p.top_p = 0.5f;
  const Reference ref = reference_filter(logits, p);
  ASSERT_GT(ref.probs.size(), 10000u);
  for (int counter = 0; counter < 300; ++counter) {
    const int token = draw(logits, p, 8, counter);
    ASSERT_TRUE(ref.probs.count(token)) << "counter " << counter << " drew " << token;
  }
}

// Strong tokens 11 nats above 49,000-odd tied weak ones, which all fall below the last
// candidate cut-off: top_p and top_k must widen the gather to the whole vocabulary, and the tie
// order (smaller id first) decides which weak tokens stay.
void expect_widened_draws(const std::vector<float>& logits, const SamplingParams& p, int num_draws,
                          size_t min_distinct) {
  const Reference ref = reference_filter(logits, p);
  ASSERT_GT(ref.margin, 1e-6);
  ASSERT_LT(ref.probs.size(), logits.size());  // some weak tokens are dropped by id order
  std::set<int> drawn;
  for (int counter = 0; counter < num_draws; ++counter) {
    const int token = draw(logits, p, 17, counter);
    ASSERT_TRUE(ref.probs.count(token)) << "drew " << token;
    drawn.insert(token);
  }
  EXPECT_GT(drawn.size(), min_distinct);  // the weak kept tokens are reachable
}

TEST(SamplerFilters, TopPWidensPastTheCutoffsAndBreaksTiesById) {
  std::vector<float> logits(kRealVocab, 0.0f);
  logits[30000] = 11.0f;
  SamplingParams p;
  p.top_p = 0.9f;
  // ~39% of the mass is on ~38,000 kept weak tokens: ~780 draws of them, nearly all distinct.
  expect_widened_draws(logits, p, 2000, 600);
}

TEST(SamplerFilters, TopKWidensPastTheCutoffsAndBreaksTiesById) {
  std::vector<float> logits(kRealVocab, 0.0f);
  for (int i = 0; i < 10; ++i) logits[4000 * i + 5] = 11.0f;
  SamplingParams p;
  p.top_k = 12000;
  // ~2% of the mass is on the 11,990 kept weak tokens: ~80 of 4,000 draws.
  expect_widened_draws(logits, p, 4000, 40);
}

std::vector<SamplingParams> assorted_params() {
  std::vector<SamplingParams> all(6);
  all[0].temperature = 0.0f;
  all[0].logprobs = 5;
  all[1].temperature = 0.9f;
  all[2].top_k = 40;
  all[2].logprobs = 0;
  all[3].top_p = 0.85f;
  all[3].repetition_penalty = 1.2f;
  all[4].min_p = 0.02f;
  all[4].frequency_penalty = 0.3f;
  all[5].top_k = 64;
  all[5].top_p = 0.9f;
  all[5].min_p = 0.01f;
  all[5].presence_penalty = 0.5f;
  all[5].logprobs = 3;
  return all;
}

struct Batch {
  std::vector<float> logits;  // [rows.size(), vocab]
  std::vector<SamplingRow> rows;
};

// Row i of the batch is row order[i] of the sources.
Batch make_batch(const std::vector<std::vector<float>>& row_logits,
                 const std::vector<SamplingRow>& row_specs, const std::vector<int>& order) {
  Batch batch;
  for (int i : order) {
    batch.logits.insert(batch.logits.end(), row_logits[i].begin(), row_logits[i].end());
    batch.rows.push_back(row_specs[i]);
  }
  return batch;
}

void expect_same_result(const SampleResult& a, const SampleResult& b, const std::string& what) {
  EXPECT_EQ(a.token_id, b.token_id) << what;
  ASSERT_EQ(a.logprobs.has_value(), b.logprobs.has_value()) << what;
  if (!a.logprobs) return;
  EXPECT_EQ(a.logprobs->logprob, b.logprobs->logprob) << what;
  EXPECT_EQ(a.logprobs->rank, b.logprobs->rank) << what;
  EXPECT_EQ(a.logprobs->top, b.logprobs->top) << what;
}

TEST(SamplerReproducibility, SameSeedAndCounterGiveTheSameTokenInAnyBatch) {
  const std::vector<SamplingParams> params = assorted_params();
  const std::vector<int> prompt = {5, 6, 7, 5};
  const std::vector<int> output = {7, 8, 8, 9, 10};
  std::vector<std::vector<float>> row_logits;
  std::vector<SamplingRow> specs;
  for (size_t i = 0; i < params.size(); ++i) {
    row_logits.push_back(random_logits(5000, 100 + i, 2.0f));
    SamplingRow row;
    row.params = &params[i];
    row.prompt_token_ids = prompt;
    row.output_token_ids = std::span<const int>(output).first(1 + i % 4);
    row.seed = 1000 + i;
    specs.push_back(row);
  }
  std::vector<SampleResult> alone;
  for (size_t i = 0; i < specs.size(); ++i) {
    Batch one = make_batch(row_logits, specs, {static_cast<int>(i)});
    alone.push_back(Sampler().sample(one.logits.data(), 5000, one.rows)[0]);
  }
  for (const std::vector<int>& order :
       {std::vector<int>{0, 1, 2, 3, 4, 5}, {5, 4, 3, 2, 1, 0}, {3, 0, 5, 1}, {2, 2, 4, 2}}) {
    Batch batch = make_batch(row_logits, specs, order);
    const std::vector<SampleResult> got = Sampler().sample(batch.logits.data(), 5000, batch.rows);
    for (size_t j = 0; j < order.size(); ++j) {
      expect_same_result(got[j], alone[order[j]], "row " + std::to_string(order[j]));
    }
  }
}

TEST(SamplerReproducibility, DifferentCountersOrSeedsGiveDifferentDraws) {
  const std::vector<float> logits = random_logits(1000, 12, 0.5f);
  SamplingParams p;
  std::set<int> over_counters, over_seeds;
  for (int i = 0; i < 200; ++i) {
    over_counters.insert(draw(logits, p, 3, i));
    over_seeds.insert(draw(logits, p, i, 3));
    EXPECT_EQ(draw(logits, p, 3, i), draw(logits, p, 3, i));
  }
  // 200 draws from a near-flat 1000-token row: ~180 distinct tokens are expected.
  EXPECT_GT(over_counters.size(), 120u);
  EXPECT_GT(over_seeds.size(), 120u);
}

double time_per_row_ms(const std::vector<float>& logits, int num_rows,
                       const std::vector<SamplingRow>& rows, int repeats) {
  double best = INFINITY;
  for (int r = 0; r < repeats; ++r) {
    std::vector<float> copy = logits;
    const auto start = std::chrono::steady_clock::now();
    Sampler().sample(copy.data(), kRealVocab, rows);
    const std::chrono::duration<double, std::milli> took = std::chrono::steady_clock::now() - start;
    best = std::min(best, took.count() / num_rows);
  }
  return best;
}

// A 256-row step at the real vocabulary size must give each row the token it gets alone; the
// time per row is printed (tests never assert timings).
TEST(SamplerBatch, RealSizeStepMatchesRowByRowAndReportsTime) {
  constexpr int kRows = 256;
  const std::vector<SamplingParams> params = assorted_params();
  const std::vector<int> prompt = {1, 2, 3, 4, 5, 6, 7, 8};
  std::vector<float> logits;
  std::vector<SamplingRow> rows(kRows);
  for (int r = 0; r < kRows; ++r) {
    const std::vector<float> row = random_logits(kRealVocab, 500 + r, 2.5f);
    logits.insert(logits.end(), row.begin(), row.end());
    rows[r].params = &params[r % params.size()];
    rows[r].prompt_token_ids = prompt;
    rows[r].output_token_ids = output_of_length(r);
    rows[r].seed = r * 7919;
  }
  std::vector<float> batch_logits = logits;
  const std::vector<SampleResult> batch = Sampler().sample(batch_logits.data(), kRealVocab, rows);
  for (int r = 0; r < kRows; r += 17) {
    std::vector<float> one(logits.begin() + r * kRealVocab, logits.begin() + (r + 1) * kRealVocab);
    const SampleResult alone = Sampler().sample(one.data(), kRealVocab, {rows[r]})[0];
    expect_same_result(batch[r], alone, "row " + std::to_string(r));
  }

  for (size_t i = 0; i < params.size(); ++i) {
    std::vector<SamplingRow> same(kRows, rows[0]);
    for (int r = 0; r < kRows; ++r) same[r].params = &params[i], same[r].seed = r;
    std::printf("[ timing   ] params set %zu: %.3f ms per row (256 rows, vocab %d)\n", i,
                time_per_row_ms(logits, kRows, same, 3), kRealVocab);
  }
}

}  // namespace
}  // namespace engine
