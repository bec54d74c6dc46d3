// The CUDA rope_and_cache against the CPU backend's (the spec), for bf16 and fp16 and GQA head
// counts. q, k, v are rounded to the compute dtype first and the CPU reference rotates those in
// fp32, so q and k differ by the output rounding only. The caches start poisoned (0xFFFF): mapped
// slots must hold exactly the rotated k and the input v; every other slot must stay poisoned.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <stdexcept>
#include <vector>

#include "backend/cpu/rope_cache.h"
#include "cuda_test_util.h"
#include "rope/rope_cache.h"

namespace engine::test {
namespace {

constexpr int64_t kMaxPos = 4096;
constexpr int64_t kBlockSize = 16;
constexpr uint16_t kPoison = 0xFFFF;
// Tolerance: one unit in the last place of the output (ulp_of) plus an absolute floor for
// rotated values that cancel to near zero (inputs lie in [-1, 1]; fp32 error is ~1e-7).
constexpr double kAtol = 1e-5;

class CudaRope : public CudaTest {};

// cos/sin of pos * base^(-2i/D) for every position: the table the model builds.
HostTensor cos_sin_table(int64_t head_dim) {
  HostTensor table(DType::kF32, {kMaxPos, head_dim});
  const int64_t half = head_dim / 2;
  for (int64_t p = 0; p < kMaxPos; ++p) {
    for (int64_t i = 0; i < half; ++i) {
      const double angle = p * std::pow(10000.0, -2.0 * i / head_dim);
      table.ptr<float>()[p * head_dim + i] = static_cast<float>(std::cos(angle));
      table.ptr<float>()[p * head_dim + half + i] = static_cast<float>(std::sin(angle));
    }
  }
  return table;
}

struct RopeShape {
  int64_t num_q_heads, num_kv_heads, head_dim;
};

void check_rope(DType dtype, int64_t tokens, RopeShape shape, std::mt19937& rng) {
  const int64_t hq = shape.num_q_heads, hk = shape.num_kv_heads, d = shape.head_dim;
  const int64_t num_blocks = (2 * tokens + kBlockSize - 1) / kBlockSize + 1;
  const int64_t num_slots = num_blocks * kBlockSize, kv_row = hk * d;

  std::vector<float> qr, kr, vr;
  HostTensor q = to_dtype(random_f32({tokens, hq, d}, rng), dtype, &qr);
  HostTensor k = to_dtype(random_f32({tokens, hk, d}, rng), dtype, &kr);
  HostTensor v = to_dtype(random_f32({tokens, hk, d}, rng), dtype, &vr);
  HostTensor table = cos_sin_table(d);
  // Shuffled slots; every third token is padding (-1). Two extra entries past T, as a
  // graph-padded step may pass: the kernel must ignore them.
  std::vector<int32_t> all_slots(num_slots);
  std::iota(all_slots.begin(), all_slots.end(), 0);
  std::shuffle(all_slots.begin(), all_slots.end(), rng);
  std::vector<int32_t> slots(all_slots.begin(), all_slots.begin() + tokens + 2);
  for (int64_t t = 1; t < tokens; t += 3) slots[t] = -1;
  std::uniform_int_distribution<int32_t> pos_dist(0, kMaxPos - 1);
  std::vector<int32_t> positions(tokens + 2);
  for (auto& p : positions) p = pos_dist(rng);

  // CPU reference on the rounded values.
  HostTensor q_ref = f32_tensor(qr, {tokens, hq, d});
  HostTensor k_ref = f32_tensor(kr, {tokens, hk, d});
  HostTensor v_ref = f32_tensor(vr, {tokens, hk, d});
  HostTensor kc_ref = poisoned_f32({num_blocks, kBlockSize, hk, d});
  HostTensor vc_ref = poisoned_f32({num_blocks, kBlockSize, hk, d});
  HostTensor pos_ref =
      i32_tensor(std::vector<int32_t>(positions.begin(), positions.begin() + tokens));
  HostTensor slots_ref = i32_tensor(std::vector<int32_t>(slots.begin(), slots.begin() + tokens));
  cpu::rope_and_cache(q_ref.tensor, k_ref.tensor, v_ref.tensor, table.tensor, pos_ref.tensor,
                      slots_ref.tensor, kc_ref.tensor, vc_ref.tensor);

  DeviceTensor dq = DeviceTensor::from_host(q), dk = DeviceTensor::from_host(k);
  DeviceTensor dv = DeviceTensor::from_host(v), dtable = DeviceTensor::from_host(table);
  DeviceTensor dpos = DeviceTensor::from_host(i32_tensor(positions));
  DeviceTensor dslots = DeviceTensor::from_host(i32_tensor(slots));
  DeviceTensor kc(dtype, {num_blocks, kBlockSize, hk, d}),
      vc(dtype, {num_blocks, kBlockSize, hk, d});
  cuda::rope_and_cache(dq.tensor, dk.tensor, dv.tensor, dtable.tensor, dpos.tensor, dslots.tensor,
                       kc.tensor, vc.tensor, nullptr);

  EXPECT_LE(error_ratio(dq.floats(), q_ref.ptr<float>(), kAtol, ulp_of(dtype)), 1.0) << "q";
  EXPECT_LE(error_ratio(dk.floats(), k_ref.ptr<float>(), kAtol, ulp_of(dtype)), 1.0) << "k";
  const std::vector<uint16_t> k_out = dk.bits16(), kc_bits = kc.bits16(), vc_bits = vc.bits16();
  const auto* v_bits = v.ptr<uint16_t>();
  std::vector<int64_t> token_of_slot(num_slots, -1);
  for (int64_t t = 0; t < tokens; ++t)
    if (slots[t] >= 0) token_of_slot[slots[t]] = t;
  int64_t num_wrong_k = 0, num_wrong_v = 0;
  for (int64_t s = 0; s < num_slots; ++s) {
    const int64_t t = token_of_slot[s];
    for (int64_t e = 0; e < kv_row; ++e) {
      const uint16_t want_k = t < 0 ? kPoison : k_out[t * kv_row + e];
      const uint16_t want_v = t < 0 ? kPoison : v_bits[t * kv_row + e];
      num_wrong_k += kc_bits[s * kv_row + e] != want_k;
      num_wrong_v += vc_bits[s * kv_row + e] != want_v;
    }
  }
  EXPECT_EQ(num_wrong_k, 0) << "k_cache elements other than rotated k / poison";
  EXPECT_EQ(num_wrong_v, 0) << "v_cache elements other than v / poison";
}

TEST_F(CudaRope, RopeAndCacheMatchesCpu) {
  std::mt19937 rng(31);
  // GQA 4:1 and 3:1, MHA, MQA; D = 72 and 36 take the scalar path (D/2 not a multiple of 8).
  const RopeShape shapes[] = {{8, 2, 128}, {12, 4, 64}, {4, 4, 64}, {6, 1, 72}, {2, 2, 36}};
  for (DType dtype : {DType::kBF16, DType::kF16}) {
    for (int64_t tokens : {1, 7, 33}) {
      for (RopeShape shape : shapes) {
        SCOPED_TRACE(testing::Message()
                     << compute_name(dtype) << " T=" << tokens << " Hq=" << shape.num_q_heads
                     << " Hk=" << shape.num_kv_heads << " D=" << shape.head_dim);
        check_rope(dtype, tokens, shape, rng);
      }
    }
  }
}

TEST_F(CudaRope, RejectsBadArguments) {
  DeviceTensor q(DType::kBF16, {3, 4, 64}), k(DType::kBF16, {3, 2, 64}),
      v(DType::kBF16, {3, 2, 64});
  DeviceTensor table(DType::kF32, {16, 64}), pos(DType::kI32, {3}), slots(DType::kI32, {3});
  DeviceTensor kc(DType::kBF16, {2, 16, 2, 64}), vc(DType::kBF16, {2, 16, 2, 64});
  DeviceTensor kc_f16(DType::kF16, {2, 16, 2, 64}), short_slots(DType::kI32, {2});
  DeviceTensor kc_wrong_heads(DType::kBF16, {2, 16, 4, 64}), table_bf16(DType::kBF16, {16, 64});
  const auto call = [&](const Tensor& t, const Tensor& s, const Tensor& kcache) {
    cuda::rope_and_cache(q.tensor, k.tensor, v.tensor, t, pos.tensor, s, kcache, vc.tensor,
                         nullptr);
  };
  EXPECT_THROW(call(table.tensor, slots.tensor, kc_f16.tensor), std::invalid_argument);
  EXPECT_THROW(call(table.tensor, short_slots.tensor, kc.tensor), std::invalid_argument);
  EXPECT_THROW(call(table.tensor, slots.tensor, kc_wrong_heads.tensor), std::invalid_argument);
  EXPECT_THROW(call(table_bf16.tensor, slots.tensor, kc.tensor), std::invalid_argument);
}

}  // namespace
}  // namespace engine::test
