// paged_attention against a naive double-precision softmax over each sequence's keys, read
// through a shuffled block table. Cache slots no sequence owns hold NaN, so reading a wrong
// slot fails the test.

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <optional>
#include <random>
#include <stdexcept>
#include <tuple>

#include "backend/cpu/attention.h"
#include "cpu_test_util.h"

namespace engine::test {
namespace {

struct SeqSpec {
  int32_t num_cached;  // context already in the cache before this step
  int32_t num_new;     // new tokens (queries) this step
};

struct AttentionCase {
  int64_t num_q_heads, num_kv_heads, head_dim, block_size;
  std::vector<SeqSpec> seqs;
  std::optional<int> window;
};

struct Batch {
  HostTensor q, k_cache, v_cache, query_start, seq_lens, block_table;
};

Batch make_batch(const AttentionCase& c, std::mt19937& rng) {
  const int64_t num_seqs = c.seqs.size(), dim = c.head_dim, bs = c.block_size;
  int64_t num_t = 0, max_blocks = 1, total_blocks = 1;  // block 0 is the null block
  std::vector<int32_t> starts = {0}, lens;
  for (const SeqSpec& s : c.seqs) {
    num_t += s.num_new;
    starts.push_back(static_cast<int32_t>(num_t));
    lens.push_back(s.num_cached + s.num_new);
    int64_t blocks = (lens.back() + bs - 1) / bs;
    max_blocks = std::max(max_blocks, blocks + 1);  // + 1: a padded column
    total_blocks += blocks;
  }
  total_blocks += 3;  // spare blocks nobody owns
  std::vector<int32_t> pool(total_blocks - 1);
  std::iota(pool.begin(), pool.end(), 1);
  std::shuffle(pool.begin(), pool.end(), rng);
  std::vector<int32_t> table(num_seqs * max_blocks, 0);
  size_t next = 0;
  for (int64_t b = 0; b < num_seqs; ++b)
    for (int64_t i = 0; i < (lens[b] + bs - 1) / bs; ++i) table[b * max_blocks + i] = pool[next++];

  Batch batch{random_f32({num_t, c.num_q_heads, dim}, rng, -3.0f, 3.0f),
              poisoned_f32({total_blocks, bs, c.num_kv_heads, dim}),
              poisoned_f32({total_blocks, bs, c.num_kv_heads, dim}),
              i32_tensor(starts),
              i32_tensor(lens),
              HostTensor(DType::kI32, {num_seqs, max_blocks})};
  std::copy(table.begin(), table.end(), batch.block_table.ptr<int32_t>());
  std::uniform_real_distribution<float> dist(-2.0f, 2.0f);
  const int64_t row = c.num_kv_heads * dim;
  for (int64_t b = 0; b < num_seqs; ++b)
    for (int64_t j = 0; j < lens[b]; ++j) {
      int64_t slot = table[b * max_blocks + j / bs] * bs + j % bs;
      for (int64_t i = 0; i < row; ++i) {
        batch.k_cache.ptr<float>()[slot * row + i] = dist(rng);
        batch.v_cache.ptr<float>()[slot * row + i] = dist(rng);
      }
    }
  return batch;
}

std::vector<double> reference_attention(const AttentionCase& c, const Batch& batch, float scale) {
  const int64_t dim = c.head_dim, bs = c.block_size, hq = c.num_q_heads, hk = c.num_kv_heads;
  const int64_t group = hq / hk, max_blocks = batch.block_table.tensor.size(1);
  const int32_t* table = batch.block_table.ptr<int32_t>();
  std::vector<double> out(batch.q.numel());
  for (size_t b = 0; b < c.seqs.size(); ++b) {
    const int64_t first = batch.query_start.ptr<int32_t>()[b];
    for (int64_t i = 0; i < c.seqs[b].num_new; ++i) {
      const int64_t t = first + i, pos = c.seqs[b].num_cached + i;
      const int64_t lo = c.window ? std::max<int64_t>(0, pos - *c.window + 1) : 0;
      for (int64_t h = 0; h < hq; ++h) {
        const float* q = batch.q.ptr<float>() + (t * hq + h) * dim;
        std::vector<double> scores;
        std::vector<const float*> values;
        for (int64_t j = lo; j <= pos; ++j) {
          int64_t slot = table[b * max_blocks + j / bs] * bs + j % bs;
          const float* k = batch.k_cache.ptr<float>() + (slot * hk + h / group) * dim;
          double s = 0.0;
          for (int64_t d = 0; d < dim; ++d) s += double(q[d]) * k[d];
          scores.push_back(s * scale);
          values.push_back(batch.v_cache.ptr<float>() + (slot * hk + h / group) * dim);
        }
        double max_s = *std::max_element(scores.begin(), scores.end()), sum = 0.0;
        for (double& s : scores) sum += (s = std::exp(s - max_s));
        for (int64_t d = 0; d < dim; ++d) {
          double acc = 0.0;
          for (size_t j = 0; j < scores.size(); ++j) acc += scores[j] * values[j][d];
          out[(t * hq + h) * dim + d] = acc / sum;
        }
      }
    }
  }
  return out;
}

void run_case(const AttentionCase& c, std::mt19937& rng) {
  Batch batch = make_batch(c, rng);
  HostTensor out = poisoned_f32(batch.q.tensor.shape);
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  cpu::paged_attention(out.tensor, batch.q.tensor, batch.k_cache.tensor, batch.v_cache.tensor,
                       batch.query_start.tensor, batch.seq_lens.tensor, batch.block_table.tensor,
                       scale, c.window);
  auto expected = reference_attention(c, batch, scale);
  // Outputs are convex combinations of values in [-2, 2]; fp32 exp/sum error stays << 1e-4.
  EXPECT_LE(worst_error_ratio(out.ptr<float>(), expected, 1e-4, 1e-4), 1.0)
      << "Hq=" << c.num_q_heads << " Hk=" << c.num_kv_heads << " D=" << c.head_dim
      << " block_size=" << c.block_size << " window=" << c.window.value_or(0);
}

// A decode (1 query), a prefill chunk over a cached prefix, a fresh prefill, a long decode.
const std::vector<SeqSpec> kMixedBatch = {{37, 1}, {20, 33}, {0, 7}, {100, 1}};

TEST(CpuAttention, MixedBatchAllGqaRatios) {
  std::mt19937 rng(41);
  for (auto [hq, hk] : {std::pair<int64_t, int64_t>{4, 4}, {8, 2}, {16, 2}, {9, 3}})
    for (int64_t block_size : {16, 5}) run_case({hq, hk, 64, block_size, kMixedBatch, {}}, rng);
}

TEST(CpuAttention, SingleSequenceQueryCounts) {
  std::mt19937 rng(42);
  for (int32_t num_new : {1, 7, 33})
    for (int32_t num_cached : {0, 19}) run_case({8, 1, 32, 16, {{num_cached, num_new}}, {}}, rng);
}

TEST(CpuAttention, LongPrefillSpansManyWorkItems) {
  std::mt19937 rng(43);
  run_case({9, 3, 64, 16, {{45, 300}}, {}}, rng);
  run_case({4, 4, 40, 7, {{0, 150}, {3, 1}}, {}}, rng);
}

TEST(CpuAttention, SlidingWindow) {
  std::mt19937 rng(44);
  for (int window : {1, 8, 17})
    for (auto [hq, hk] : {std::pair<int64_t, int64_t>{4, 4}, {8, 1}})
      run_case({hq, hk, 64, 16, kMixedBatch, window}, rng);
}

// An fp8 cache holding K / k_scale and V / v_scale: attention must equal the fp32 reference over
// exactly the values the fp8 codes stand for, times the scales. Unowned slots hold NaN codes.
TEST(CpuAttention, Fp8CacheReadsStoredValuesTimesScales) {
  std::mt19937 rng(47);
  const KVCacheScales scales{0.75f, 1.5f};
  for (auto [hq, hk, block_size] : {std::tuple<int64_t, int64_t, int64_t>{8, 2, 16}, {9, 3, 5}}) {
    const AttentionCase c{hq, hk, 64, block_size, kMixedBatch, {}};
    Batch batch = make_batch(c, rng);
    for (auto [cache, scale] :
         {std::pair{&batch.k_cache, scales.k}, std::pair{&batch.v_cache, scales.v}}) {
      for (int64_t i = 0; i < cache->numel(); ++i) cache->ptr<float>()[i] /= scale;
    }
    std::vector<float> k_stored, v_stored;
    HostTensor k8 = to_dtype(batch.k_cache, DType::kFP8E4M3, &k_stored);
    HostTensor v8 = to_dtype(batch.v_cache, DType::kFP8E4M3, &v_stored);
    Batch widened = std::move(batch);  // the reference reads exactly what the fp8 codes hold
    for (int64_t i = 0; i < widened.k_cache.numel(); ++i) {
      widened.k_cache.ptr<float>()[i] = k_stored[i] * scales.k;
      widened.v_cache.ptr<float>()[i] = v_stored[i] * scales.v;
    }
    HostTensor out = poisoned_f32(widened.q.tensor.shape);
    const float scale = 0.125f;
    cpu::paged_attention(out.tensor, widened.q.tensor, k8.tensor, v8.tensor,
                         widened.query_start.tensor, widened.seq_lens.tensor,
                         widened.block_table.tensor, scale, std::nullopt, scales);
    // Products with the scales add one fp32 rounding each to the reference's inputs.
    EXPECT_LE(
        worst_error_ratio(out.ptr<float>(), reference_attention(c, widened, scale), 2e-4, 2e-4),
        1.0)
        << "Hq=" << hq << " Hk=" << hk << " block_size=" << block_size;
  }
}

TEST(CpuAttention, RejectsCachesItCannotRead) {
  std::mt19937 rng(48);
  AttentionCase c{4, 2, 16, 4, {{5, 2}}, {}};
  Batch batch = make_batch(c, rng);
  HostTensor out = poisoned_f32(batch.q.tensor.shape);
  std::vector<float> rounded;
  HostTensor k8 = to_dtype(batch.k_cache, DType::kFP8E4M3, &rounded);
  HostTensor k16 = to_dtype(batch.k_cache, DType::kBF16, &rounded);
  auto message = [&](const Tensor& k, const Tensor& v, KVCacheScales scales) {
    try {
      cpu::paged_attention(out.tensor, batch.q.tensor, k, v, batch.query_start.tensor,
                           batch.seq_lens.tensor, batch.block_table.tensor, 0.25f, std::nullopt,
                           scales);
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message(k16.tensor, k16.tensor, {}),
            "paged_attention: k_cache has dtype bfloat16 but must be float32 or float8_e4m3fn");
  EXPECT_EQ(message(k8.tensor, batch.v_cache.tensor, {}),
            "paged_attention: v_cache has dtype float32 but must be float8_e4m3fn");
  EXPECT_EQ(message(k8.tensor, k8.tensor, {0.0f, 1.0f}),
            "paged_attention: scales.k is 0.000000 but must be positive and finite, with a finite "
            "reciprocal");
}

TEST(CpuAttention, RejectsInconsistentMetadata) {
  std::mt19937 rng(45);
  AttentionCase c{4, 2, 16, 4, {{5, 2}}, {}};
  Batch batch = make_batch(c, rng);
  HostTensor out = poisoned_f32(batch.q.tensor.shape);
  auto call = [&](Tensor seq_lens, Tensor table) {
    cpu::paged_attention(out.tensor, batch.q.tensor, batch.k_cache.tensor, batch.v_cache.tensor,
                         batch.query_start.tensor, seq_lens, table, 0.25f, std::nullopt);
  };
  HostTensor too_long = i32_tensor({100});  // needs more blocks than the table has columns
  EXPECT_THROW(call(too_long.tensor, batch.block_table.tensor), std::invalid_argument);
  HostTensor too_short = i32_tensor({1});  // fewer context tokens than new tokens
  EXPECT_THROW(call(too_short.tensor, batch.block_table.tensor), std::invalid_argument);
  HostTensor bad_table(DType::kI32, batch.block_table.tensor.shape);
  std::fill(bad_table.ptr<int32_t>(), bad_table.ptr<int32_t>() + bad_table.numel(), 999);
  EXPECT_THROW(call(batch.seq_lens.tensor, bad_table.tensor), std::invalid_argument);
  HostTensor odd_q = random_f32({2, 3, 16}, rng);  // 3 heads over 2 kv heads
  HostTensor odd_out = poisoned_f32({2, 3, 16});
  EXPECT_THROW(
      cpu::paged_attention(odd_out.tensor, odd_q.tensor, batch.k_cache.tensor, batch.v_cache.tensor,
                           batch.query_start.tensor, batch.seq_lens.tensor,
                           batch.block_table.tensor, 0.25f, std::nullopt),
      std::invalid_argument);
}

// Timing, not a correctness test: SmolLM2-135M attention (9 q / 3 kv heads, D 64) for one
// layer, decode of B sequences at a 512-token context and one 512-token prefill.
TEST(CpuAttention, DISABLED_Benchmark) {
  std::mt19937 rng(46);
  for (auto [num_seqs, num_cached, num_new] :
       {std::tuple{1, 511, 1}, std::tuple{8, 511, 1}, std::tuple{1, 0, 512}}) {
    AttentionCase c{9, 3, 64, 16, std::vector<SeqSpec>(num_seqs, {num_cached, num_new}), {}};
    Batch batch = make_batch(c, rng);
    HostTensor out = poisoned_f32(batch.q.tensor.shape);
    double best = 1e30;
    for (int r = 0; r < 20; ++r) {
      auto start = std::chrono::steady_clock::now();
      cpu::paged_attention(out.tensor, batch.q.tensor, batch.k_cache.tensor, batch.v_cache.tensor,
                           batch.query_start.tensor, batch.seq_lens.tensor,
                           batch.block_table.tensor, 0.125f, std::nullopt);
      best = std::min(
          best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    std::printf("attention B=%d cached=%d new=%d: %.1f us per layer\n", num_seqs, num_cached,
                num_new, best * 1e6);
  }
}

}  // namespace
}  // namespace engine::test
