// rope_and_cache against a naive neox rotation and cache write; untouched cache slots must keep
// their NaN poison.

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

struct RopeCase {
  int64_t num_t, num_q_heads, num_kv_heads, head_dim, block_size, num_blocks;
};

void rotate_reference(std::vector<double>& x, int64_t num_heads, int64_t dim, const float* cs) {
  const int64_t half = dim / 2;
  for (int64_t h = 0; h < num_heads; ++h)
    for (int64_t i = 0; i < half; ++i) {
      double a = x[h * dim + i], b = x[h * dim + half + i];
      x[h * dim + i] = a * cs[i] - b * cs[half + i];
      x[h * dim + half + i] = b * cs[i] + a * cs[half + i];
    }
}

void run_case(const RopeCase& c, std::mt19937& rng) {
  const int64_t max_pos = 300, dim = c.head_dim;
  HostTensor q = random_f32({c.num_t, c.num_q_heads, dim}, rng);
  HostTensor k = random_f32({c.num_t, c.num_kv_heads, dim}, rng);
  HostTensor v = random_f32({c.num_t, c.num_kv_heads, dim}, rng);
  HostTensor cos_sin(DType::kF32, {max_pos, dim});
  std::uniform_real_distribution<float> angle(-3.14f, 3.14f);
  for (int64_t p = 0; p < max_pos; ++p)
    for (int64_t i = 0; i < dim / 2; ++i) {
      float a = angle(rng);
      cos_sin.ptr<float>()[p * dim + i] = std::cos(a);
      cos_sin.ptr<float>()[p * dim + dim / 2 + i] = std::sin(a);
    }
  std::vector<int32_t> positions(c.num_t), slots(c.num_blocks * c.block_size);
  for (auto& p : positions) p = static_cast<int32_t>(rng() % max_pos);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  slots.resize(c.num_t);
  if (c.num_t > 2) slots[1] = -1;  // a padding token: rotated but not cached
  HostTensor pos_t = i32_tensor(positions), slot_t = i32_tensor(slots);
  HostTensor k_cache = poisoned_f32({c.num_blocks, c.block_size, c.num_kv_heads, dim});
  HostTensor v_cache = poisoned_f32({c.num_blocks, c.block_size, c.num_kv_heads, dim});

  const int64_t q_row = c.num_q_heads * dim, kv_row = c.num_kv_heads * dim;
  std::vector<std::vector<double>> q_ref(c.num_t), k_ref(c.num_t);
  for (int64_t t = 0; t < c.num_t; ++t) {
    const float* cs = cos_sin.ptr<float>() + positions[t] * dim;
    q_ref[t].assign(q.ptr<float>() + t * q_row, q.ptr<float>() + (t + 1) * q_row);
    k_ref[t].assign(k.ptr<float>() + t * kv_row, k.ptr<float>() + (t + 1) * kv_row);
    rotate_reference(q_ref[t], c.num_q_heads, dim, cs);
    rotate_reference(k_ref[t], c.num_kv_heads, dim, cs);
  }
  std::vector<float> v_orig(v.ptr<float>(), v.ptr<float>() + v.numel());

  cpu::rope_and_cache(q.tensor, k.tensor, v.tensor, cos_sin.tensor, pos_t.tensor, slot_t.tensor,
                      k_cache.tensor, v_cache.tensor);

  std::vector<bool> written(c.num_blocks * c.block_size, false);
  for (int64_t t = 0; t < c.num_t; ++t) {
    EXPECT_LE(worst_error_ratio(q.ptr<float>() + t * q_row, q_ref[t], 1e-6, 1e-6), 1.0) << t;
    EXPECT_LE(worst_error_ratio(k.ptr<float>() + t * kv_row, k_ref[t], 1e-6, 1e-6), 1.0) << t;
    if (slots[t] < 0) continue;
    written[slots[t]] = true;
    // block = slot / block_size, offset = slot % block_size.
    const int64_t block = slots[t] / c.block_size, offset = slots[t] % c.block_size;
    const int64_t base = (block * c.block_size + offset) * kv_row;
    for (int64_t i = 0; i < kv_row; ++i) {
      ASSERT_EQ(k_cache.ptr<float>()[base + i], k.ptr<float>()[t * kv_row + i]);
      ASSERT_EQ(v_cache.ptr<float>()[base + i], v_orig[t * kv_row + i]);
    }
  }
  for (size_t s = 0; s < written.size(); ++s)
    if (!written[s]) ASSERT_TRUE(std::isnan(k_cache.ptr<float>()[s * kv_row])) << "slot " << s;
}

TEST(CpuRopeCache, MatchesReferenceAndWritesOnlyMappedSlots) {
  std::mt19937 rng(31);
  for (int64_t num_t : {1, 7, 33, 130}) {
    run_case({num_t, 9, 3, 64, 16, 12}, rng);
    run_case({num_t, 8, 1, 32, 5, 30}, rng);
    run_case({num_t, 4, 4, 6, 3, 50}, rng);
  }
}

TEST(CpuRopeCache, RejectsBadPositionsSlotsAndShapes) {
  std::mt19937 rng(32);
  HostTensor q = random_f32({2, 2, 4}, rng), k = random_f32({2, 1, 4}, rng);
  HostTensor v = random_f32({2, 1, 4}, rng), cos_sin = random_f32({10, 4}, rng);
  HostTensor kc = poisoned_f32({3, 4, 1, 4}), vc = poisoned_f32({3, 4, 1, 4});
  HostTensor ok_pos = i32_tensor({0, 9}), ok_slots = i32_tensor({0, 11});
  HostTensor bad_pos = i32_tensor({0, 10}), bad_slots = i32_tensor({0, 12});
  EXPECT_THROW(cpu::rope_and_cache(q.tensor, k.tensor, v.tensor, cos_sin.tensor, bad_pos.tensor,
                                   ok_slots.tensor, kc.tensor, vc.tensor),
               std::out_of_range);
  EXPECT_THROW(cpu::rope_and_cache(q.tensor, k.tensor, v.tensor, cos_sin.tensor, ok_pos.tensor,
                                   bad_slots.tensor, kc.tensor, vc.tensor),
               std::out_of_range);
  HostTensor wide_cache = poisoned_f32({3, 4, 2, 4});
  EXPECT_THROW(cpu::rope_and_cache(q.tensor, k.tensor, v.tensor, cos_sin.tensor, ok_pos.tensor,
                                   ok_slots.tensor, wide_cache.tensor, vc.tensor),
               std::invalid_argument);
}

}  // namespace
}  // namespace engine::test
