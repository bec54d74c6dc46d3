// The CUDA paged attention against the CPU reference (engine::cpu::paged_attention) on fp32
// copies of the same bf16/fp16-rounded inputs. Every case draws fresh random inputs, shuffles
// the block table, NaN-poisons the output and every cache slot no sequence owns (they must
// never be read), and checks every output element. Skips without a GPU.
//
// Tolerances: the kernel computes in fp32 like the reference, so the difference is the final
// rounding of the output (2^-9 relative for bf16, 2^-11 for fp16) plus fp32 summation order:
// |gpu - ref| <= atol + rtol * |ref| with (5e-3, 1e-2) for bf16 and (1e-3, 2e-3) for fp16.

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "attention/paged_attention.h"
#include "backend/cpu/attention.h"
#include "common/cuda_check.h"
#include "common/device.h"

namespace engine::cuda {
namespace {

// Owns one device allocation.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t nbytes) {
    EMBER_CUDA_CHECK(cudaMalloc(&ptr_, std::max<size_t>(nbytes, 16)));
  }
  ~DeviceBuffer() { cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* get() const { return ptr_; }

 private:
  void* ptr_ = nullptr;
};

template <typename V>
void upload(const DeviceBuffer& dst, const std::vector<V>& src) {
  EMBER_CUDA_CHECK(
      cudaMemcpy(dst.get(), src.data(), src.size() * sizeof(V), cudaMemcpyHostToDevice));
}

uint16_t to_bits(float f, DType dtype) {
  return dtype == DType::kBF16 ? float_to_bf16(f) : float_to_fp16(f);
}
float from_bits(uint16_t v, DType dtype) {
  return dtype == DType::kBF16 ? bf16_to_float(v) : fp16_to_float(v);
}
uint16_t nan_bits(DType dtype) { return dtype == DType::kBF16 ? 0x7FC0 : 0x7E00; }

struct Case {
  std::vector<int> query_lens;  // new tokens per sequence
  std::vector<int> seq_lens;    // context per sequence after this step
  int num_q_heads = 8, num_kv_heads = 2, head_dim = 128, block_size = 16;
  std::optional<int> window;
  DType dtype = DType::kBF16;
  uint32_t seed = 1;
};

std::string describe(const Case& c) {
  return std::string(dtype_name(c.dtype)) + " Hq=" + std::to_string(c.num_q_heads) +
         " Hk=" + std::to_string(c.num_kv_heads) + " D=" + std::to_string(c.head_dim) +
         " block=" + std::to_string(c.block_size) +
         " window=" + (c.window ? std::to_string(*c.window) : "none") +
         " B=" + std::to_string(c.seq_lens.size());
}

// Builds the case, runs both kernels, compares every element.
void run_case(const Case& c) {
  SCOPED_TRACE(describe(c));
  std::mt19937 rng(c.seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int num_seqs = static_cast<int>(c.seq_lens.size());
  const int hq = c.num_q_heads, hk = c.num_kv_heads, dim = c.head_dim, bs = c.block_size;

  std::vector<int32_t> query_start(num_seqs + 1, 0);
  int max_query_len = 0, max_seq_len = 0, max_blocks = 1, num_used_blocks = 0;
  for (int b = 0; b < num_seqs; ++b) {
    query_start[b + 1] = query_start[b] + c.query_lens[b];
    max_query_len = std::max(max_query_len, c.query_lens[b]);
    max_seq_len = std::max(max_seq_len, c.seq_lens[b]);
    const int blocks = (c.seq_lens[b] + bs - 1) / bs;
    max_blocks = std::max(max_blocks, blocks);
    num_used_blocks += blocks;
  }
  const int num_tokens = query_start[num_seqs];
  // Block 0 is the null block; a few spare blocks stay unowned (NaN) as well.
  const int num_blocks = num_used_blocks + 1 + 3;
  std::vector<int32_t> free_blocks(num_blocks - 1);
  std::iota(free_blocks.begin(), free_blocks.end(), 1);
  std::shuffle(free_blocks.begin(), free_blocks.end(), rng);
  std::vector<int32_t> block_table(size_t(num_seqs) * max_blocks, 0);
  size_t next_block = 0;
  for (int b = 0; b < num_seqs; ++b)
    for (int i = 0; i < (c.seq_lens[b] + bs - 1) / bs; ++i)
      block_table[size_t(b) * max_blocks + i] = free_blocks[next_block++];

  const size_t cache_elems = size_t(num_blocks) * bs * hk * dim;
  std::vector<uint16_t> k_bits(cache_elems, nan_bits(c.dtype)), v_bits = k_bits;
  for (int b = 0; b < num_seqs; ++b)
    for (int j = 0; j < c.seq_lens[b]; ++j) {
      const size_t slot = size_t(block_table[size_t(b) * max_blocks + j / bs]) * bs + j % bs;
      for (size_t e = slot * hk * dim; e < (slot + 1) * hk * dim; ++e) {
        k_bits[e] = to_bits(normal(rng), c.dtype);
        v_bits[e] = to_bits(normal(rng), c.dtype);
      }
    }
  std::vector<uint16_t> q_bits(size_t(num_tokens) * hq * dim);
  for (auto& x : q_bits) x = to_bits(normal(rng), c.dtype);

  std::vector<float> q_f(q_bits.size()), k_f(cache_elems), v_f(cache_elems);
  for (size_t i = 0; i < q_bits.size(); ++i) q_f[i] = from_bits(q_bits[i], c.dtype);
  for (size_t i = 0; i < cache_elems; ++i) {
    k_f[i] = from_bits(k_bits[i], c.dtype);
    v_f[i] = from_bits(v_bits[i], c.dtype);
  }
  std::vector<float> ref(q_f.size(), std::nanf(""));
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  std::vector<int32_t> seq_lens(c.seq_lens.begin(), c.seq_lens.end());
  cpu::paged_attention(Tensor(ref.data(), DType::kF32, {num_tokens, hq, dim}),
                       Tensor(q_f.data(), DType::kF32, {num_tokens, hq, dim}),
                       Tensor(k_f.data(), DType::kF32, {num_blocks, bs, hk, dim}),
                       Tensor(v_f.data(), DType::kF32, {num_blocks, bs, hk, dim}),
                       Tensor(query_start.data(), DType::kI32, {num_seqs + 1}),
                       Tensor(seq_lens.data(), DType::kI32, {num_seqs}),
                       Tensor(block_table.data(), DType::kI32, {num_seqs, max_blocks}), scale,
                       c.window);

  DeviceBuffer d_q(q_bits.size() * 2), d_out(q_bits.size() * 2), d_k(cache_elems * 2),
      d_v(cache_elems * 2), d_qsl(query_start.size() * 4), d_lens(seq_lens.size() * 4),
      d_table(block_table.size() * 4);
  upload(d_q, q_bits);
  upload(d_k, k_bits);
  upload(d_v, v_bits);
  upload(d_qsl, query_start);
  upload(d_lens, seq_lens);
  upload(d_table, block_table);
  EMBER_CUDA_CHECK(cudaMemset(d_out.get(), 0xFF, q_bits.size() * 2));  // NaN in both dtypes

  const auto dev = DeviceType::kCuda;
  AttentionMetadata meta;
  meta.num_seqs = num_seqs;
  meta.max_query_len = max_query_len;
  meta.max_seq_len = max_seq_len;
  meta.max_blocks_per_seq = max_blocks;
  meta.query_start_loc = Tensor(d_qsl.get(), DType::kI32, {num_seqs + 1}, dev);
  meta.seq_lens = Tensor(d_lens.get(), DType::kI32, {num_seqs}, dev);
  meta.block_table = Tensor(d_table.get(), DType::kI32, {num_seqs, max_blocks}, dev);
  paged_attention(Tensor(d_out.get(), c.dtype, {num_tokens, hq, dim}, dev),
                  Tensor(d_q.get(), c.dtype, {num_tokens, hq, dim}, dev),
                  Tensor(d_k.get(), c.dtype, {num_blocks, bs, hk, dim}, dev),
                  Tensor(d_v.get(), c.dtype, {num_blocks, bs, hk, dim}, dev), meta, scale, c.window,
                  nullptr);
  EMBER_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<uint16_t> out_bits(q_bits.size());
  EMBER_CUDA_CHECK(
      cudaMemcpy(out_bits.data(), d_out.get(), out_bits.size() * 2, cudaMemcpyDeviceToHost));

  const float atol = c.dtype == DType::kBF16 ? 5e-3f : 1e-3f;
  const float rtol = c.dtype == DType::kBF16 ? 1e-2f : 2e-3f;
  int64_t num_bad = 0;
  double max_err = 0.0;
  for (size_t i = 0; i < out_bits.size(); ++i) {
    const float got = from_bits(out_bits[i], c.dtype), want = ref[i];
    const float err = std::fabs(got - want);
    const bool ok =
        std::isfinite(got) && std::isfinite(want) && err <= atol + rtol * std::fabs(want);
    if (!ok && num_bad < 5) {
      ADD_FAILURE() << "element " << i << " (token " << i / (size_t(hq) * dim) << ", head "
                    << i / dim % hq << ", dim " << i % dim << "): got " << got << ", want " << want;
    }
    num_bad += !ok;
    if (std::isfinite(err)) max_err = std::max(max_err, double(err));
  }
  EXPECT_EQ(num_bad, 0) << "of " << out_bits.size() << " elements; max abs error " << max_err;
}

class CudaPagedAttention : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

// Shapes swept by the sweeps below: GQA ratio, head_dim, dtype.
struct HeadShape {
  int num_q_heads, num_kv_heads, head_dim;
  DType dtype;
};
std::vector<HeadShape> head_shapes() {
  std::vector<HeadShape> shapes;
  for (DType dtype : {DType::kBF16, DType::kF16})
    for (int dim : {64, 128})
      for (auto [hq, hk] : {std::pair{4, 4}, {8, 2}, {16, 2}})
        shapes.push_back({hq, hk, dim, dtype});
  return shapes;
}

TEST_F(CudaPagedAttention, DecodeOnly) {
  uint32_t seed = 100;
  for (int block_size : {16, 5, 33})
    for (const HeadShape& h : head_shapes()) {
      Case c{{1, 1, 1, 1},   {1, 17, 100, 1000}, h.num_q_heads,
             h.num_kv_heads, h.head_dim,         block_size};
      c.dtype = h.dtype;
      c.seed = seed++;
      run_case(c);
    }
}

// Decodes, a prefill chunk over a cached prefix, a fresh prefill and a long chunk spanning many
// query tiles, in one batch.
TEST_F(CudaPagedAttention, MixedBatch) {
  uint32_t seed = 200;
  for (int block_size : {16, 7})
    for (const HeadShape& h : head_shapes()) {
      Case c{{1, 1, 37, 45, 1, 130},
             {1, 300, 237, 45, 64, 200},
             h.num_q_heads,
             h.num_kv_heads,
             h.head_dim,
             block_size};
      c.dtype = h.dtype;
      c.seed = seed++;
      run_case(c);
    }
}

TEST_F(CudaPagedAttention, SlidingWindow) {
  uint32_t seed = 300;
  for (int window : {1, 32, 100})
    for (int block_size : {16, 3}) {
      Case c{{1, 1, 37, 45, 1, 70}, {1, 1000, 237, 45, 64, 200}, 8, 2, 128, block_size, window};
      c.seed = seed++;
      run_case(c);
      c.dtype = DType::kF16;
      c.head_dim = 64;
      c.seed = seed++;
      run_case(c);
    }
}

// Few sequences with long contexts take the split (flash-decoding) path, including splits that
// lie wholly past a short sequence's end.
TEST_F(CudaPagedAttention, LongContextSplits) {
  uint32_t seed = 400;
  for (const HeadShape& h : head_shapes()) {
    Case c{{1}, {3000}, h.num_q_heads, h.num_kv_heads, h.head_dim, 16};
    c.dtype = h.dtype;
    c.seed = seed++;
    run_case(c);
    Case mixed{{1, 1, 1, 1}, {1, 17, 700, 4099}, h.num_q_heads, h.num_kv_heads, h.head_dim, 13};
    mixed.dtype = h.dtype;
    mixed.seed = seed++;
    mixed.window = (seed % 2) ? std::optional<int>(1500) : std::nullopt;
    run_case(mixed);
  }
}

TEST_F(CudaPagedAttention, Batch64Decode) {
  std::mt19937 rng(500);
  std::uniform_int_distribution<int> context(1, 1500);
  for (const HeadShape& h : {HeadShape{32, 8, 128, DType::kBF16}, HeadShape{8, 8, 64, DType::kF16},
                             HeadShape{32, 4, 128, DType::kF16}}) {
    Case c{std::vector<int>(64, 1), {}, h.num_q_heads, h.num_kv_heads, h.head_dim, 16};
    for (int b = 0; b < 64; ++b) c.seq_lens.push_back(context(rng));
    c.dtype = h.dtype;
    c.seed = rng();
    run_case(c);
  }
}

// The decode kernel's head chunks (1, 2 and 4 heads, a partly empty last chunk at group 3 and 6),
// sliding windows shorter and longer than a chunk, and batch sizes on both sides of the split
// threshold, with sequences that have no new token this step.
TEST_F(CudaPagedAttention, DecodeGroupsWindowsAndSplits) {
  uint32_t seed = 700;
  for (auto [hq, hk] : {std::pair{2, 2}, {4, 2}, {6, 2}, {12, 2}})
    for (int num_seqs : {3, 40})
      for (std::optional<int> window : {std::optional<int>(), std::optional<int>(1),
                                        std::optional<int>(7), std::optional<int>(300)}) {
        Case c{{}, {}, hq, hk, seed % 2 ? 128 : 64, seed % 3 ? 16 : 11, window};
        std::mt19937 rng(seed);
        std::uniform_int_distribution<int> context(1, 2500);
        for (int b = 0; b < num_seqs; ++b) {
          c.query_lens.push_back(b % 5 == 4 ? 0 : 1);
          c.seq_lens.push_back(context(rng));
        }
        c.dtype = seed % 4 < 2 ? DType::kBF16 : DType::kF16;
        c.seed = seed++;
        run_case(c);
      }
}

TEST_F(CudaPagedAttention, Batch1Prefill) {
  for (const HeadShape& h : head_shapes()) {
    Case c{{300}, {300}, h.num_q_heads, h.num_kv_heads, h.head_dim, 16};
    c.dtype = h.dtype;
    c.seed = 600 + h.head_dim + h.num_q_heads;
    run_case(c);
  }
}

// More query heads per kv head than one CTA carries (MQA with 40 heads: 16 + 16 + 8).
TEST_F(CudaPagedAttention, LargeGroupSplitsHeadsAcrossCtas) {
  Case decode{{1, 1}, {50, 2000}, 40, 1, 128, 16};
  run_case(decode);
  Case mixed{{1, 20}, {50, 120}, 40, 1, 64, 16};
  mixed.dtype = DType::kF16;
  run_case(mixed);
}

TEST_F(CudaPagedAttention, RejectsBadShapesNamingTheTensor) {
  const auto dev = DeviceType::kCuda;
  DeviceBuffer buf(1 << 20);
  AttentionMetadata meta;
  meta.num_seqs = 1;
  meta.max_query_len = 1;
  meta.max_seq_len = 1;
  meta.max_blocks_per_seq = 1;
  meta.query_start_loc = Tensor(buf.get(), DType::kI32, {2}, dev);
  meta.seq_lens = Tensor(buf.get(), DType::kI32, {1}, dev);
  meta.block_table = Tensor(buf.get(), DType::kI32, {1, 1}, dev);
  auto message_of = [&](Tensor out, Tensor q, Tensor k, Tensor v) -> std::string {
    try {
      paged_attention(out, q, k, v, meta, 1.0f, std::nullopt, nullptr);
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
    return "no exception";
  };
  const Tensor q96(buf.get(), DType::kBF16, {1, 4, 96}, dev);
  const Tensor k96(buf.get(), DType::kBF16, {4, 16, 2, 96}, dev);
  EXPECT_NE(message_of(q96, q96, k96, k96).find("supported: 64, 128"), std::string::npos);
  const Tensor q(buf.get(), DType::kBF16, {1, 4, 64}, dev);
  const Tensor k(buf.get(), DType::kBF16, {4, 16, 2, 64}, dev);
  const Tensor k_f16(buf.get(), DType::kF16, {4, 16, 2, 64}, dev);
  EXPECT_NE(message_of(q, q, k_f16, k_f16).find("k_cache is float16"), std::string::npos);
  const Tensor k3(buf.get(), DType::kBF16, {4, 16, 3, 64}, dev);
  EXPECT_NE(message_of(q, q, k3, k3).find("multiple"), std::string::npos);
  const Tensor q_cpu(buf.get(), DType::kBF16, {1, 4, 64});
  EXPECT_NE(message_of(q, q_cpu, k, k).find("q [1, 4, 64] must be a defined CUDA tensor"),
            std::string::npos);
}

void time_decode(int num_seqs) {
  const int context = 4096, hq = 32, hk = 8, dim = 128, bs = 16;
  const int blocks_per_seq = context / bs, num_blocks = num_seqs * blocks_per_seq + 1;
  const size_t cache_elems = size_t(num_blocks) * bs * hk * dim;
  DeviceBuffer d_k(cache_elems * 2), d_v(cache_elems * 2), d_q(size_t(num_seqs) * hq * dim * 2),
      d_out(size_t(num_seqs) * hq * dim * 2), d_qsl((num_seqs + 1) * 4), d_lens(num_seqs * 4),
      d_table(size_t(num_seqs) * blocks_per_seq * 4);
  // Random bf16 values: a 1M-element pattern copied across the caches.
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const size_t pattern_elems = size_t(1) << 20;
  std::vector<uint16_t> pattern(pattern_elems);
  for (auto& x : pattern) x = float_to_bf16(normal(rng));
  DeviceBuffer d_pattern(pattern_elems * 2);
  upload(d_pattern, pattern);
  for (void* dst : {d_k.get(), d_v.get()})
    for (size_t e = 0; e < cache_elems; e += pattern_elems) {
      const size_t n = std::min(pattern_elems, cache_elems - e);
      EMBER_CUDA_CHECK(cudaMemcpy(static_cast<uint16_t*>(dst) + e, d_pattern.get(), n * 2,
                                  cudaMemcpyDeviceToDevice));
    }
  EMBER_CUDA_CHECK(cudaMemcpy(d_q.get(), d_pattern.get(), size_t(num_seqs) * hq * dim * 2,
                              cudaMemcpyDeviceToDevice));
  std::vector<int32_t> query_start(num_seqs + 1), seq_lens(num_seqs, context),
      table(size_t(num_seqs) * blocks_per_seq);
  std::iota(query_start.begin(), query_start.end(), 0);
  std::iota(table.begin(), table.end(), 1);
  std::shuffle(table.begin(), table.end(), rng);
  upload(d_qsl, query_start);
  upload(d_lens, seq_lens);
  upload(d_table, table);

  const auto dev = DeviceType::kCuda;
  AttentionMetadata meta;
  meta.num_seqs = num_seqs;
  meta.max_query_len = 1;
  meta.max_seq_len = context;
  meta.max_blocks_per_seq = blocks_per_seq;
  meta.query_start_loc = Tensor(d_qsl.get(), DType::kI32, {num_seqs + 1}, dev);
  meta.seq_lens = Tensor(d_lens.get(), DType::kI32, {num_seqs}, dev);
  meta.block_table = Tensor(d_table.get(), DType::kI32, {num_seqs, blocks_per_seq}, dev);
  const Tensor out(d_out.get(), DType::kBF16, {num_seqs, hq, dim}, dev);
  const Tensor q(d_q.get(), DType::kBF16, {num_seqs, hq, dim}, dev);
  const Tensor k(d_k.get(), DType::kBF16, {num_blocks, bs, hk, dim}, dev);
  const Tensor v(d_v.get(), DType::kBF16, {num_blocks, bs, hk, dim}, dev);
  const float scale = 1.0f / std::sqrt(float(dim));
  for (int i = 0; i < 5; ++i) paged_attention(out, q, k, v, meta, scale, std::nullopt, nullptr);
  cudaEvent_t start, stop;
  EMBER_CUDA_CHECK(cudaEventCreate(&start));
  EMBER_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<float> times_ms;
  for (int i = 0; i < 20; ++i) {
    EMBER_CUDA_CHECK(cudaEventRecord(start));
    paged_attention(out, q, k, v, meta, scale, std::nullopt, nullptr);
    EMBER_CUDA_CHECK(cudaEventRecord(stop));
    EMBER_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0.0f;
    EMBER_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    times_ms.push_back(ms);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(times_ms.begin(), times_ms.end());
  const double median_ms = times_ms[times_ms.size() / 2];
  const double kv_bytes = 2.0 * num_seqs * context * hk * dim * 2;  // K and V, bf16
  std::printf(
      "paged_attention decode B=%d ctx=%d Hq=%d Hk=%d D=%d block=%d bf16: median %.1f us "
      "(min %.1f), KV read %.0f GB/s (%.0f%% of 4278 GB/s copy)\n",
      num_seqs, context, hq, hk, dim, bs, median_ms * 1e3, times_ms.front() * 1e3,
      kv_bytes / (median_ms * 1e-3) / 1e9, kv_bytes / (median_ms * 1e-3) / 4278e9 * 100);
  std::vector<uint16_t> out_bits(size_t(num_seqs) * hq * dim);
  EMBER_CUDA_CHECK(
      cudaMemcpy(out_bits.data(), d_out.get(), out_bits.size() * 2, cudaMemcpyDeviceToHost));
  for (uint16_t x : out_bits) ASSERT_TRUE(std::isfinite(bf16_to_float(x)));
}

// Not a correctness check: prints the achieved KV-read bandwidth of a Llama-3-8B-shaped decode
// step (context 4096, 32 q heads, 8 kv heads, head_dim 128, block 16, bf16) at batch 64, and at
// batch 8, which takes the split path.
TEST_F(CudaPagedAttention, TimingDecodeBatch64Context4096) {
  time_decode(64);
  time_decode(8);
}

}  // namespace
}  // namespace engine::cuda
