// rope_and_cache against a naive double-precision split of the fused qkv rows, per-head RMSNorm
// (Qwen3's q/k norm), neox rotation and cache write. q_out and both caches start NaN-poisoned:
// every q_out element must be written, and cache slots no token maps to must keep their poison.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <stdexcept>

#include "backend/cpu/rope_cache.h"
#include "cpu_test_util.h"

namespace engine::test {
namespace {

constexpr int64_t kMaxPos = 300;
constexpr float kEps = 1e-6f;
// The kernel computes in fp32 and the reference in double: a few fp32 roundings apart.
constexpr double kTol = 1e-5;

struct RopeCase {
  int64_t num_t, num_q_heads, num_kv_heads, head_dim, block_size, num_blocks;
  bool qk_norm;
};

struct RopeInputs {
  HostTensor qkv, cos_sin, q_norm, k_norm;
  std::vector<int32_t> positions, slots;
};

HostTensor random_table(int64_t dim, std::mt19937& rng) {
  HostTensor cos_sin(DType::kF32, {kMaxPos, dim});
  std::uniform_real_distribution<float> angle(-3.14f, 3.14f);
  for (int64_t p = 0; p < kMaxPos; ++p)
    for (int64_t i = 0; i < dim / 2; ++i) {
      float a = angle(rng);
      cos_sin.ptr<float>()[p * dim + i] = std::cos(a);
      cos_sin.ptr<float>()[p * dim + dim / 2 + i] = std::sin(a);
    }
  return cos_sin;
}

// Slots of distinct shuffled blocks, in shuffled offsets: no two tokens share one, and a
// sequence's tokens land in non-contiguous blocks. Token 1 is padding (-1) when T > 2.
std::vector<int32_t> scattered_slots(const RopeCase& c, std::mt19937& rng) {
  std::vector<int32_t> slots(c.num_blocks * c.block_size);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  slots.resize(c.num_t);
  if (c.num_t > 2) slots[1] = -1;
  return slots;
}

RopeInputs make_inputs(const RopeCase& c, std::mt19937& rng) {
  const int64_t width = (c.num_q_heads + 2 * c.num_kv_heads) * c.head_dim;
  RopeInputs in{random_f32({c.num_t, width}, rng, -2.0f, 2.0f),
                random_table(c.head_dim, rng),
                random_f32({c.head_dim}, rng, 0.5f, 1.5f),
                random_f32({c.head_dim}, rng, 0.5f, 1.5f),
                {},
                scattered_slots(c, rng)};
  for (int64_t t = 0; t < c.num_t; ++t) in.positions.push_back(rng() % kMaxPos);
  return in;
}

// One head of qkv row `row`, normed by `weight` (if any) and rotated, in double.
std::vector<double> reference_head(const float* head, int64_t dim, const float* weight,
                                   const float* cs) {
  std::vector<double> x(head, head + dim);
  if (weight) {
    double sum_squares = 0.0;
    for (double v : x) sum_squares += v * v;
    const double inv_rms = 1.0 / std::sqrt(sum_squares / dim + kEps);
    for (int64_t d = 0; d < dim; ++d) x[d] = x[d] * inv_rms * weight[d];
  }
  const int64_t half = dim / 2;
  std::vector<double> out(dim);
  for (int64_t i = 0; i < half; ++i) {
    out[i] = x[i] * cs[i] - x[half + i] * cs[half + i];
    out[half + i] = x[half + i] * cs[i] + x[i] * cs[half + i];
  }
  return out;
}

void run_case(const RopeCase& c, std::mt19937& rng) {
  SCOPED_TRACE(testing::Message() << "T=" << c.num_t << " Hq=" << c.num_q_heads
                                  << " Hk=" << c.num_kv_heads << " D=" << c.head_dim
                                  << " norm=" << c.qk_norm);
  const int64_t dim = c.head_dim, hq = c.num_q_heads, hk = c.num_kv_heads;
  RopeInputs in = make_inputs(c, rng);
  HostTensor pos_t = i32_tensor(in.positions), slot_t = i32_tensor(in.slots);
  HostTensor q_out = poisoned_f32({c.num_t, hq, dim});
  HostTensor k_cache = poisoned_f32({c.num_blocks, c.block_size, hk, dim});
  HostTensor v_cache = poisoned_f32({c.num_blocks, c.block_size, hk, dim});
  const QKNorm norm{in.q_norm.tensor, in.k_norm.tensor, kEps};

  cpu::rope_and_cache(q_out.tensor, in.qkv.tensor, c.qk_norm ? &norm : nullptr, in.cos_sin.tensor,
                      pos_t.tensor, slot_t.tensor, k_cache.tensor, v_cache.tensor);

  const float* q_weight = c.qk_norm ? in.q_norm.ptr<float>() : nullptr;
  const float* k_weight = c.qk_norm ? in.k_norm.ptr<float>() : nullptr;
  const int64_t width = (hq + 2 * hk) * dim, kv_row = hk * dim;
  std::vector<bool> written(c.num_blocks * c.block_size, false);
  for (int64_t t = 0; t < c.num_t; ++t) {
    const float* row = in.qkv.ptr<float>() + t * width;
    const float* cs = in.cos_sin.ptr<float>() + in.positions[t] * dim;
    for (int64_t h = 0; h < hq; ++h) {
      std::vector<double> want = reference_head(row + h * dim, dim, q_weight, cs);
      ASSERT_LE(worst_error_ratio(q_out.ptr<float>() + (t * hq + h) * dim, want, kTol, kTol), 1.0)
          << "q, token " << t << " head " << h;
    }
    if (in.slots[t] < 0) continue;
    written[in.slots[t]] = true;
    const float* k_row = k_cache.ptr<float>() + in.slots[t] * kv_row;
    const float* v_row = v_cache.ptr<float>() + in.slots[t] * kv_row;
    for (int64_t h = 0; h < hk; ++h) {
      std::vector<double> want = reference_head(row + (hq + h) * dim, dim, k_weight, cs);
      ASSERT_LE(worst_error_ratio(k_row + h * dim, want, kTol, kTol), 1.0)
          << "k, token " << t << " head " << h;
    }
    for (int64_t i = 0; i < kv_row; ++i) ASSERT_EQ(v_row[i], row[(hq + hk) * dim + i]) << t;
  }
  for (size_t s = 0; s < written.size(); ++s) {
    if (written[s]) continue;
    for (int64_t i = 0; i < kv_row; ++i) {
      ASSERT_TRUE(std::isnan(k_cache.ptr<float>()[s * kv_row + i])) << "k slot " << s;
      ASSERT_TRUE(std::isnan(v_cache.ptr<float>()[s * kv_row + i])) << "v slot " << s;
    }
  }
}

TEST(CpuRopeCache, MatchesReferenceAndWritesOnlyMappedSlots) {
  std::mt19937 rng(31);
  for (bool qk_norm : {false, true}) {
    for (int64_t num_t : {1, 7, 33, 130}) {
      run_case({num_t, 8, 8, 64, 16, 12, qk_norm}, rng);   // MHA
      run_case({num_t, 8, 2, 128, 16, 12, qk_norm}, rng);  // GQA 4
      run_case({num_t, 16, 2, 64, 5, 30, qk_norm}, rng);   // GQA 8
      run_case({num_t, 9, 3, 32, 3, 50, qk_norm}, rng);    // GQA 3
      run_case({num_t, 4, 1, 6, 7, 20, qk_norm}, rng);     // MQA, tiny head
    }
  }
}

// An fp8 cache gets, bit for bit, the fp32 cache's values times 1 / scale rounded to e4m3 (the
// fp32 path is checked against the reference above); unmapped slots keep their NaN codes.
TEST(CpuRopeCache, Fp8CacheStoresScaledRoundedValues) {
  std::mt19937 rng(33);
  const KVCacheScales scales{0.5f, 3.0f};
  for (bool qk_norm : {false, true}) {
    const RopeCase c{33, 8, 2, 64, 16, 12, qk_norm};
    RopeInputs in = make_inputs(c, rng);
    HostTensor pos_t = i32_tensor(in.positions), slot_t = i32_tensor(in.slots);
    const QKNorm norm{in.q_norm.tensor, in.k_norm.tensor, kEps};
    const std::vector<int64_t> cache_shape{c.num_blocks, c.block_size, c.num_kv_heads, c.head_dim};
    HostTensor q32 = poisoned_f32({c.num_t, c.num_q_heads, c.head_dim});
    HostTensor q8 = poisoned_f32({c.num_t, c.num_q_heads, c.head_dim});
    HostTensor k32 = poisoned_f32(cache_shape), v32 = poisoned_f32(cache_shape);
    HostTensor k8(DType::kFP8E4M3, cache_shape), v8(DType::kFP8E4M3, cache_shape);
    std::fill_n(k8.ptr<uint8_t>(), k8.numel(), uint8_t{0x7F});
    std::fill_n(v8.ptr<uint8_t>(), v8.numel(), uint8_t{0x7F});
    cpu::rope_and_cache(q32.tensor, in.qkv.tensor, qk_norm ? &norm : nullptr, in.cos_sin.tensor,
                        pos_t.tensor, slot_t.tensor, k32.tensor, v32.tensor);
    cpu::rope_and_cache(q8.tensor, in.qkv.tensor, qk_norm ? &norm : nullptr, in.cos_sin.tensor,
                        pos_t.tensor, slot_t.tensor, k8.tensor, v8.tensor, scales);
    for (int64_t i = 0; i < q32.numel(); ++i) ASSERT_EQ(q8.ptr<float>()[i], q32.ptr<float>()[i]);
    int64_t nonzero = 0;
    for (int64_t i = 0; i < k32.numel(); ++i) {
      const float k = k32.ptr<float>()[i], v = v32.ptr<float>()[i];
      // Unmapped slots: fp32 NaN there, and the fp8 NaN code kept.
      const uint8_t want_k = std::isnan(k) ? 0x7F : float_to_fp8_e4m3(k * (1.0f / scales.k));
      const uint8_t want_v = std::isnan(v) ? 0x7F : float_to_fp8_e4m3(v * (1.0f / scales.v));
      ASSERT_EQ(k8.ptr<uint8_t>()[i], want_k) << "k element " << i;
      ASSERT_EQ(v8.ptr<uint8_t>()[i], want_v) << "v element " << i;
      nonzero += !std::isnan(k) && k8.ptr<uint8_t>()[i] != 0;
    }
    EXPECT_GT(nonzero, 0);
  }
}

TEST(CpuRopeCache, RejectsBadPositionsSlotsAndShapes) {
  std::mt19937 rng(32);
  // Hq 2, Hk 1, D 4: qkv rows of (2 + 2) * 4 = 16.
  HostTensor q_out = poisoned_f32({2, 2, 4}), qkv = random_f32({2, 16}, rng);
  HostTensor cos_sin = random_f32({10, 4}, rng), weight = random_f32({4}, rng);
  HostTensor kc = poisoned_f32({3, 4, 1, 4});  // k and v share it: only the checks matter
  HostTensor ok_pos = i32_tensor({0, 9}), ok_slots = i32_tensor({0, 11});
  HostTensor bad_pos = i32_tensor({0, 10}), bad_slots = i32_tensor({0, 12});
  const auto call = [&](Tensor q, Tensor fused, const QKNorm* norm, Tensor pos, Tensor slots,
                        Tensor k_cache) {
    cpu::rope_and_cache(q, fused, norm, cos_sin.tensor, pos, slots, k_cache, k_cache);
  };
  EXPECT_NO_THROW(
      call(q_out.tensor, qkv.tensor, nullptr, ok_pos.tensor, ok_slots.tensor, kc.tensor));
  EXPECT_THROW(call(q_out.tensor, qkv.tensor, nullptr, bad_pos.tensor, ok_slots.tensor, kc.tensor),
               std::out_of_range);
  EXPECT_THROW(call(q_out.tensor, qkv.tensor, nullptr, ok_pos.tensor, bad_slots.tensor, kc.tensor),
               std::out_of_range);
  // A cache with 2 kv heads makes the qkv row 24 wide, not 16.
  HostTensor wide_cache = poisoned_f32({3, 4, 2, 4});
  EXPECT_THROW(
      call(q_out.tensor, qkv.tensor, nullptr, ok_pos.tensor, ok_slots.tensor, wide_cache.tensor),
      std::invalid_argument);
  HostTensor short_weight = random_f32({3}, rng);
  const QKNorm bad_norm{weight.tensor, short_weight.tensor, kEps};
  EXPECT_THROW(call(q_out.tensor, qkv.tensor, &bad_norm, ok_pos.tensor, ok_slots.tensor, kc.tensor),
               std::invalid_argument);
  // q_out inside qkv's memory.
  Tensor aliased(qkv.tensor.data, DType::kF32, {2, 2, 4});
  EXPECT_THROW(call(aliased, qkv.tensor, nullptr, ok_pos.tensor, ok_slots.tensor, kc.tensor),
               std::invalid_argument);
}

}  // namespace
}  // namespace engine::test
