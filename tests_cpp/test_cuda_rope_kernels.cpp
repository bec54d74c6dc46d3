// The CUDA rope_and_cache against the CPU backend's (the spec), for bf16 and fp16, with and
// without Qwen3's per-head q/k norm, GQA ratios 1, 3, 4 and 8, head_dim 64, 128 and 256 (the
// 16-byte path) and 36, 72 and a misaligned qkv (the scalar path). Each run draws fresh random
// inputs: qkv is rounded to the compute dtype first and the CPU reference works on those
// values in fp32, so q and k differ by the output rounding only. q_out and the caches start
// poisoned (0xFFFF): every q element must be written, mapped cache slots must hold rotated k
// and exactly the input v, and every other slot must stay poisoned.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
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
constexpr float kEps = 1e-6f;
// Tolerance: one unit in the last place of the output (ulp_of: the GPU's fp32 result may round
// one unit away from the CPU's when they straddle a rounding boundary) plus an absolute floor
// for rotated values that cancel to near zero (normed inputs reach a few units; fp32
// differences, FMA contraction and rsqrtf included, are ~1e-6 there).
constexpr double kAtol = 2e-5;

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

struct RopeRun {
  DType dtype;
  int64_t num_tokens;
  RopeShape shape;
  bool qk_norm;
  int64_t qkv_offset = 0;  // elements off the allocation's alignment: 1 forces the scalar path
};

// Each token a slot of its own in shuffled blocks, at a shuffled offset, so a step's tokens
// land in non-contiguous blocks; every third token is padding (-1). Two extra entries past T,
// as a graph-padded step may pass: the kernel must ignore them.
std::vector<int32_t> scattered_slots(int64_t num_tokens, int64_t num_slots, std::mt19937& rng) {
  std::vector<int32_t> slots(num_slots);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  slots.resize(num_tokens + 2);
  for (int64_t t = 1; t < num_tokens; t += 3) slots[t] = -1;
  return slots;
}

// The CPU reference for the first T tokens, on the rounded qkv values.
struct Reference {
  HostTensor q_out, k_cache, v_cache;
};

Reference cpu_reference(const RopeRun& run, const std::vector<float>& qkv_rounded,
                        const HostTensor& table, const QKNorm* norm,
                        const std::vector<int32_t>& positions, const std::vector<int32_t>& slots,
                        int64_t num_blocks) {
  const int64_t t = run.num_tokens, hq = run.shape.num_q_heads, hk = run.shape.num_kv_heads;
  const int64_t d = run.shape.head_dim;
  Reference ref{poisoned_f32({t, hq, d}), poisoned_f32({num_blocks, kBlockSize, hk, d}),
                poisoned_f32({num_blocks, kBlockSize, hk, d})};
  HostTensor qkv = f32_tensor(qkv_rounded, {t, (hq + 2 * hk) * d});
  HostTensor pos = i32_tensor(std::vector<int32_t>(positions.begin(), positions.begin() + t));
  HostTensor slot = i32_tensor(std::vector<int32_t>(slots.begin(), slots.begin() + t));
  cpu::rope_and_cache(ref.q_out.tensor, qkv.tensor, norm, table.tensor, pos.tensor, slot.tensor,
                      ref.k_cache.tensor, ref.v_cache.tensor);
  return ref;
}

void check_rope(const RopeRun& run, std::mt19937& rng) {
  const int64_t tokens = run.num_tokens, hq = run.shape.num_q_heads;
  const int64_t hk = run.shape.num_kv_heads, d = run.shape.head_dim;
  const int64_t num_blocks = (2 * tokens + kBlockSize - 1) / kBlockSize + 1;
  const int64_t num_slots = num_blocks * kBlockSize, kv_row = hk * d, width = (hq + 2 * hk) * d;

  std::vector<float> qkv_rounded;
  HostTensor qkv = to_dtype(random_f32({tokens, width}, rng), run.dtype, &qkv_rounded);
  HostTensor table = cos_sin_table(d);
  HostTensor q_weight = random_f32({d}, rng, 0.5f, 1.5f),
             k_weight = random_f32({d}, rng, 0.5f, 1.5f);
  const std::vector<int32_t> slots = scattered_slots(tokens, num_slots, rng);
  std::uniform_int_distribution<int32_t> pos_dist(0, kMaxPos - 1);
  std::vector<int32_t> positions(tokens + 2);
  for (auto& p : positions) p = pos_dist(rng);

  const QKNorm host_norm{q_weight.tensor, k_weight.tensor, kEps};
  const Reference ref = cpu_reference(run, qkv_rounded, table, run.qk_norm ? &host_norm : nullptr,
                                      positions, slots, num_blocks);

  DeviceTensor dqkv = DeviceTensor::from_host(qkv, run.qkv_offset);
  DeviceTensor dtable = DeviceTensor::from_host(table);
  DeviceTensor dq_weight = DeviceTensor::from_host(q_weight);
  DeviceTensor dk_weight = DeviceTensor::from_host(k_weight);
  DeviceTensor dpos = DeviceTensor::from_host(i32_tensor(positions));
  DeviceTensor dslots = DeviceTensor::from_host(i32_tensor(slots));
  DeviceTensor q_out(run.dtype, {tokens, hq, d});  // poisoned, as are the caches
  DeviceTensor kc(run.dtype, {num_blocks, kBlockSize, hk, d});
  DeviceTensor vc(run.dtype, {num_blocks, kBlockSize, hk, d});
  const QKNorm device_norm{dq_weight.tensor, dk_weight.tensor, kEps};
  cuda::rope_and_cache(q_out.tensor, dqkv.tensor, run.qk_norm ? &device_norm : nullptr,
                       dtable.tensor, dpos.tensor, dslots.tensor, kc.tensor, vc.tensor, nullptr);
  EMBER_CUDA_CHECK(cudaDeviceSynchronize());

  const double rtol = ulp_of(run.dtype);
  EXPECT_LE(error_ratio(q_out.floats(), ref.q_out.ptr<float>(), kAtol, rtol), 1.0) << "q_out";
  const std::vector<float> kc_values = kc.floats();
  const std::vector<uint16_t> kc_bits = kc.bits16(), vc_bits = vc.bits16();
  const auto* qkv_bits = qkv.ptr<uint16_t>();
  std::vector<int64_t> token_of_slot(num_slots, -1);
  for (int64_t t = 0; t < tokens; ++t)
    if (slots[t] >= 0) token_of_slot[slots[t]] = t;
  int64_t num_wrong_v = 0, num_unpoisoned = 0;
  double worst_k = 0.0;
  for (int64_t s = 0; s < num_slots; ++s) {
    const int64_t t = token_of_slot[s];
    if (t < 0) {
      for (int64_t e = 0; e < kv_row; ++e)
        num_unpoisoned +=
            (kc_bits[s * kv_row + e] != kPoison) + (vc_bits[s * kv_row + e] != kPoison);
      continue;
    }
    const std::vector<float> k_row(kc_values.begin() + s * kv_row,
                                   kc_values.begin() + (s + 1) * kv_row);
    worst_k =
        std::max(worst_k, error_ratio(k_row, ref.k_cache.ptr<float>() + s * kv_row, kAtol, rtol));
    for (int64_t e = 0; e < kv_row; ++e)
      num_wrong_v += vc_bits[s * kv_row + e] != qkv_bits[t * width + (hq + hk) * d + e];
  }
  EXPECT_LE(worst_k, 1.0) << "k_cache";
  EXPECT_EQ(num_wrong_v, 0) << "v_cache elements other than the input v";
  EXPECT_EQ(num_unpoisoned, 0) << "cache elements written in slots no token maps to";
}

// An fp8 cache against the CPU spec's codes on the same rounded inputs: v codes equal (the same
// product, rounded once); a k code may be the neighbouring one where the GPU's and the CPU's fp32
// rotations straddle an e4m3 rounding boundary, which is rare (at most 1 in 500 here). Unmapped
// slots keep the poison (0xFF, a NaN code).
void check_fp8_rope(DType dtype, RopeShape shape, bool qk_norm, std::mt19937& rng) {
  SCOPED_TRACE(testing::Message() << compute_name(dtype) << " fp8 cache Hq=" << shape.num_q_heads
                                  << " Hk=" << shape.num_kv_heads << " D=" << shape.head_dim
                                  << " qk_norm=" << qk_norm);
  const int64_t tokens = 77, hq = shape.num_q_heads, hk = shape.num_kv_heads, d = shape.head_dim;
  const int64_t num_blocks = (2 * tokens + kBlockSize - 1) / kBlockSize + 1;
  const int64_t num_slots = num_blocks * kBlockSize, width = (hq + 2 * hk) * d;
  const KVCacheScales scales{0.5f, 2.0f};
  std::vector<float> qkv_rounded;
  HostTensor qkv = to_dtype(random_f32({tokens, width}, rng, -4.0f, 4.0f), dtype, &qkv_rounded);
  HostTensor table = cos_sin_table(d);
  HostTensor q_weight = random_f32({d}, rng, 0.5f, 1.5f),
             k_weight = random_f32({d}, rng, 0.5f, 1.5f);
  const std::vector<int32_t> slots = scattered_slots(tokens, num_slots, rng);
  std::vector<int32_t> positions(tokens + 2);
  for (auto& p : positions) p = static_cast<int32_t>(rng() % kMaxPos);

  const std::vector<int64_t> cache_shape{num_blocks, kBlockSize, hk, d};
  HostTensor ref_q = poisoned_f32({tokens, hq, d});
  HostTensor ref_k(DType::kFP8E4M3, cache_shape), ref_v(DType::kFP8E4M3, cache_shape);
  std::fill_n(ref_k.ptr<uint8_t>(), ref_k.numel(), uint8_t{0xFF});
  std::fill_n(ref_v.ptr<uint8_t>(), ref_v.numel(), uint8_t{0xFF});
  HostTensor host_qkv = f32_tensor(qkv_rounded, {tokens, width});
  HostTensor pos = i32_tensor(std::vector<int32_t>(positions.begin(), positions.begin() + tokens));
  HostTensor slot = i32_tensor(std::vector<int32_t>(slots.begin(), slots.begin() + tokens));
  const QKNorm host_norm{q_weight.tensor, k_weight.tensor, kEps};
  cpu::rope_and_cache(ref_q.tensor, host_qkv.tensor, qk_norm ? &host_norm : nullptr, table.tensor,
                      pos.tensor, slot.tensor, ref_k.tensor, ref_v.tensor, scales);

  DeviceTensor dqkv = DeviceTensor::from_host(qkv), dtable = DeviceTensor::from_host(table);
  DeviceTensor dq_weight = DeviceTensor::from_host(q_weight);
  DeviceTensor dk_weight = DeviceTensor::from_host(k_weight);
  DeviceTensor dpos = DeviceTensor::from_host(i32_tensor(positions));
  DeviceTensor dslots = DeviceTensor::from_host(i32_tensor(slots));
  DeviceTensor q_out(dtype, {tokens, hq, d});
  DeviceTensor kc(DType::kFP8E4M3, cache_shape), vc(DType::kFP8E4M3, cache_shape);
  const QKNorm device_norm{dq_weight.tensor, dk_weight.tensor, kEps};
  cuda::rope_and_cache(q_out.tensor, dqkv.tensor, qk_norm ? &device_norm : nullptr, dtable.tensor,
                       dpos.tensor, dslots.tensor, kc.tensor, vc.tensor, nullptr, scales);
  EMBER_CUDA_CHECK(cudaDeviceSynchronize());

  EXPECT_LE(error_ratio(q_out.floats(), ref_q.ptr<float>(), kAtol, ulp_of(dtype)), 1.0) << "q_out";
  const std::vector<uint8_t> k_codes = kc.bytes(), v_codes = vc.bytes();
  int64_t k_neighbours = 0, k_wrong = 0, v_wrong = 0, k_nonzero = 0;
  for (int64_t i = 0; i < ref_k.numel(); ++i) {
    const uint8_t want = ref_k.ptr<uint8_t>()[i], got = k_codes[i];
    const bool equal = got == want || ((got & 0x7F) == 0 && (want & 0x7F) == 0);  // +-0
    const bool neighbour = (want & 0x80) == (got & 0x80) && (want & 0x7F) != 0x7F &&
                           std::abs(int(want & 0x7F) - int(got & 0x7F)) == 1;
    k_neighbours += !equal && neighbour;
    k_wrong += !equal && !neighbour;
    v_wrong += v_codes[i] != ref_v.ptr<uint8_t>()[i];
    k_nonzero += got != 0xFF && (got & 0x7F) != 0;
  }
  EXPECT_EQ(k_wrong, 0) << "k codes neither the spec's nor its neighbour";
  EXPECT_LE(k_neighbours * 500, ref_k.numel()) << "k codes one step from the spec's";
  EXPECT_EQ(v_wrong, 0) << "v codes other than the spec's";
  EXPECT_GT(k_nonzero, 0);
}

TEST_F(CudaRope, Fp8CacheStoresTheSpecsCodes) {
  std::mt19937 rng(77);
  for (DType dtype : {DType::kBF16, DType::kF16})
    for (bool qk_norm : {false, true})
      for (RopeShape shape : {RopeShape{32, 8, 128}, RopeShape{8, 8, 64}, RopeShape{6, 2, 72}})
        check_fp8_rope(dtype, shape, qk_norm, rng);
}

void check_runs(DType dtype, std::initializer_list<int64_t> token_counts,
                std::initializer_list<RopeShape> shapes, int64_t qkv_offset, std::mt19937& rng) {
  for (bool qk_norm : {false, true}) {
    for (int64_t tokens : token_counts) {
      for (RopeShape shape : shapes) {
        SCOPED_TRACE(testing::Message()
                     << compute_name(dtype) << " T=" << tokens << " Hq=" << shape.num_q_heads
                     << " Hk=" << shape.num_kv_heads << " D=" << shape.head_dim
                     << " qk_norm=" << qk_norm << " qkv_offset=" << qkv_offset);
        check_rope({dtype, tokens, shape, qk_norm, qkv_offset}, rng);
      }
    }
  }
}

TEST_F(CudaRope, VectorPathMatchesCpu) {
  std::mt19937 rng(31);
  // GQA 1, 4, 8 and 3 at D = 64 and 128; D = 256 puts 16 lanes on a head.
  for (DType dtype : {DType::kBF16, DType::kF16}) {
    check_runs(dtype, {1, 7, 300},
               {{8, 8, 64}, {16, 4, 128}, {16, 2, 64}, {32, 4, 128}, {12, 4, 64}, {4, 1, 256}}, 0,
               rng);
  }
}

TEST_F(CudaRope, ScalarPathMatchesCpu) {
  std::mt19937 rng(32);
  // D/2 = 36 and 18 are not multiples of 8; a qkv one element off its alignment takes the
  // scalar path at D = 128 too, with 32 lanes per head and two pairs per lane.
  for (DType dtype : {DType::kBF16, DType::kF16}) {
    check_runs(dtype, {1, 33}, {{6, 1, 72}, {2, 2, 36}}, 0, rng);
    check_runs(dtype, {1, 33}, {{8, 2, 128}, {8, 8, 64}}, 1, rng);
  }
}

// A prefill-sized step at the Llama-3-8B shape (GQA 4, D = 128).
TEST_F(CudaRope, LargeStepMatchesCpu) {
  std::mt19937 rng(33);
  for (DType dtype : {DType::kBF16, DType::kF16}) check_runs(dtype, {2048}, {{32, 8, 128}}, 0, rng);
}

TEST_F(CudaRope, RejectsBadArguments) {
  // Hq 4, Hk 2, D 64: qkv rows of (4 + 2 * 2) * 64 = 512.
  DeviceTensor q(DType::kBF16, {3, 4, 64}), qkv(DType::kBF16, {3, 512});
  // Valid positions and slots, so the one call that passes its checks runs safely.
  DeviceTensor table(DType::kF32, {16, 64});
  DeviceTensor pos = DeviceTensor::from_host(i32_tensor({0, 5, 15}));
  DeviceTensor slots = DeviceTensor::from_host(i32_tensor({3, -1, 31}));
  DeviceTensor kc(DType::kBF16, {2, 16, 2, 64}), vc(DType::kBF16, {2, 16, 2, 64});
  DeviceTensor kc_f16(DType::kF16, {2, 16, 2, 64}), short_slots(DType::kI32, {2});
  DeviceTensor kc_wrong_heads(DType::kBF16, {2, 16, 4, 64}), table_bf16(DType::kBF16, {16, 64});
  DeviceTensor qkv_narrow(DType::kBF16, {3, 448}), weight(DType::kF32, {64});
  DeviceTensor weight_short(DType::kF32, {32});
  const QKNorm good_norm{weight.tensor, weight.tensor, kEps};
  const QKNorm bad_norm{weight.tensor, weight_short.tensor, kEps};
  const auto call = [&](const Tensor& q_out, const Tensor& fused, const QKNorm* norm,
                        const Tensor& t, const Tensor& s, const Tensor& kcache) {
    cuda::rope_and_cache(q_out, fused, norm, t, pos.tensor, s, kcache, vc.tensor, nullptr);
  };
  EXPECT_NO_THROW(call(q.tensor, qkv.tensor, &good_norm, table.tensor, slots.tensor, kc.tensor));
  EXPECT_THROW(call(q.tensor, qkv.tensor, nullptr, table.tensor, slots.tensor, kc_f16.tensor),
               std::invalid_argument);
  EXPECT_THROW(call(q.tensor, qkv.tensor, nullptr, table.tensor, short_slots.tensor, kc.tensor),
               std::invalid_argument);
  EXPECT_THROW(
      call(q.tensor, qkv.tensor, nullptr, table.tensor, slots.tensor, kc_wrong_heads.tensor),
      std::invalid_argument);
  EXPECT_THROW(call(q.tensor, qkv.tensor, nullptr, table_bf16.tensor, slots.tensor, kc.tensor),
               std::invalid_argument);
  EXPECT_THROW(call(q.tensor, qkv_narrow.tensor, nullptr, table.tensor, slots.tensor, kc.tensor),
               std::invalid_argument);
  EXPECT_THROW(call(q.tensor, qkv.tensor, &bad_norm, table.tensor, slots.tensor, kc.tensor),
               std::invalid_argument);
  Tensor aliased(qkv.tensor.data, DType::kBF16, {3, 4, 64}, DeviceType::kCuda);
  EXPECT_THROW(call(aliased, qkv.tensor, nullptr, table.tensor, slots.tensor, kc.tensor),
               std::invalid_argument);
  EMBER_CUDA_CHECK(cudaDeviceSynchronize());
}

}  // namespace
}  // namespace engine::test
