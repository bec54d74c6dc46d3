// The GPU sampler against the CPU Sampler (the spec): for rows of random logits and every
// setting, the same token for the same rows and draws, logprobs within 1e-4 and equal ranks.
// Logits are made distinct, so a mismatch can only come from a tie that the penalties or the
// temperature create; such a token is accepted when the CPU's processed logit for it equals
// the CPU's own pick (equal probability). Rows with a logit_bias are mixed with rows without.
// Also: reproducible across batch positions, input left unchanged, two launches outstanding,
// the hand-off of sampled ids, prompt scoring against score_tokens, and one timing line for
// batch 64 at vocab 128,256.

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "cuda_test_util.h"
#include "runtime/sampler.h"
#include "sampling/sampler.h"

namespace engine::test {
namespace {

constexpr double kLogprobTol = 1e-4;
const int kVocabs[] = {1000, 128256};
const int kBatches[] = {1, 7, 64};

// Normal logits of standard deviation `scale`, nudged apart so no two are equal. With
// `quantise`, rounded to halves instead: many exact ties, for the tie-breaking paths.
std::vector<float> random_logits(int num_rows, int vocab_size, std::mt19937& rng, float scale,
                                 bool quantise = false) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> logits(static_cast<size_t>(num_rows) * vocab_size);
  std::vector<std::pair<float, int>> sorted(vocab_size);
  for (int r = 0; r < num_rows; ++r) {
    float* row = logits.data() + static_cast<size_t>(r) * vocab_size;
    for (int i = 0; i < vocab_size; ++i) {
      row[i] = quantise ? std::round(normal(rng) * 2.0f) / 2.0f : normal(rng);
    }
    if (quantise) continue;
    for (int i = 0; i < vocab_size; ++i) sorted[i] = {row[i], i};
    std::sort(sorted.begin(), sorted.end());
    for (int i = 1; i < vocab_size; ++i) {  // equal neighbours move up by one ulp
      float& v = row[sorted[i].second];
      const float previous = row[sorted[i - 1].second];
      if (v <= previous) v = std::nextafter(previous, INFINITY);
    }
  }
  return logits;
}

struct Setting {
  std::string name;
  SamplingParams params;
  bool penalties_history = false;  // give the rows prompt and output ids
  bool masked = false;
  bool logit_bias = false;  // give every other row its own params with a logit_bias
};

SamplingParams make_params(float temperature, int top_k, float top_p, float min_p) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_k = top_k;
  p.top_p = top_p;
  p.min_p = min_p;
  return p;
}

std::vector<Setting> settings() {
  std::vector<Setting> out;
  out.push_back({"greedy", make_params(0.0f, 0, 1.0f, 0.0f)});
  out.push_back({"temperature", make_params(0.7f, 0, 1.0f, 0.0f)});
  out.push_back({"top_k", make_params(1.0f, 50, 1.0f, 0.0f)});
  out.push_back({"top_p", make_params(1.0f, 0, 0.9f, 0.0f)});
  out.push_back({"min_p", make_params(1.2f, 0, 1.0f, 0.05f)});
  out.push_back({"all_three", make_params(0.8f, 40, 0.8f, 0.02f)});
  SamplingParams penalised = make_params(0.9f, 100, 0.95f, 0.0f);
  penalised.repetition_penalty = 1.3f;
  penalised.frequency_penalty = 0.4f;
  penalised.presence_penalty = 0.6f;
  out.push_back({"penalties", penalised, true});
  SamplingParams penalised_greedy = penalised;
  penalised_greedy.temperature = 0.0f;
  out.push_back({"penalties_greedy", penalised_greedy, true});
  out.push_back({"masked", make_params(1.0f, 0, 1.0f, 0.0f), false, true});
  out.push_back({"masked_greedy", make_params(0.0f, 0, 1.0f, 0.0f), false, true});
  // Biased rows mixed with unbiased ones; in a greedy batch the unbiased rows alone would take
  // the argmax fast path.
  out.push_back({"bias", make_params(0.9f, 40, 0.9f, 0.0f), false, true, true});
  out.push_back({"bias_greedy", make_params(0.0f, 0, 1.0f, 0.0f), false, false, true});
  out.push_back({"bias_penalties", penalised, true, false, true});
  return out;
}

// Rows own their token ids and, when biased, their params; SamplingRow points into them.
struct Batch {
  std::vector<std::vector<int>> prompts, outputs;
  std::vector<SamplingParams> row_params;  // sized once, so the rows' pointers stay valid
  std::vector<SamplingRow> rows;
};

// A bias on the row's best token (-100 or a small push down), a push up for a random token that
// often makes it the pick, and a few random biases over the whole range.
std::map<int, float> random_logit_bias(const float* row, int vocab_size, std::mt19937& rng) {
  std::uniform_int_distribution<int> id(0, vocab_size - 1);
  std::uniform_real_distribution<float> any(-100.0f, 100.0f), push(4.0f, 12.0f);
  std::map<int, float> bias;
  for (int j = 0; j < 3; ++j) bias[id(rng)] = any(rng);
  bias[id(rng)] = push(rng);
  const int best = static_cast<int>(std::max_element(row, row + vocab_size) - row);
  bias[best] = rng() % 2 ? -100.0f : -push(rng) / 4.0f;
  return bias;
}

Batch make_batch(int num_rows, int vocab_size, const Setting& s, const SamplingParams& params,
                 const std::vector<float>& logits, std::mt19937& rng) {
  Batch b;
  b.prompts.resize(num_rows);
  b.outputs.resize(num_rows);
  b.row_params.assign(num_rows, params);
  std::uniform_int_distribution<int> id(0, vocab_size - 1);
  std::uniform_int_distribution<int> length(0, 40);
  for (int r = 0; r < num_rows; ++r) {
    const int num_output = length(rng);  // also the output index of the draw
    if (s.penalties_history) {
      for (int j = length(rng); j > 0; --j) b.prompts[r].push_back(id(rng));
      // Repeats, and the row's best tokens, so the penalties change the outcome.
      for (int j = 0; j < num_output; ++j) b.outputs[r].push_back(j % 3 == 0 ? id(rng) : j % 7);
      const float* row = logits.data() + static_cast<size_t>(r) * vocab_size;
      b.outputs[r].push_back(static_cast<int>(std::max_element(row, row + vocab_size) - row));
    } else {
      b.outputs[r].assign(num_output, 0);
    }
  }
  for (int r = 0; r < num_rows; ++r) {
    SamplingRow row;
    row.params = &params;
    if (s.logit_bias && r % 2 == (num_rows > 1 ? 1 : 0)) {
      const float* x = logits.data() + static_cast<size_t>(r) * vocab_size;
      b.row_params[r].logit_bias = random_logit_bias(x, vocab_size, rng);
      row.params = &b.row_params[r];
    }
    row.prompt_token_ids = b.prompts[r];
    row.output_token_ids = b.outputs[r];
    row.seed = rng();
    if (s.masked) {
      const float* x = logits.data() + static_cast<size_t>(r) * vocab_size;
      row.masked_token_ids = {static_cast<int>(std::max_element(x, x + vocab_size) - x), id(rng),
                              id(rng)};
    }
    b.rows.push_back(std::move(row));
  }
  return b;
}

DeviceTensor upload(const std::vector<float>& logits, int num_rows, int vocab_size) {
  return DeviceTensor::from_host(f32_tensor(logits, {num_rows, vocab_size}));
}

// Compares row by row; `processed` holds the CPU's logits after sampling (penalised, scaled).
void expect_same(const std::vector<SampleResult>& gpu, const std::vector<SampleResult>& cpu,
                 const std::vector<float>& processed, int vocab_size) {
  ASSERT_EQ(gpu.size(), cpu.size());
  for (size_t r = 0; r < cpu.size(); ++r) {
    SCOPED_TRACE(testing::Message() << "row " << r);
    const float* x = processed.data() + r * vocab_size;
    const bool same = gpu[r].token_id == cpu[r].token_id;
    if (!same) {
      ASSERT_GE(gpu[r].token_id, 0);
      ASSERT_LT(gpu[r].token_id, vocab_size);
      EXPECT_EQ(x[gpu[r].token_id], x[cpu[r].token_id])
          << "GPU token " << gpu[r].token_id << " but CPU token " << cpu[r].token_id;
    }
    ASSERT_EQ(gpu[r].logprobs.has_value(), cpu[r].logprobs.has_value());
    if (!cpu[r].logprobs) continue;
    const TokenLogprobs& g = *gpu[r].logprobs;
    const TokenLogprobs& c = *cpu[r].logprobs;
    if (same) {
      EXPECT_EQ(g.rank, c.rank);
      EXPECT_NEAR(g.logprob, c.logprob, kLogprobTol);
    }
    ASSERT_EQ(g.top.size(), c.top.size());
    for (size_t j = 0; j < c.top.size(); ++j) {
      EXPECT_EQ(g.top[j].first, c.top[j].first) << "top " << j;
      EXPECT_NEAR(g.top[j].second, c.top[j].second, kLogprobTol) << "top " << j;
    }
  }
}

class CudaSampling : public CudaTest {};

// A logic_error of exactly that type (not one of its subclasses, invalid_argument or
// out_of_range) whose message holds `what`.
template <typename Call>
void expect_logic_error(Call call, const std::string& what) {
  try {
    call();
    ADD_FAILURE() << "no error; expected one about \"" << what << "\"";
  } catch (const std::invalid_argument& error) {
    ADD_FAILURE() << "invalid_argument: " << error.what();
  } catch (const std::out_of_range& error) {
    ADD_FAILURE() << "out_of_range: " << error.what();
  } catch (const std::logic_error& error) {
    EXPECT_NE(std::string(error.what()).find(what), std::string::npos) << error.what();
  }
}

void run_settings(bool quantise) {
  std::mt19937 rng(quantise ? 11 : 7);
  cuda::GpuSampler gpu_sampler(8, 1000);  // smaller than the cases: exercises growing
  Sampler cpu_sampler;
  const std::optional<int> kLogprobs[] = {std::nullopt, 0, 5, 20};
  for (int vocab_size : kVocabs) {
    for (int num_rows : kBatches) {
      for (const Setting& s : settings()) {
        for (std::optional<int> logprobs : kLogprobs) {
          if (vocab_size > 1000 && num_rows == 64 && logprobs == 0) continue;  // CPU time
          SCOPED_TRACE(testing::Message()
                       << s.name << " V=" << vocab_size << " S=" << num_rows
                       << " logprobs=" << logprobs.value_or(-1) << (quantise ? " quantised" : ""));
          SamplingParams params = s.params;
          params.logprobs = logprobs;
          std::vector<float> logits = random_logits(num_rows, vocab_size, rng, 3.0f, quantise);
          const Batch batch = make_batch(num_rows, vocab_size, s, params, logits, rng);
          DeviceTensor device = upload(logits, num_rows, vocab_size);
          const auto gpu = gpu_sampler.sample(device.tensor, batch.rows, nullptr);
          if (s.name == "penalties") {  // the input is left unchanged
            std::vector<uint8_t> after = device.bytes();
            EXPECT_EQ(std::memcmp(after.data(), logits.data(), after.size()), 0);
          }
          const auto cpu = cpu_sampler.sample(logits.data(), vocab_size, batch.rows);
          expect_same(gpu, cpu, logits, vocab_size);
        }
      }
    }
  }
}

TEST_F(CudaSampling, MatchesCpuSampler) { run_settings(false); }

TEST_F(CudaSampling, MatchesCpuSamplerWithTiedLogits) { run_settings(true); }

// A row's token depends on its logits, params, history and seed only: the same row at three
// positions of a batch of 64 (other rows random) gives the token it gives alone.
TEST_F(CudaSampling, SeededReproducibleAcrossBatchPositions) {
  std::mt19937 rng(3);
  constexpr int kVocab = 128256, kRows = 64;
  cuda::GpuSampler sampler(kRows, kVocab);
  const SamplingParams params = make_params(1.0f, 0, 0.9f, 0.0f);
  const Setting setting{"top_p", params};
  for (int trial = 0; trial < 4; ++trial) {
    std::vector<float> logits = random_logits(kRows, kVocab, rng, 2.0f);
    Batch batch = make_batch(kRows, kVocab, setting, params, logits, rng);
    const std::vector<float> one(logits.begin(), logits.begin() + kVocab);
    DeviceTensor single = upload(one, 1, kVocab);
    Batch alone = make_batch(1, kVocab, setting, params, one, rng);
    alone.rows[0].seed = 1234 + trial;
    alone.outputs[0].assign(trial * 5, 0);
    alone.rows[0].output_token_ids = alone.outputs[0];
    const int expected = sampler.sample(single.tensor, alone.rows, nullptr)[0].token_id;
    for (int pos : {0, 5, 63}) {
      std::copy(one.begin(), one.end(), logits.begin() + static_cast<size_t>(pos) * kVocab);
      batch.rows[pos].seed = alone.rows[0].seed;
      batch.rows[pos].output_token_ids = alone.rows[0].output_token_ids;
    }
    DeviceTensor device = upload(logits, kRows, kVocab);
    const auto results = sampler.sample(device.tensor, batch.rows, nullptr);
    for (int pos : {0, 5, 63}) EXPECT_EQ(results[pos].token_id, expected) << "position " << pos;
  }
}

// Async scheduling keeps two launches outstanding: each has its own uploads and results, and
// collect() returns them oldest first, as sample() alone gives them.
TEST_F(CudaSampling, TwoOutstandingLaunchesCollectOldestFirst) {
  std::mt19937 rng(21);
  constexpr int kVocab = 32000, kRows = 7;
  cuda::GpuSampler sampler(kRows, kVocab);
  SamplingParams params = make_params(0.8f, 40, 0.9f, 0.0f);
  params.logprobs = 3;
  const Setting setting{"all", params};
  std::vector<float> logits_a = random_logits(kRows, kVocab, rng, 3.0f);
  std::vector<float> logits_b = random_logits(kRows, kVocab, rng, 3.0f);
  const Batch a = make_batch(kRows, kVocab, setting, params, logits_a, rng);
  const Batch b = make_batch(kRows, kVocab, setting, params, logits_b, rng);
  DeviceTensor device_a = upload(logits_a, kRows, kVocab);
  DeviceTensor device_b = upload(logits_b, kRows, kVocab);
  const auto alone_a = sampler.sample(device_a.tensor, a.rows, nullptr);
  const auto alone_b = sampler.sample(device_b.tensor, b.rows, nullptr);

  sampler.launch(device_a.tensor, a.rows, nullptr);
  sampler.launch(device_b.tensor, b.rows, nullptr);
  expect_logic_error([&] { sampler.launch(device_a.tensor, a.rows, nullptr); }, "outstanding");
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const auto got_a = sampler.collect();
  const auto got_b = sampler.collect();
  expect_logic_error([&] { sampler.collect(); }, "every launch has been collected");
  ASSERT_EQ(got_a.size(), alone_a.size());
  for (int r = 0; r < kRows; ++r) {
    EXPECT_EQ(got_a[r].token_id, alone_a[r].token_id) << "row " << r;
    EXPECT_EQ(got_b[r].token_id, alone_b[r].token_id) << "row " << r;
    EXPECT_EQ(got_a[r].logprobs->top, alone_a[r].logprobs->top) << "row " << r;
    EXPECT_EQ(got_b[r].logprobs->top, alone_b[r].logprobs->top) << "row " << r;
  }
}

// The ids of the latest launch land in the next step's input ids on the device, untouched
// elsewhere: greedy rows whose argmax is known.
TEST_F(CudaSampling, WriteSampledIdsPutsTheLatestIdsIntoInputIds) {
  constexpr int kVocab = 5000, kRows = 5, kTokens = 11;
  cuda::GpuSampler sampler(kRows, kVocab);
  std::vector<float> logits(static_cast<size_t>(kRows) * kVocab, 0.0f);
  const int best[kRows] = {17, 4999, 0, 2500, 123};
  for (int r = 0; r < kRows; ++r) logits[static_cast<size_t>(r) * kVocab + best[r]] = 5.0f;
  const SamplingParams greedy = make_params(0.0f, 0, 1.0f, 0.0f);
  std::vector<SamplingRow> rows(kRows);
  for (SamplingRow& row : rows) row.params = &greedy;
  DeviceTensor device_logits = upload(logits, kRows, kVocab);
  sampler.launch(device_logits.tensor, rows, nullptr);

  std::vector<int32_t> ids(kTokens);
  for (int t = 0; t < kTokens; ++t) ids[t] = -1 - t;       // poison
  const std::vector<int32_t> pairs = {3, 1, 10, 4, 0, 0};  // (t, row)
  DeviceTensor device_ids(DType::kI32, {kTokens});
  DeviceTensor device_pairs(DType::kI32, {3, 2});
  ASSERT_EQ(cudaMemcpy(device_ids.tensor.data, ids.data(), ids.size() * 4, cudaMemcpyDefault),
            cudaSuccess);
  ASSERT_EQ(cudaMemcpy(device_pairs.tensor.data, pairs.data(), pairs.size() * 4, cudaMemcpyDefault),
            cudaSuccess);
  sampler.write_sampled_ids(device_ids.tensor, device_pairs.tensor, nullptr);
  std::vector<int32_t> after(kTokens);
  ASSERT_EQ(cudaMemcpy(after.data(), device_ids.tensor.data, after.size() * 4, cudaMemcpyDefault),
            cudaSuccess);
  for (int t = 0; t < kTokens; ++t) {
    const int32_t expected = t == 3 ? best[1] : t == 10 ? best[4] : t == 0 ? best[0] : -1 - t;
    EXPECT_EQ(after[t], expected) << "t " << t;
  }
  EXPECT_EQ(sampler.collect()[3].token_id, best[3]);
}

// Async scheduling: a row's last output may still be sampled by the previous launch. Its
// penalties count it where that launch left it, as if it were in output_token_ids.
TEST_F(CudaSampling, PenaltiesCountAPendingOutputOfThePreviousLaunch) {
  std::mt19937 rng(33);
  constexpr int kVocab = 4000, kRows = 6;
  cuda::GpuSampler sampler(kRows, kVocab);
  std::vector<float> logits_a(static_cast<size_t>(kRows) * kVocab, 0.0f);
  int best[kRows];
  for (int r = 0; r < kRows; ++r) {
    best[r] = static_cast<int>(rng() % kVocab);
    logits_a[static_cast<size_t>(r) * kVocab + best[r]] = 5.0f;
  }
  const SamplingParams greedy = make_params(0.0f, 0, 1.0f, 0.0f);
  std::vector<SamplingRow> rows_a(kRows);
  for (SamplingRow& row : rows_a) row.params = &greedy;
  DeviceTensor device_a = upload(logits_a, kRows, kVocab);

  // Each row of B favours the token its pending output (from A's mirrored row) repeats, so
  // the penalties decide the pick; odd rows sample, seeded.
  SamplingParams penalised = make_params(0.0f, 0, 1.0f, 0.0f);
  penalised.repetition_penalty = 2.0f;
  penalised.presence_penalty = 3.0f;
  SamplingParams penalised_sampled = penalised;
  penalised_sampled.temperature = 0.7f;
  std::vector<float> logits_b = random_logits(kRows, kVocab, rng, 1.0f);
  std::vector<std::vector<int>> outputs(kRows), full(kRows);
  std::vector<SamplingRow> pending_rows(kRows), full_rows(kRows);
  for (int r = 0; r < kRows; ++r) {
    const int from = kRows - 1 - r;
    logits_b[static_cast<size_t>(r) * kVocab + best[from]] = 6.0f;
    outputs[r] = {static_cast<int>(rng() % kVocab), static_cast<int>(rng() % kVocab)};
    full[r] = outputs[r];
    full[r].push_back(best[from]);
    for (auto* rows : {&pending_rows, &full_rows}) {
      SamplingRow& row = (*rows)[r];
      row.params = r % 2 ? &penalised_sampled : &penalised;
      row.seed = 100 + r;
    }
    pending_rows[r].output_token_ids = outputs[r];
    pending_rows[r].num_pending_outputs = 1;
    pending_rows[r].pending_row = from;
    full_rows[r].output_token_ids = full[r];
  }
  DeviceTensor device_b = upload(logits_b, kRows, kVocab);
  // Refused launches count nothing: a pending output with no launch before it, then one from a
  // row the launch before does not have. The collects below still read A, then B.
  expect_logic_error([&] { sampler.launch(device_b.tensor, pending_rows, nullptr); },
                     "nothing was launched");
  sampler.launch(device_a.tensor, rows_a, nullptr);
  std::vector<SamplingRow> bad_rows = pending_rows;
  bad_rows[0].pending_row = kRows;
  EXPECT_THROW(sampler.launch(device_b.tensor, bad_rows, nullptr), std::out_of_range);
  sampler.launch(device_b.tensor, pending_rows, nullptr);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<SampleResult> got_a = sampler.collect();
  for (int r = 0; r < kRows; ++r) EXPECT_EQ(got_a[r].token_id, best[r]) << "row " << r;
  const std::vector<SampleResult> got = sampler.collect();
  expect_logic_error([&] { sampler.collect(); }, "every launch has been collected");
  std::vector<float> processed = logits_b;
  const std::vector<SampleResult> want =
      Sampler().sample(processed.data(), kVocab, full_rows);  // the CPU spec
  for (int r = 0; r < kRows; ++r) {
    EXPECT_EQ(got[r].token_id, want[r].token_id) << "row " << r;
    if (r % 2 == 0) EXPECT_NE(got[r].token_id, best[kRows - 1 - r]) << "row " << r;
  }
}

void expect_same_scores(const std::vector<TokenLogprobs>& got,
                        const std::vector<TokenLogprobs>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t r = 0; r < want.size(); ++r) {
    SCOPED_TRACE(testing::Message() << "row " << r);
    EXPECT_EQ(got[r].token_id, want[r].token_id);
    EXPECT_EQ(got[r].rank, want[r].rank);
    EXPECT_NEAR(got[r].logprob, want[r].logprob, kLogprobTol);
    ASSERT_EQ(got[r].top.size(), want[r].top.size());
    for (size_t j = 0; j < want[r].top.size(); ++j) {
      EXPECT_EQ(got[r].top[j].first, want[r].top[j].first) << "top " << j;
      EXPECT_NEAR(got[r].top[j].second, want[r].top[j].second, kLogprobTol) << "top " << j;
    }
  }
}

// -0 and +0 are equal on the CPU, so a row whose best logits are zeros of both signs ties them:
// greedy takes the smaller id (of either sign), and the top logprobs list them by id.
TEST_F(CudaSampling, SignedZerosTieAsOnTheCpu) {
  constexpr int kVocab = 1000;
  std::mt19937 rng(5);
  std::vector<float> logits(2 * kVocab);
  for (float& v : logits) v = -1.0f - static_cast<float>(rng() % 1000) / 100.0f;
  logits[17] = 0.0f;  // row 0: +0 first
  logits[400] = -0.0f;
  logits[kVocab + 30] = -0.0f;  // row 1: -0 first
  logits[kVocab + 600] = 0.0f;
  SamplingParams greedy = make_params(0.0f, 0, 1.0f, 0.0f);
  greedy.logprobs = 3;
  std::vector<SamplingRow> rows(2);
  for (SamplingRow& row : rows) row.params = &greedy;
  DeviceTensor device = upload(logits, 2, kVocab);
  cuda::GpuSampler sampler(2, kVocab);
  const std::vector<SampleResult> got = sampler.sample(device.tensor, rows, nullptr);
  std::vector<float> processed = logits;
  const std::vector<SampleResult> want = Sampler().sample(processed.data(), kVocab, rows);
  for (int r = 0; r < 2; ++r) {
    SCOPED_TRACE(testing::Message() << "row " << r);
    EXPECT_EQ(got[r].token_id, r == 0 ? 17 : 30);
    EXPECT_EQ(got[r].token_id, want[r].token_id);
    ASSERT_TRUE(got[r].logprobs.has_value() && want[r].logprobs.has_value());
    ASSERT_EQ(got[r].logprobs->top.size(), want[r].logprobs->top.size());
    for (size_t j = 0; j < want[r].logprobs->top.size(); ++j) {
      EXPECT_EQ(got[r].logprobs->top[j].first, want[r].logprobs->top[j].first) << "top " << j;
    }
  }
}

// Prompt logprobs on the device against score_tokens (the CPU spec): random targets (a row's
// best and worst tokens among them) and every top-N from 0 to 20, on distinct and on tied
// logits, with two launches outstanding; then the arguments it refuses.
TEST_F(CudaSampling, ScoresMatchTheCpuSpec) {
  std::mt19937 rng(17);
  cuda::GpuSampler sampler(4, 1000);
  for (int vocab_size : kVocabs) {
    for (bool quantise : {false, true}) {
      SCOPED_TRACE(testing::Message() << "V=" << vocab_size << (quantise ? " quantised" : ""));
      constexpr int kRows = 37;
      std::vector<float> logits[2];
      std::vector<int> targets[2], num_top[2];
      std::vector<DeviceTensor> device;
      for (int k = 0; k < 2; ++k) {
        logits[k] = random_logits(kRows, vocab_size, rng, 3.0f, quantise);
        for (int r = 0; r < kRows; ++r) {
          const float* row = logits[k].data() + static_cast<size_t>(r) * vocab_size;
          const int pick =
              r % 3 == 0   ? static_cast<int>(std::max_element(row, row + vocab_size) - row)
              : r % 3 == 1 ? static_cast<int>(std::min_element(row, row + vocab_size) - row)
                           : static_cast<int>(rng() % vocab_size);
          targets[k].push_back(pick);
          num_top[k].push_back((r + 7 * k) % (SamplingParams::kMaxLogprobs + 1));
        }
        device.push_back(upload(logits[k], kRows, vocab_size));
      }
      sampler.launch_scores(device[0].tensor, targets[0], num_top[0], nullptr);
      sampler.launch_scores(device[1].tensor, targets[1], num_top[1], nullptr);
      expect_logic_error(
          [&] { sampler.launch_scores(device[0].tensor, targets[0], num_top[0], nullptr); },
          "outstanding");
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      for (int k = 0; k < 2; ++k) {
        SCOPED_TRACE(testing::Message() << "launch " << k);
        expect_same_scores(sampler.collect_scores(),
                           score_tokens(logits[k].data(), vocab_size, targets[k], num_top[k]));
      }
      expect_logic_error([&] { sampler.collect_scores(); }, "has been collected");
    }
  }
  // A vocabulary smaller than the top-N asked (clamped, as on the CPU), over more rows than
  // before (the slots grow).
  {
    constexpr int kRows = 300, kVocab = 7;
    std::vector<float> logits = random_logits(kRows, kVocab, rng, 2.0f);
    std::vector<int> targets(kRows), num_top(kRows, SamplingParams::kMaxLogprobs);
    for (int r = 0; r < kRows; ++r) targets[r] = r % kVocab;
    DeviceTensor device = upload(logits, kRows, kVocab);
    sampler.launch_scores(device.tensor, targets, num_top, nullptr);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const std::vector<TokenLogprobs> got = sampler.collect_scores();
    const std::vector<TokenLogprobs> want = score_tokens(logits.data(), kVocab, targets, num_top);
    ASSERT_EQ(got.size(), want.size());
    for (int r = 0; r < kRows; ++r) {
      EXPECT_EQ(got[r].rank, want[r].rank) << "row " << r;
      ASSERT_EQ(got[r].top.size(), static_cast<size_t>(kVocab)) << "row " << r;
      for (int j = 0; j < kVocab; ++j) EXPECT_EQ(got[r].top[j].first, want[r].top[j].first);
    }
  }
  std::vector<float> logits = random_logits(2, 1000, rng, 1.0f);
  DeviceTensor device = upload(logits, 2, 1000);
  const std::vector<int> ids = {1, 2}, bad_ids = {1, 1000}, tops = {0, 20}, bad_tops = {0, 21};
  EXPECT_THROW(sampler.launch_scores(device.tensor, bad_ids, tops, nullptr), std::invalid_argument);
  EXPECT_THROW(sampler.launch_scores(device.tensor, ids, bad_tops, nullptr), std::invalid_argument);
  EXPECT_THROW(sampler.launch_scores(device.tensor, std::span(ids).first(1), tops, nullptr),
               std::invalid_argument);
}

// A sampler built for N scored rows holds buffers for two outstanding launch_scores of N rows at
// the most logprobs (the runner's prompt-logprob cap): scoring them allocates nothing more. One
// row past N grows the slot, and is still scored right.
TEST_F(CudaSampling, ReservedScoreRowsNeedNoAllocation) {
  constexpr int kScoreRows = 96, kVocab = 1000;
  std::mt19937 rng(23);
  cuda::GpuSampler sampler(4, kVocab, kScoreRows);
  const size_t reserved = sampler.held_device_bytes();
  for (int num_rows : {kScoreRows, kScoreRows + 1}) {
    SCOPED_TRACE(testing::Message() << "rows " << num_rows);
    std::vector<float> logits[2];
    std::vector<int> targets[2];
    const std::vector<int> num_top(num_rows, SamplingParams::kMaxLogprobs);
    std::vector<DeviceTensor> device;
    for (int k = 0; k < 2; ++k) {
      logits[k] = random_logits(num_rows, kVocab, rng, 2.0f);
      for (int r = 0; r < num_rows; ++r) targets[k].push_back(static_cast<int>(rng() % kVocab));
      device.push_back(upload(logits[k], num_rows, kVocab));
      sampler.launch_scores(device[k].tensor, targets[k], num_top, nullptr);
    }
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    for (int k = 0; k < 2; ++k) {
      expect_same_scores(sampler.collect_scores(),
                         score_tokens(logits[k].data(), kVocab, targets[k], num_top));
    }
    if (num_rows == kScoreRows) {
      EXPECT_EQ(sampler.held_device_bytes(), reserved);
    } else {
      EXPECT_GT(sampler.held_device_bytes(), reserved);
    }
  }
  EXPECT_THROW(cuda::GpuSampler(4, kVocab, -1), std::invalid_argument);
}

// Host-measured time per call (uploads, kernel, the result copy and the stream sync).
double time_per_call_us(cuda::GpuSampler& sampler, const Tensor& logits,
                        const std::vector<SamplingRow>& rows) {
  for (int i = 0; i < 5; ++i) sampler.sample(logits, rows, nullptr);
  constexpr int kIters = 50;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < kIters; ++i) sampler.sample(logits, rows, nullptr);
  const auto end = std::chrono::steady_clock::now();
  return std::chrono::duration<double, std::micro>(end - start).count() / kIters;
}

TEST_F(CudaSampling, TimingBatch64Vocab128k) {
  std::mt19937 rng(5);
  constexpr int kVocab = 128256, kRows = 64;
  cuda::GpuSampler sampler(kRows, kVocab);
  std::vector<float> logits = random_logits(kRows, kVocab, rng, 3.0f);
  DeviceTensor device = upload(logits, kRows, kVocab);
  const Setting filtered{"top_p_top_k", make_params(1.0f, 50, 0.9f, 0.0f)};
  const Setting greedy{"greedy", make_params(0.0f, 0, 1.0f, 0.0f)};
  const Batch a = make_batch(kRows, kVocab, filtered, filtered.params, logits, rng);
  const Batch b = make_batch(kRows, kVocab, greedy, greedy.params, logits, rng);
  const double filtered_us = time_per_call_us(sampler, device.tensor, a.rows);
  const double greedy_us = time_per_call_us(sampler, device.tensor, b.rows);
  std::printf(
      "GpuSampler batch 64, vocab 128256 (%s): top_p 0.9 + top_k 50: %.1f us/call, "
      "greedy: %.1f us/call\n",
      cuda::cuda_device_name(0).c_str(), filtered_us, greedy_us);
}

}  // namespace
}  // namespace engine::test
