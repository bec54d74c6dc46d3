// The memory-bound kernels of a layer: rms_norm, add_rms_norm, rope_and_cache, silu_and_mul.
// Bytes are the fewest each must move: every input read once, every output written once.

#include <cmath>
#include <numeric>
#include <random>
#include <string>

#include "activation/activation.h"
#include "cases.h"
#include "common/cuda_check.h"
#include "norm/norm.h"
#include "rope/rope_cache.h"

namespace engine::bench {
namespace {

constexpr float kEps = 1e-5f;

std::string tokens_shape(int64_t num_tokens, const std::string& rest) {
  return std::to_string(num_tokens) + (num_tokens == 1 ? " token, " : " tokens, ") + rest;
}

// cos_sin[pos, :] = cos(pos * f_i) for i < D/2, then sin(pos * f_i): the rotary table.
std::vector<float> rotary_table(const ModelShape& m, int64_t max_pos) {
  const int64_t half = m.head_dim / 2;
  std::vector<float> table(max_pos * m.head_dim);
  for (int64_t pos = 0; pos < max_pos; ++pos)
    for (int64_t i = 0; i < half; ++i) {
      const double freq = std::pow(m.rope_theta, -2.0 * double(i) / double(m.head_dim));
      table[pos * m.head_dim + i] = static_cast<float>(std::cos(pos * freq));
      table[pos * m.head_dim + half + i] = static_cast<float>(std::sin(pos * freq));
    }
  return table;
}

void rope_case(Bench& bench, const ModelShape& m, int64_t num_tokens, bool qk_norm) {
  const std::string kernel = "rope_and_cache";
  // NOTE: 1 and 64 tokens are a decode step (one token per sequence, each at a random position
  // and cache slot); 4096 is one sequence's prefill (positions 0.., slots through shuffled blocks).
  const bool decode = num_tokens <= 64;
  const std::string shape = tokens_shape(
      num_tokens, std::string(decode ? "decode" : "prefill") + (qk_norm ? ", qk_norm" : ""));
  if (!bench.selected(kernel, shape)) return;
  const int64_t max_pos = 8192, num_blocks = 4096 + 1;
  std::mt19937 rng(99);
  std::vector<int32_t> blocks(num_blocks - 1);
  std::iota(blocks.begin(), blocks.end(), 1);
  std::shuffle(blocks.begin(), blocks.end(), rng);
  std::vector<int32_t> positions(num_tokens), slots(num_tokens);
  for (int64_t t = 0; t < num_tokens; ++t) {
    positions[t] = decode ? static_cast<int32_t>(rng() % max_pos) : static_cast<int32_t>(t);
    slots[t] = decode ? blocks[t] * m.block_size + static_cast<int32_t>(rng() % m.block_size)
                      : blocks[t / m.block_size] * m.block_size + t % m.block_size;
  }
  const int64_t num_heads = m.num_q_heads + 2 * m.num_kv_heads;
  DeviceTensor qkv(DType::kBF16, {num_tokens, num_heads * m.head_dim});
  DeviceTensor q_out(DType::kBF16, {num_tokens, m.num_q_heads, m.head_dim});
  DeviceTensor cos_sin(DType::kF32, {max_pos, m.head_dim});
  DeviceTensor k_cache(DType::kBF16, {num_blocks, m.block_size, m.num_kv_heads, m.head_dim});
  DeviceTensor v_cache(DType::kBF16, k_cache.t().shape);
  DeviceTensor q_weight(DType::kF32, {m.head_dim}), k_weight(DType::kF32, {m.head_dim});
  qkv.random();
  k_cache.random();
  v_cache.random();
  q_weight.random(0.5f, 1.5f);
  k_weight.random(0.5f, 1.5f);
  cos_sin.upload(rotary_table(m, max_pos).data());
  const DeviceTensor d_positions = upload_i32(positions, {num_tokens});
  const DeviceTensor d_slots = upload_i32(slots, {num_tokens});
  const QKNorm norm{q_weight.t(), k_weight.t(), kEps};
  const double us = bench.time_device_us([&] {
    cuda::rope_and_cache(q_out.t(), qkv.t(), qk_norm ? &norm : nullptr, cos_sin.t(),
                         d_positions.t(), d_slots.t(), k_cache.t(), v_cache.t(), nullptr);
    EMBER_CUDA_CHECK_LAUNCH();
  });
  // qkv read, q written, k and v written to the cache, one table row and one position and
  // slot per token; the norm weights once.
  const double bytes =
      double(num_tokens) * m.head_dim *
          (2.0 * num_heads + 2.0 * m.num_q_heads + 2.0 * 2 * m.num_kv_heads + 4.0) +
      8.0 * num_tokens + (qk_norm ? 8.0 * m.head_dim : 0.0);
  bench.add(kernel, shape, us, bytes, 0);
}

}  // namespace

void bench_norm(Bench& bench, const ModelShape& m) {
  for (int64_t rows : {1, 64, 4096}) {
    const std::string shape = tokens_shape(rows, "hidden " + std::to_string(m.hidden));
    if (bench.selected("rms_norm", shape)) {
      DeviceTensor x(DType::kBF16, {rows, m.hidden}), out(DType::kBF16, {rows, m.hidden});
      DeviceTensor weight(DType::kF32, {m.hidden});
      x.random();
      weight.random(0.5f, 1.5f);
      const double us = bench.time_device_us([&] {
        cuda::rms_norm(out.t(), x.t(), weight.t(), kEps, nullptr);
        EMBER_CUDA_CHECK_LAUNCH();
      });
      bench.add("rms_norm", shape, us, 2.0 * 2 * rows * m.hidden + 4.0 * m.hidden, 0);
    }
    if (bench.selected("add_rms_norm", shape)) {
      DeviceTensor x(DType::kBF16, {rows, m.hidden}), residual(DType::kBF16, {rows, m.hidden});
      DeviceTensor weight(DType::kF32, {m.hidden});
      x.random();
      residual.random();
      weight.random(0.5f, 1.5f);
      const double us = bench.time_device_us([&] {
        cuda::add_rms_norm(x.t(), residual.t(), weight.t(), kEps, nullptr);
        EMBER_CUDA_CHECK_LAUNCH();
      });
      // x and residual each read and written.
      bench.add("add_rms_norm", shape, us, 4.0 * 2 * rows * m.hidden + 4.0 * m.hidden, 0);
    }
  }
}

void bench_rope(Bench& bench, const ModelShape& m) {
  for (bool qk_norm : {false, true})
    for (int64_t num_tokens : {1, 64, 4096}) rope_case(bench, m, num_tokens, qk_norm);
}

void bench_activation(Bench& bench, const ModelShape& m) {
  for (int64_t num_tokens : {1, 64, 4096}) {
    const std::string shape = tokens_shape(num_tokens, "I " + std::to_string(m.intermediate));
    if (!bench.selected("silu_and_mul", shape)) continue;
    DeviceTensor x(DType::kBF16, {num_tokens, 2 * m.intermediate});
    DeviceTensor out(DType::kBF16, {num_tokens, m.intermediate});
    x.random(-4.0f, 4.0f);
    const double us = bench.time_device_us([&] {
      cuda::silu_and_mul(out.t(), x.t(), nullptr);
      EMBER_CUDA_CHECK_LAUNCH();
    });
    bench.add("silu_and_mul", shape, us, 3.0 * 2 * num_tokens * m.intermediate, 0);
  }
}

}  // namespace engine::bench
