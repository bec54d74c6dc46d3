// Paged attention: decode (one new token per sequence over a full context; GB/s of K and V read)
// and causal prefill (every token new; TFLOP/s counting only the causal half).

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>

#include "attention/paged_attention.h"
#include "cases.h"
#include "common/cuda_check.h"

namespace engine::bench {
namespace {

// A batch of sequences with their block tables (shuffled blocks, as after a while of serving),
// and the K/V cache they read, sized to hold exactly their context.
struct AttentionBatch {
  DeviceTensor q, out, k_cache, v_cache, query_start_loc, seq_lens, block_table;
  AttentionMetadata meta;

  static std::vector<int32_t> prefix_sums(int num_seqs, int query_len) {
    std::vector<int32_t> v(num_seqs + 1);
    for (int s = 0; s <= num_seqs; ++s) v[s] = s * query_len;
    return v;
  }
  static std::vector<int32_t> shuffled_blocks(int64_t count) {
    std::vector<int32_t> v(count);
    std::iota(v.begin(), v.end(), 1);  // block 0 is the null block
    std::shuffle(v.begin(), v.end(), std::mt19937(1234));
    return v;
  }

  AttentionBatch(const ModelShape& m, int num_seqs, int query_len, int context)
      : q(DType::kBF16, {num_seqs * query_len, m.num_q_heads, m.head_dim}),
        out(DType::kBF16, {num_seqs * query_len, m.num_q_heads, m.head_dim}),
        k_cache(DType::kBF16, {num_seqs * (context / m.block_size) + 1, m.block_size,
                               m.num_kv_heads, m.head_dim}),
        v_cache(DType::kBF16, k_cache.t().shape),
        query_start_loc(upload_i32(prefix_sums(num_seqs, query_len), {num_seqs + 1})),
        seq_lens(upload_i32(std::vector<int32_t>(num_seqs, context), {num_seqs})),
        block_table(upload_i32(shuffled_blocks(num_seqs * (context / m.block_size)),
                               {num_seqs, context / m.block_size})) {
    q.random();
    k_cache.random();
    v_cache.random();
    meta.num_seqs = num_seqs;
    meta.max_query_len = query_len;
    meta.max_seq_len = context;
    meta.max_blocks_per_seq = static_cast<int>(context / m.block_size);
    meta.query_start_loc = query_start_loc.t();
    meta.seq_lens = seq_lens.t();
    meta.block_table = block_table.t();
  }

  void run(const ModelShape& m) const {
    cuda::paged_attention(out.t(), q.t(), k_cache.t(), v_cache.t(), meta,
                          1.0f / std::sqrt(static_cast<float>(m.head_dim)), std::nullopt, nullptr);
    EMBER_CUDA_CHECK_LAUNCH();
  }
};

void decode_case(Bench& bench, const ModelShape& m, int batch, int context) {
  const std::string kernel = "attention decode";
  const std::string shape =
      "batch " + std::to_string(batch) + ", context " + std::to_string(context) + ", 32/8 heads";
  if (!bench.selected(kernel, shape)) return;
  AttentionBatch b(m, batch, 1, context);
  const double us = bench.time_device_us([&] { b.run(m); });
  const double kv_bytes = 2.0 * batch * context * m.num_kv_heads * m.head_dim * 2;
  bench.add(kernel, shape, us, kv_bytes, 0, "GB/s of K+V read");
}

void prefill_case(Bench& bench, const ModelShape& m, int num_seqs, int len) {
  const std::string kernel = "attention prefill (causal)";
  const std::string shape = std::to_string(num_seqs) + " x " + std::to_string(len) + " tokens";
  if (!bench.selected(kernel, shape)) return;
  AttentionBatch b(m, num_seqs, len, len);
  const double us = bench.time_device_us([&] { b.run(m); });
  // QK^T and PV, 2 flops per multiply-add each, over the (query, key) pairs with key <= query.
  const double pairs = double(len) * (len + 1) / 2;
  const double flops = 4.0 * num_seqs * pairs * m.num_q_heads * m.head_dim;
  bench.add(kernel, shape, us, 0, flops, "flops of the causal half");
}

}  // namespace

void bench_attention(Bench& bench, const ModelShape& m) {
  for (int context : {512, 4096})
    for (int batch : {1, 8, 64, 256}) decode_case(bench, m, batch, context);
  prefill_case(bench, m, 1, 4096);
  prefill_case(bench, m, 8, 512);
}

}  // namespace engine::bench
