// Paged attention: decode (one new token per sequence over a full context; GB/s of K and V read),
// causal prefill (every token new; TFLOP/s counting only the causal half), a prefill chunk over a
// cached prefix, and a mixed prefill + decode step (TFLOP/s of the visible (query, key) pairs).

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "attention/paged_attention.h"
#include "cases.h"
#include "common/cuda_check.h"

namespace engine::bench {
namespace {

// A batch of sequences with their block tables (shuffled blocks, as after a while of serving),
// and the K/V cache they read, sized to hold exactly their context. Sequence b has
// query_lens[b] new tokens, the last of its contexts[b] positions.
struct AttentionBatch {
  std::vector<int> query_lens, contexts;
  int64_t num_tokens, blocks_per_seq;
  DeviceTensor q, out, k_cache, v_cache, query_start_loc, seq_lens, block_table;
  AttentionMetadata meta;

  static int64_t sum(const std::vector<int>& v) { return std::accumulate(v.begin(), v.end(), 0L); }
  static int max_of(const std::vector<int>& v) { return *std::max_element(v.begin(), v.end()); }
  static std::vector<int32_t> prefix_sums(const std::vector<int>& lens) {
    std::vector<int32_t> v(lens.size() + 1, 0);
    for (size_t s = 0; s < lens.size(); ++s) v[s + 1] = v[s] + lens[s];
    return v;
  }
  static std::vector<int32_t> shuffled_blocks(int64_t count) {
    std::vector<int32_t> v(count);
    std::iota(v.begin(), v.end(), 1);  // block 0 is the null block
    std::shuffle(v.begin(), v.end(), std::mt19937(1234));
    return v;
  }

  AttentionBatch(const ModelShape& m, std::vector<int> query_lens_, std::vector<int> contexts_,
                 DType cache_dtype = DType::kBF16)
      : query_lens(std::move(query_lens_)),
        contexts(std::move(contexts_)),
        num_tokens(sum(query_lens)),
        blocks_per_seq((max_of(contexts) + m.block_size - 1) / m.block_size),
        q(DType::kBF16, {num_tokens, m.num_q_heads, m.head_dim}),
        out(DType::kBF16, {num_tokens, m.num_q_heads, m.head_dim}),
        k_cache(cache_dtype, {int64_t(contexts.size()) * blocks_per_seq + 1, m.block_size,
                              m.num_kv_heads, m.head_dim}),
        v_cache(cache_dtype, k_cache.t().shape),
        query_start_loc(upload_i32(prefix_sums(query_lens), {int64_t(contexts.size()) + 1})),
        seq_lens(upload_i32(std::vector<int32_t>(contexts.begin(), contexts.end()),
                            {int64_t(contexts.size())})),
        block_table(upload_i32(shuffled_blocks(int64_t(contexts.size()) * blocks_per_seq),
                               {int64_t(contexts.size()), blocks_per_seq})) {
    q.random();
    k_cache.random();
    v_cache.random();
    meta.num_seqs = static_cast<int>(contexts.size());
    meta.max_query_len = max_of(query_lens);
    meta.max_seq_len = max_of(contexts);
    meta.max_blocks_per_seq = static_cast<int>(blocks_per_seq);
    meta.query_start_loc = query_start_loc.t();
    meta.seq_lens = seq_lens.t();
    meta.block_table = block_table.t();
  }

  // QK^T and PV, 2 flops per multiply-add each, over the visible (query, key) pairs: new token i
  // of a sequence sees the context - query_len + i + 1 keys up to its own position.
  double flops(const ModelShape& m) const {
    double pairs = 0;
    for (size_t s = 0; s < contexts.size(); ++s) {
      const double n = query_lens[s], before = contexts[s] - query_lens[s];
      pairs += n * before + n * (n + 1) / 2;
    }
    return 4.0 * pairs * m.num_q_heads * m.head_dim;
  }

  void run(const ModelShape& m, cuda::PrefillKernel kernel = cuda::PrefillKernel::kAuto) const {
    cuda::paged_attention(out.t(), q.t(), k_cache.t(), v_cache.t(), meta,
                          1.0f / std::sqrt(static_cast<float>(m.head_dim)), std::nullopt, nullptr,
                          kernel);
    EMBER_CUDA_CHECK_LAUNCH();
  }
};

// cache_dtype: bf16, or fp8 e4m3 (kv_cache_dtype "fp8": half the bytes per step).
void decode_case(Bench& bench, const ModelShape& m, int batch, int context,
                 DType cache_dtype = DType::kBF16) {
  const bool fp8 = cache_dtype == DType::kFP8E4M3;
  const std::string kernel = fp8 ? "attention decode, fp8 cache" : "attention decode";
  const std::string shape =
      "batch " + std::to_string(batch) + ", context " + std::to_string(context) + ", 32/8 heads";
  if (!bench.selected(kernel, shape)) return;
  AttentionBatch b(m, std::vector<int>(batch, 1), std::vector<int>(batch, context), cache_dtype);
  const double us = bench.time_device_us([&] { b.run(m); });
  const double kv_bytes =
      2.0 * batch * context * m.num_kv_heads * m.head_dim * double(dtype_size(cache_dtype));
  bench.add(kernel, shape, us, kv_bytes, 0, "GB/s of K+V read");
}

// Batches with new tokens beyond one per sequence (the tensor-core kernels; `which` pins one),
// timed in TFLOP/s of the visible pairs only (the causal half of a fresh prefill).
void prefill_case(Bench& bench, const ModelShape& m, const std::string& kernel,
                  const std::string& shape, std::vector<int> query_lens, std::vector<int> contexts,
                  const std::string& note, cuda::PrefillKernel which = cuda::PrefillKernel::kAuto,
                  DType cache_dtype = DType::kBF16) {
  if (!bench.selected(kernel, shape)) return;
  AttentionBatch b(m, std::move(query_lens), std::move(contexts), cache_dtype);
  const double us = bench.time_device_us([&] { b.run(m, which); });
  bench.add(kernel, shape, us, 0, b.flops(m), note);
}

}  // namespace

void bench_attention(Bench& bench, const ModelShape& m) {
  for (int context : {512, 4096})
    for (int batch : {1, 8, 64, 256}) decode_case(bench, m, batch, context);
  for (int batch : {8, 64, 256}) decode_case(bench, m, batch, 4096, DType::kFP8E4M3);
  prefill_case(bench, m, "attention prefill (causal), fp8 cache", "1 x 4096 tokens", {4096}, {4096},
               "flops of the causal half", cuda::PrefillKernel::kAuto, DType::kFP8E4M3);
  const std::string causal = "attention prefill (causal)", note = "flops of the causal half";
  prefill_case(bench, m, causal, "1 x 4096 tokens", {4096}, {4096}, note);
  prefill_case(bench, m, causal, "8 x 512 tokens", std::vector<int>(8, 512),
               std::vector<int>(8, 512), note);
  prefill_case(bench, m, causal, "1 x 16384 tokens", {16384}, {16384}, note);
  prefill_case(bench, m, "attention prefill chunk", "2048 new over context 8192", {2048}, {8192},
               "flops of visible pairs");
  // A chunked-prefill step: one 2048-token chunk beside 64 decodes, all in one launch.
  std::vector<int> query_lens(65, 1), contexts(65, 4096);
  query_lens[0] = 2048;
  contexts[0] = 2048;
  prefill_case(bench, m, "attention mixed", "2048-token prefill + 64 decodes at 4096", query_lens,
               contexts, "flops of visible pairs");
  // Each prefill kernel pinned, for comparison (wgmma only where it runs: Hopper, sm_90a).
  prefill_case(bench, m, causal + ", mma.sync", "1 x 4096 tokens", {4096}, {4096}, note,
               cuda::PrefillKernel::kMmaSync);
  try {
    prefill_case(bench, m, causal + ", wgmma", "1 x 4096 tokens", {4096}, {4096}, note,
                 cuda::PrefillKernel::kWgmma);
  } catch (const std::invalid_argument&) {
    // not this device or build
  }
}

}  // namespace engine::bench
