// The CPU backend through the Backend interface: memory, copies, and one decode step of a
// tiny attention layer (rope_and_cache then attention) driven by AttentionMetadata.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "backend/backend.h"
#include "cpu_test_util.h"

namespace engine::test {
namespace {

TEST(CpuBackend, IdentifiesItself) {
  auto backend = make_cpu_backend(2);
  EXPECT_EQ(backend->device_type(), DeviceType::kCpu);
  EXPECT_STREQ(backend->name(), "cpu");
  EXPECT_EQ(backend->compute_dtype(), DType::kF32);
}

TEST(CpuBackend, AllocatesAlignedAndCopies) {
  auto backend = make_cpu_backend(0);
  for (size_t nbytes : {size_t{1}, size_t{100}, size_t{4096 + 3}}) {
    Buffer buffer = backend->allocate(nbytes);
    ASSERT_NE(buffer.data(), nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(buffer.data()) % 64, 0u);
    EXPECT_EQ(buffer.nbytes(), nbytes);
  }
  Buffer buffer = backend->allocate(7 * sizeof(float));
  Tensor t(buffer.data(), DType::kF32, {7});
  std::vector<float> src = {1, 2, 3, 4, 5, 6, 7}, dst(7, -1.0f);
  backend->copy_from_host(t, src.data());
  backend->copy_to_host(dst.data(), t);
  EXPECT_EQ(src, dst);
}

// A sequence with 5 cached tokens decodes its 6th: attention through the backend must equal a
// softmax over the 6 keys, the last one written by rope_and_cache (position 5).
TEST(CpuBackend, DecodeStepThroughMetadata) {
  auto backend = make_cpu_backend(2);
  std::mt19937 rng(51);
  const int64_t hq = 4, hk = 2, dim = 8, block_size = 4, num_blocks = 4;
  HostTensor k_cache = random_f32({num_blocks, block_size, hk, dim}, rng);
  HostTensor v_cache = random_f32({num_blocks, block_size, hk, dim}, rng);
  HostTensor qkv = random_f32({1, (hq + 2 * hk) * dim}, rng);  // q heads, k heads, v heads
  HostTensor q = poisoned_f32({1, hq, dim});
  HostTensor cos_sin(DType::kF32, {16, dim});
  for (int64_t p = 0; p < 16; ++p)
    for (int64_t i = 0; i < dim / 2; ++i) {
      cos_sin.ptr<float>()[p * dim + i] = std::cos(0.3f * p * (i + 1));
      cos_sin.ptr<float>()[p * dim + dim / 2 + i] = std::sin(0.3f * p * (i + 1));
    }
  // Context index j lives in block table[j / 4]: blocks 3 then 1; token 5 -> slot 1 * 4 + 1.
  HostTensor starts = i32_tensor({0, 1}), lens = i32_tensor({6}), slots = i32_tensor({5});
  HostTensor positions = i32_tensor({5}), table(DType::kI32, {1, 2});
  table.ptr<int32_t>()[0] = 3;
  table.ptr<int32_t>()[1] = 1;
  AttentionMetadata meta;
  meta.num_seqs = 1;
  meta.max_query_len = 1;
  meta.max_seq_len = 6;
  meta.max_blocks_per_seq = 2;
  meta.query_start_loc = starts.tensor;
  meta.seq_lens = lens.tensor;
  meta.block_table = table.tensor;
  meta.slot_mapping = slots.tensor;
  meta.positions = positions.tensor;
  KVCacheLayer cache{k_cache.tensor, v_cache.tensor, {}};
  backend->rope_and_cache(q.tensor, qkv.tensor, nullptr, cos_sin.tensor, meta, cache);
  HostTensor out = poisoned_f32({1, hq, dim});
  const float scale = 0.35f;
  backend->attention(out.tensor, q.tensor, cache, meta, scale, std::nullopt);

  const int64_t key_slots[6] = {12, 13, 14, 15, 4, 5};
  std::vector<double> expected(hq * dim);
  for (int64_t h = 0; h < hq; ++h) {
    std::vector<double> p(6);
    double sum = 0.0;
    for (int j = 0; j < 6; ++j) {
      const float* key = k_cache.ptr<float>() + (key_slots[j] * hk + h / 2) * dim;
      double s = 0.0;
      for (int64_t d = 0; d < dim; ++d) s += double(q.ptr<float>()[h * dim + d]) * key[d];
      sum += (p[j] = std::exp(s * scale));
    }
    for (int64_t d = 0; d < dim; ++d) {
      double acc = 0.0;
      for (int j = 0; j < 6; ++j)
        acc += p[j] * v_cache.ptr<float>()[(key_slots[j] * hk + h / 2) * dim + d];
      expected[h * dim + d] = acc / sum;
    }
  }
  EXPECT_LE(worst_error_ratio(out.ptr<float>(), expected, 1e-5, 1e-5), 1.0);
  // The new key is k rotated by position 5's angles, stored at slot 5; v as it came.
  const float* k = qkv.ptr<float>() + hq * dim;
  const float* cs = cos_sin.ptr<float>() + 5 * dim;
  for (int64_t h = 0; h < hk; ++h)
    for (int64_t i = 0; i < dim / 2; ++i) {
      const float a = k[h * dim + i], b = k[h * dim + dim / 2 + i];
      const float* cached = k_cache.ptr<float>() + (5 * hk + h) * dim;
      EXPECT_NEAR(cached[i], a * cs[i] - b * cs[dim / 2 + i], 1e-6);
      EXPECT_NEAR(cached[dim / 2 + i], b * cs[i] + a * cs[dim / 2 + i], 1e-6);
    }
  for (int64_t i = 0; i < hk * dim; ++i)
    EXPECT_EQ(v_cache.ptr<float>()[5 * hk * dim + i], qkv.ptr<float>()[(hq + hk) * dim + i]);
}

}  // namespace
}  // namespace engine::test
