// The CUDA paged attention against the CPU reference (engine::cpu::paged_attention, fp32) on fp32
// copies of the same bf16/fp16-rounded inputs. Every case draws fresh random inputs, shuffles
// the block table, NaN-poisons the output and every cache slot no sequence owns (they must
// never be read), and checks every output element. Batches with prefill chunks also run each
// such sequence alone and expect the same bits as in the batch. An fp8 cache holds e4m3 codes of
// value / scale; the reference reads exactly the values they stand for (code * scale) in fp32.
// Skips without a GPU.
//
// Tolerances (check_outputs): |gpu - ref| <= atol + rtol * |ref| (+ u * |attention of |V||
// where the kernel rounds probabilities to the dtype), with (atol, rtol) = (5e-3, 1e-2) for
// bf16 and (1e-3, 2e-3) for fp16 and u the dtype's unit roundoff.

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
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
  bool fp8_cache = false;  // the cache in fp8 e4m3 rather than dtype
  KVCacheScales scales;
};

std::string describe(const Case& c) {
  return std::string(dtype_name(c.dtype)) + (c.fp8_cache ? " fp8 cache" : "") +
         " Hq=" + std::to_string(c.num_q_heads) + " Hk=" + std::to_string(c.num_kv_heads) +
         " D=" + std::to_string(c.head_dim) + " block=" + std::to_string(c.block_size) +
         " window=" + (c.window ? std::to_string(*c.window) : "none") +
         " B=" + std::to_string(c.seq_lens.size());
}

// A case's inputs on the host (bf16/fp16 bits) and their fp32 copies for the CPU reference.
struct Inputs {
  int num_seqs = 0, num_tokens = 0, num_blocks = 0, max_blocks = 1, max_query_len = 0,
      max_seq_len = 0;
  std::vector<int32_t> query_start, seq_lens, block_table;
  std::vector<uint16_t> q_bits, k_bits, v_bits;
  std::vector<uint8_t> k_fp8, v_fp8;  // fp8 caches: e4m3 codes of value / scale
  std::vector<float> q_f, k_f, v_f;   // what the cache holds counts as (code * scale for fp8)
};

// An fp8 cache: the e4m3 code of each bf16/fp16-rounded value / scale (NaN codes stay NaN), and
// the value the code stands for.
void quantize_cache(const std::vector<float>& values, float scale, std::vector<uint8_t>& codes,
                    std::vector<float>& stands_for) {
  codes.clear();
  stands_for.clear();
  for (float x : values) {
    codes.push_back(float_to_fp8_e4m3(x * (1.0f / scale)));
    stands_for.push_back(fp8_e4m3_to_float(codes.back()) * scale);
  }
}

// Fresh random inputs: normal q/k/v, a shuffled block table, and NaN in every cache slot no
// sequence owns (the kernels must never read them).
Inputs make_inputs(const Case& c) {
  std::mt19937 rng(c.seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Inputs in;
  in.num_seqs = static_cast<int>(c.seq_lens.size());
  const int hq = c.num_q_heads, hk = c.num_kv_heads, dim = c.head_dim, bs = c.block_size;
  in.query_start.assign(in.num_seqs + 1, 0);
  int num_used_blocks = 0;
  for (int b = 0; b < in.num_seqs; ++b) {
    in.query_start[b + 1] = in.query_start[b] + c.query_lens[b];
    in.max_query_len = std::max(in.max_query_len, c.query_lens[b]);
    in.max_seq_len = std::max(in.max_seq_len, c.seq_lens[b]);
    const int blocks = (c.seq_lens[b] + bs - 1) / bs;
    in.max_blocks = std::max(in.max_blocks, blocks);
    num_used_blocks += blocks;
  }
  in.num_tokens = in.query_start[in.num_seqs];
  in.seq_lens.assign(c.seq_lens.begin(), c.seq_lens.end());
  // Block 0 is the null block; a few spare blocks stay unowned (NaN) as well.
  in.num_blocks = num_used_blocks + 1 + 3;
  std::vector<int32_t> free_blocks(in.num_blocks - 1);
  std::iota(free_blocks.begin(), free_blocks.end(), 1);
  std::shuffle(free_blocks.begin(), free_blocks.end(), rng);
  in.block_table.assign(size_t(in.num_seqs) * in.max_blocks, 0);
  size_t next_block = 0;
  for (int b = 0; b < in.num_seqs; ++b)
    for (int i = 0; i < (c.seq_lens[b] + bs - 1) / bs; ++i)
      in.block_table[size_t(b) * in.max_blocks + i] = free_blocks[next_block++];

  const size_t cache_elems = size_t(in.num_blocks) * bs * hk * dim;
  in.k_bits.assign(cache_elems, nan_bits(c.dtype));
  in.v_bits = in.k_bits;
  for (int b = 0; b < in.num_seqs; ++b)
    for (int j = 0; j < c.seq_lens[b]; ++j) {
      const size_t slot = size_t(in.block_table[size_t(b) * in.max_blocks + j / bs]) * bs + j % bs;
      for (size_t e = slot * hk * dim; e < (slot + 1) * hk * dim; ++e) {
        in.k_bits[e] = to_bits(normal(rng), c.dtype);
        in.v_bits[e] = to_bits(normal(rng), c.dtype);
      }
    }
  in.q_bits.resize(size_t(in.num_tokens) * hq * dim);
  for (auto& x : in.q_bits) x = to_bits(normal(rng), c.dtype);
  for (uint16_t x : in.q_bits) in.q_f.push_back(from_bits(x, c.dtype));
  for (uint16_t x : in.k_bits) in.k_f.push_back(from_bits(x, c.dtype));
  for (uint16_t x : in.v_bits) in.v_f.push_back(from_bits(x, c.dtype));
  if (c.fp8_cache) {
    quantize_cache(std::vector<float>(in.k_f), c.scales.k, in.k_fp8, in.k_f);
    quantize_cache(std::vector<float>(in.v_f), c.scales.v, in.v_fp8, in.v_f);
  }
  return in;
}

float scale_of(const Case& c) { return 1.0f / std::sqrt(static_cast<float>(c.head_dim)); }

// The CPU backend's fp32 attention on the rounded inputs; with abs_v, of |V| instead of V (the
// magnitude that bounds the rounding error of the probabilities, see check_outputs).
std::vector<float> reference(const Case& c, const Inputs& in, bool abs_v) {
  const int hq = c.num_q_heads, hk = c.num_kv_heads, dim = c.head_dim;
  std::vector<float> v = in.v_f;
  if (abs_v)
    for (float& x : v) x = std::fabs(x);
  std::vector<float> ref(in.q_f.size(), std::nanf(""));
  std::vector<float> q = in.q_f, k = in.k_f;
  std::vector<int32_t> query_start = in.query_start, seq_lens = in.seq_lens, table = in.block_table;
  cpu::paged_attention(Tensor(ref.data(), DType::kF32, {in.num_tokens, hq, dim}),
                       Tensor(q.data(), DType::kF32, {in.num_tokens, hq, dim}),
                       Tensor(k.data(), DType::kF32, {in.num_blocks, c.block_size, hk, dim}),
                       Tensor(v.data(), DType::kF32, {in.num_blocks, c.block_size, hk, dim}),
                       Tensor(query_start.data(), DType::kI32, {in.num_seqs + 1}),
                       Tensor(seq_lens.data(), DType::kI32, {in.num_seqs}),
                       Tensor(table.data(), DType::kI32, {in.num_seqs, in.max_blocks}), scale_of(c),
                       c.window);
  return ref;
}

// The case's caches on the device; runs the CUDA kernel on the whole batch or on a sub-batch of
// its sequences (same caches and block-table rows), each time into a NaN-poisoned output.
class DeviceCase {
 public:
  DeviceCase(const Case& c, const Inputs& in)
      : c_(c), in_(in), k_(in.k_bits.size() * 2), v_(in.v_bits.size() * 2) {
    if (c.fp8_cache) {
      upload(k_, in.k_fp8);
      upload(v_, in.v_fp8);
    } else {
      upload(k_, in.k_bits);
      upload(v_, in.v_bits);
    }
  }

  // Output bits of sequences [first, first + count) ([their tokens, Hq, D]).
  std::vector<uint16_t> run(int first, int count, PrefillKernel kernel) const {
    const int hq = c_.num_q_heads, hk = c_.num_kv_heads, dim = c_.head_dim;
    const int token_begin = in_.query_start[first], token_end = in_.query_start[first + count];
    const int num_tokens = token_end - token_begin;
    std::vector<int32_t> query_start(count + 1), seq_lens(count);
    int max_query_len = 0, max_seq_len = 0;
    for (int b = 0; b < count; ++b) {
      query_start[b + 1] = in_.query_start[first + b + 1] - token_begin;
      seq_lens[b] = in_.seq_lens[first + b];
      max_query_len = std::max(max_query_len, query_start[b + 1] - query_start[b]);
      max_seq_len = std::max(max_seq_len, seq_lens[b]);
    }
    const std::vector<int32_t> table(
        in_.block_table.begin() + size_t(first) * in_.max_blocks,
        in_.block_table.begin() + size_t(first + count) * in_.max_blocks);
    const std::vector<uint16_t> q(in_.q_bits.begin() + size_t(token_begin) * hq * dim,
                                  in_.q_bits.begin() + size_t(token_end) * hq * dim);
    DeviceBuffer d_q(q.size() * 2), d_out(q.size() * 2), d_qsl(query_start.size() * 4),
        d_lens(seq_lens.size() * 4), d_table(table.size() * 4);
    upload(d_q, q);
    upload(d_qsl, query_start);
    upload(d_lens, seq_lens);
    upload(d_table, table);
    EMBER_CUDA_CHECK(cudaMemset(d_out.get(), 0xFF, q.size() * 2));  // NaN in both dtypes

    const auto dev = DeviceType::kCuda;
    AttentionMetadata meta;
    meta.num_seqs = count;
    meta.max_query_len = max_query_len;
    meta.max_seq_len = max_seq_len;
    meta.max_blocks_per_seq = in_.max_blocks;
    meta.query_start_loc = Tensor(d_qsl.get(), DType::kI32, {count + 1}, dev);
    meta.seq_lens = Tensor(d_lens.get(), DType::kI32, {count}, dev);
    meta.block_table = Tensor(d_table.get(), DType::kI32, {count, in_.max_blocks}, dev);
    const DType cache_dtype = c_.fp8_cache ? DType::kFP8E4M3 : c_.dtype;
    const std::vector<int64_t> cache_shape{in_.num_blocks, c_.block_size, hk, dim};
    paged_attention(Tensor(d_out.get(), c_.dtype, {num_tokens, hq, dim}, dev),
                    Tensor(d_q.get(), c_.dtype, {num_tokens, hq, dim}, dev),
                    Tensor(k_.get(), cache_dtype, cache_shape, dev),
                    Tensor(v_.get(), cache_dtype, cache_shape, dev), meta, scale_of(c_), c_.window,
                    nullptr, kernel, c_.scales);
    EMBER_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<uint16_t> out(q.size());
    EMBER_CUDA_CHECK(cudaMemcpy(out.data(), d_out.get(), out.size() * 2, cudaMemcpyDeviceToHost));
    return out;
  }

 private:
  const Case& c_;
  const Inputs& in_;
  DeviceBuffer k_, v_;
};

// Tolerance: |gpu - ref| <= atol + rtol * |ref| + u * ref_abs. atol/rtol cover fp32 summation
// order and the output's rounding (rtol is above the dtype's unit roundoff u: 2^-8 for bf16,
// 2^-11 for fp16): (5e-3, 1e-2) for bf16, (1e-3, 2e-3) for fp16. The last term applies only to
// batches with max_query_len > 1, whose tensor-core kernel rounds each probability p_j to the
// dtype before P V (as FlashAttention does): each rounding moves p_j by at most u * p_j, so the
// output by at most u * sum_j p_j |v_j| / sum_j p_j = u * ref_abs, the attention of |V|.
void check_outputs(const Case& c, const std::vector<uint16_t>& out_bits,
                   const std::vector<float>& ref, const std::vector<float>& ref_abs,
                   bool rounds_probabilities) {
  const int hq = c.num_q_heads, dim = c.head_dim;
  const float atol = c.dtype == DType::kBF16 ? 5e-3f : 1e-3f;
  const float rtol = c.dtype == DType::kBF16 ? 1e-2f : 2e-3f;
  const float unit_roundoff = c.dtype == DType::kBF16 ? 1.0f / 256 : 1.0f / 2048;
  int64_t num_bad = 0;
  double max_err = 0.0;
  for (size_t i = 0; i < out_bits.size(); ++i) {
    const float got = from_bits(out_bits[i], c.dtype), want = ref[i];
    const float err = std::fabs(got - want);
    const float bound =
        atol + rtol * std::fabs(want) + (rounds_probabilities ? unit_roundoff * ref_abs[i] : 0.0f);
    const bool ok = std::isfinite(got) && std::isfinite(want) && err <= bound;
    if (!ok && num_bad < 5) {
      ADD_FAILURE() << "element " << i << " (token " << i / (size_t(hq) * dim) << ", head "
                    << i / dim % hq << ", dim " << i % dim << "): got " << got << ", want " << want
                    << ", bound " << bound;
    }
    num_bad += !ok;
    if (std::isfinite(err)) max_err = std::max(max_err, double(err));
  }
  EXPECT_EQ(num_bad, 0) << "of " << out_bits.size() << " elements; max abs error " << max_err;
}

// The prefill kernels a batch with max_query_len > 1 can take here: mma.sync everywhere, and
// wgmma on Hopper (the build targets sm_90a). EMBER_TEST_PREFILL_KERNEL=mma.sync or =wgmma keeps
// one, so that a crash of one kernel (a sticky CUDA error) cannot hide the other's results.
std::vector<PrefillKernel> prefill_kernels() {
  int device = 0, major = 0;
  EMBER_CUDA_CHECK(cudaGetDevice(&device));
  EMBER_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  std::vector<PrefillKernel> kernels = {PrefillKernel::kMmaSync};
  if (major == 9) kernels.push_back(PrefillKernel::kWgmma);
  const char* only = std::getenv("EMBER_TEST_PREFILL_KERNEL");
  if (only != nullptr && std::string(only) == "mma.sync") return {PrefillKernel::kMmaSync};
  if (only != nullptr && std::string(only) == "wgmma") return {PrefillKernel::kWgmma};
  return kernels;
}

const char* kernel_name(PrefillKernel kernel) {
  return kernel == PrefillKernel::kWgmma     ? "wgmma"
         : kernel == PrefillKernel::kMmaSync ? "mma.sync"
                                             : "auto";
}

// Builds the case, runs the CUDA kernel (each prefill kernel, for batches with prefill chunks)
// and the CPU reference, compares every element. With per_request, also runs each sequence with
// more than one new token alone and expects the very same bits as in the batch (its CTAs do the
// same work either way); single-token sequences alone form a decode batch, which takes the
// decode kernel, so they are compared by tolerance only.
void run_case(const Case& c, bool per_request = false) {
  SCOPED_TRACE(describe(c));
  const Inputs in = make_inputs(c);
  const std::vector<float> ref = reference(c, in, false);
  const bool rounds_probabilities = in.max_query_len > 1;
  const std::vector<float> ref_abs =
      rounds_probabilities ? reference(c, in, true) : std::vector<float>();
  const DeviceCase device(c, in);
  // The wgmma kernel reads a cache in the compute dtype only (CudaPagedAttention.Fp8Cache*).
  const std::vector<PrefillKernel> kernels =
      !rounds_probabilities ? std::vector<PrefillKernel>{PrefillKernel::kAuto}
      : c.fp8_cache         ? std::vector<PrefillKernel>{PrefillKernel::kMmaSync}
                            : prefill_kernels();
  for (PrefillKernel kernel : kernels) {
    SCOPED_TRACE(kernel_name(kernel));
    const std::vector<uint16_t> out = device.run(0, in.num_seqs, kernel);
    check_outputs(c, out, ref, ref_abs, rounds_probabilities);
    if (!per_request) continue;
    const size_t row = size_t(c.num_q_heads) * c.head_dim;
    for (int b = 0; b < in.num_seqs; ++b) {
      if (c.query_lens[b] <= 1) continue;
      const std::vector<uint16_t> alone = device.run(b, 1, kernel);
      const std::vector<uint16_t> in_batch(out.begin() + in.query_start[b] * row,
                                           out.begin() + in.query_start[b + 1] * row);
      EXPECT_TRUE(alone == in_batch)
          << "sequence " << b << " (" << c.query_lens[b] << " new tokens, context " << c.seq_lens[b]
          << ") run alone differs from the batch";
    }
  }
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
      run_case(c, /*per_request=*/true);
    }
}

TEST_F(CudaPagedAttention, SlidingWindow) {
  uint32_t seed = 300;
  for (int window : {1, 32, 100})
    for (int block_size : {16, 3}) {
      Case c{{1, 1, 37, 45, 1, 70}, {1, 1000, 237, 45, 64, 200}, 8, 2, 128, block_size, window};
      c.seed = seed++;
      run_case(c, /*per_request=*/true);
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

// More query heads per kv head than one CTA carries: the decode kernel's chunks of 4 at 40
// heads, the prefill kernel's chunks of 128 rows at 160 heads (128 + 32), and 40 heads in one
// prefill CTA (3 tokens per tile).
TEST_F(CudaPagedAttention, LargeGroupSplitsHeadsAcrossCtas) {
  Case decode{{1, 1}, {50, 2000}, 40, 1, 128, 16};
  run_case(decode);
  Case mixed{{1, 20}, {50, 120}, 40, 1, 64, 16};
  mixed.dtype = DType::kF16;
  run_case(mixed, /*per_request=*/true);
  Case mqa{{1, 9, 70}, {300, 100, 70}, 160, 1, 64, 16};
  mqa.seed = 41;
  run_case(mqa, /*per_request=*/true);
  Case mqa128{{5, 33}, {900, 33}, 160, 1, 128, 8, 200};
  mqa128.dtype = DType::kF16;
  mqa128.seed = 42;
  run_case(mqa128, /*per_request=*/true);
}

// Prefill chunks over cached prefixes: contexts that are not multiples of the block size (nor
// of the kernel's 64-key tiles), chunks that start mid-block and mid-tile, blocks smaller than,
// equal to and larger than a tile, in every GQA ratio (1, 4, 8), head_dim and dtype.
TEST_F(CudaPagedAttention, PrefillChunksOverCachedPrefix) {
  uint32_t seed = 800;
  for (int block_size : {16, 5, 64, 100})
    for (const HeadShape& h : head_shapes()) {
      Case c{{2, 61, 129, 17}, {3, 1000, 450, 77}, h.num_q_heads,
             h.num_kv_heads,   h.head_dim,         block_size};
      c.dtype = h.dtype;
      c.seed = seed++;
      run_case(c, /*per_request=*/true);
    }
}

// One sequence, many query tiles and key tiles: a fresh prefill of 700 tokens, and a chunk of 333
// tokens over a 1500-token context with and without a window; GQA 1, 4, 8.
TEST_F(CudaPagedAttention, LongPrefillBatch1) {
  uint32_t seed = 900;
  for (const HeadShape& h :
       {HeadShape{4, 4, 128, DType::kBF16}, HeadShape{16, 4, 128, DType::kF16},
        HeadShape{16, 2, 64, DType::kBF16}, HeadShape{8, 1, 64, DType::kF16}}) {
    Case fresh{{700}, {700}, h.num_q_heads, h.num_kv_heads, h.head_dim, 16};
    fresh.dtype = h.dtype;
    fresh.seed = seed++;
    run_case(fresh);
    for (std::optional<int> window : {std::optional<int>(), std::optional<int>(256)}) {
      Case chunk{{333}, {1500}, h.num_q_heads, h.num_kv_heads, h.head_dim, 16, window};
      chunk.dtype = h.dtype;
      chunk.seed = seed++;
      run_case(chunk);
    }
  }
}

// Large mixed batches (40 sequences: decodes, sequences with no new token, short and long chunks
// over random contexts) against the reference, and each prefill sequence alone against the batch.
TEST_F(CudaPagedAttention, LargeMixedBatch) {
  uint32_t seed = 1000;
  for (const HeadShape& h :
       {HeadShape{16, 2, 128, DType::kBF16}, HeadShape{4, 4, 64, DType::kF16},
        HeadShape{8, 2, 128, DType::kF16}, HeadShape{16, 2, 64, DType::kBF16}}) {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int> kind(0, 5), prefix(0, 900), chunk(2, 200);
    Case c{{}, {}, h.num_q_heads, h.num_kv_heads, h.head_dim, seed % 2 ? 16 : 13};
    for (int b = 0; b < 40; ++b) {
      const int k = kind(rng);
      const int new_tokens = k == 0 ? 0 : k <= 2 ? 1 : chunk(rng);
      c.query_lens.push_back(new_tokens);
      c.seq_lens.push_back(std::max(1, prefix(rng) + new_tokens));
    }
    c.window = seed % 4 == 2 ? std::optional<int>(150) : std::nullopt;
    c.dtype = h.dtype;
    c.seed = seed++;
    run_case(c, /*per_request=*/true);
  }
}

// Group sizes that do not divide the 128-row tile (3 and 6 heads per kv head: 42 and 21 tokens
// per tile, the rest of the rows idle).
TEST_F(CudaPagedAttention, GroupsNotDividingTheTile) {
  uint32_t seed = 1100;
  for (auto [hq, hk] : {std::pair{6, 2}, {12, 2}})
    for (int dim : {64, 128}) {
      Case c{{1, 100, 45}, {40, 260, 45}, hq, hk, dim, 16};
      c.dtype = seed % 2 ? DType::kF16 : DType::kBF16;
      c.seed = seed++;
      run_case(c, /*per_request=*/true);
    }
}

// Metadata of one sequence whose tensors all view `buf` (for argument checks: launches that
// must be refused before they read anything).
AttentionMetadata one_sequence_meta(const DeviceBuffer& buf, int max_query_len) {
  const auto dev = DeviceType::kCuda;
  AttentionMetadata meta;
  meta.num_seqs = 1;
  meta.max_query_len = max_query_len;
  meta.max_seq_len = max_query_len;
  meta.max_blocks_per_seq = 1;
  meta.query_start_loc = Tensor(buf.get(), DType::kI32, {2}, dev);
  meta.seq_lens = Tensor(buf.get(), DType::kI32, {1}, dev);
  meta.block_table = Tensor(buf.get(), DType::kI32, {1, 1}, dev);
  return meta;
}

// kv_cache_dtype fp8: decode (with and without splits), mixed batches through the mma.sync
// kernel (per request bit-exact too), windows, both dtypes and head dims, scales of 1 and not.
TEST_F(CudaPagedAttention, Fp8CacheAgainstTheValuesItHolds) {
  uint32_t seed = 900;
  for (const HeadShape& h : head_shapes())
    for (KVCacheScales scales : {KVCacheScales{}, KVCacheScales{0.25f, 3.0f}}) {
      const auto fp8 = [&](Case c) {
        c.dtype = h.dtype;
        c.fp8_cache = true;
        c.scales = scales;
        c.seed = seed++;
        return c;
      };
      run_case(
          fp8({{1, 1, 1, 1}, {1, 17, 100, 1000}, h.num_q_heads, h.num_kv_heads, h.head_dim, 5}));
      run_case(fp8({{1}, {3000}, h.num_q_heads, h.num_kv_heads, h.head_dim, 16}));  // splits
      run_case(fp8({{1, 1, 37, 45, 1, 130},
                    {1, 300, 237, 45, 64, 200},
                    h.num_q_heads,
                    h.num_kv_heads,
                    h.head_dim,
                    7}),
               /*per_request=*/true);
      Case windowed =
          fp8({{1, 37, 1}, {1000, 237, 64}, h.num_q_heads, h.num_kv_heads, h.head_dim, 16, 32});
      run_case(windowed);
    }
}

TEST_F(CudaPagedAttention, Fp8CacheRefusesTheWgmmaKernelAndBadScales) {
  const auto dev = DeviceType::kCuda;
  DeviceBuffer buf(1 << 20);
  const AttentionMetadata meta = one_sequence_meta(buf, /*max_query_len=*/2);
  const Tensor q(buf.get(), DType::kBF16, {2, 4, 64}, dev);
  const Tensor k8(buf.get(), DType::kFP8E4M3, {4, 16, 2, 64}, dev);
  try {
    paged_attention(q, q, k8, k8, meta, 1.0f, std::nullopt, nullptr, PrefillKernel::kWgmma);
    ADD_FAILURE() << "kWgmma accepted an fp8 cache";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("an fp8 cache runs the mma.sync kernel"),
              std::string::npos)
        << e.what();
  }
  try {
    paged_attention(q, q, k8, k8, meta, 1.0f, std::nullopt, nullptr, PrefillKernel::kAuto,
                    KVCacheScales{1.0f, -2.0f});
    ADD_FAILURE() << "scales.v -2 accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("scales.v is -2"), std::string::npos) << e.what();
  }
}

TEST_F(CudaPagedAttention, RejectsBadShapesNamingTheTensor) {
  const auto dev = DeviceType::kCuda;
  DeviceBuffer buf(1 << 20);
  const AttentionMetadata meta = one_sequence_meta(buf, /*max_query_len=*/1);
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
  const Tensor q0(buf.get(), DType::kBF16, {1, 0, 64}, dev);  // no heads: nothing to divide
  EXPECT_NE(message_of(q0, q0, k, k).find("it needs at least one head"), std::string::npos);
  const Tensor q_cpu(buf.get(), DType::kBF16, {1, 4, 64});
  EXPECT_NE(message_of(q, q_cpu, k, k).find("q [1, 4, 64] must be a defined CUDA tensor"),
            std::string::npos);
  const Tensor q_odd(static_cast<char*>(buf.get()) + 2, DType::kBF16, {1, 4, 64}, dev);
  EXPECT_NE(message_of(q, q_odd, k, k).find("q must be 16-byte aligned"), std::string::npos);
  try {
    paged_attention(q, q, k, k, meta, 0.0f, std::nullopt, nullptr);
    ADD_FAILURE() << "scale 0 accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("scale is 0"), std::string::npos) << e.what();
  }
}

// A timing batch: num_seqs sequences of query_len new tokens over `context` positions (block 16,
// shuffled blocks), random values from a 1M-element normal pattern copied across q and the caches.
struct TimingBatch {
  int num_seqs, query_len, context, hq, hk, dim;
  DType dtype;
  float median_us = 0, min_us = 0;

  void run(int reps, PrefillKernel kernel = PrefillKernel::kAuto) {
    const int bs = 16, blocks_per_seq = (context + bs - 1) / bs;
    const int num_blocks = num_seqs * blocks_per_seq + 1, num_tokens = num_seqs * query_len;
    const size_t cache_elems = size_t(num_blocks) * bs * hk * dim;
    const size_t q_elems = size_t(num_tokens) * hq * dim;
    DeviceBuffer d_k(cache_elems * 2), d_v(cache_elems * 2), d_q(q_elems * 2), d_out(q_elems * 2),
        d_qsl((num_seqs + 1) * 4), d_lens(num_seqs * 4),
        d_table(size_t(num_seqs) * blocks_per_seq * 4);
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    const size_t pattern_elems = size_t(1) << 20;
    std::vector<uint16_t> pattern(pattern_elems);
    for (auto& x : pattern) x = to_bits(normal(rng), dtype);
    DeviceBuffer d_pattern(pattern_elems * 2);
    upload(d_pattern, pattern);
    for (auto [dst, elems] :
         {std::pair{d_k.get(), cache_elems}, {d_v.get(), cache_elems}, {d_q.get(), q_elems}})
      for (size_t e = 0; e < elems; e += pattern_elems) {
        const size_t n = std::min(pattern_elems, elems - e);
        EMBER_CUDA_CHECK(cudaMemcpy(static_cast<uint16_t*>(dst) + e, d_pattern.get(), n * 2,
                                    cudaMemcpyDeviceToDevice));
      }
    std::vector<int32_t> query_start(num_seqs + 1), seq_lens(num_seqs, context),
        table(size_t(num_seqs) * blocks_per_seq);
    for (int b = 0; b <= num_seqs; ++b) query_start[b] = b * query_len;
    std::iota(table.begin(), table.end(), 1);
    std::shuffle(table.begin(), table.end(), rng);
    upload(d_qsl, query_start);
    upload(d_lens, seq_lens);
    upload(d_table, table);

    const auto dev = DeviceType::kCuda;
    AttentionMetadata meta;
    meta.num_seqs = num_seqs;
    meta.max_query_len = query_len;
    meta.max_seq_len = context;
    meta.max_blocks_per_seq = blocks_per_seq;
    meta.query_start_loc = Tensor(d_qsl.get(), DType::kI32, {num_seqs + 1}, dev);
    meta.seq_lens = Tensor(d_lens.get(), DType::kI32, {num_seqs}, dev);
    meta.block_table = Tensor(d_table.get(), DType::kI32, {num_seqs, blocks_per_seq}, dev);
    const Tensor out(d_out.get(), dtype, {num_tokens, hq, dim}, dev);
    const Tensor q(d_q.get(), dtype, {num_tokens, hq, dim}, dev);
    const Tensor k(d_k.get(), dtype, {num_blocks, bs, hk, dim}, dev);
    const Tensor v(d_v.get(), dtype, {num_blocks, bs, hk, dim}, dev);
    const float scale = 1.0f / std::sqrt(float(dim));
    for (int i = 0; i < 3; ++i)
      paged_attention(out, q, k, v, meta, scale, std::nullopt, nullptr, kernel);
    cudaEvent_t start, stop;
    EMBER_CUDA_CHECK(cudaEventCreate(&start));
    EMBER_CUDA_CHECK(cudaEventCreate(&stop));
    std::vector<float> times_us;
    for (int i = 0; i < reps; ++i) {
      EMBER_CUDA_CHECK(cudaEventRecord(start));
      paged_attention(out, q, k, v, meta, scale, std::nullopt, nullptr, kernel);
      EMBER_CUDA_CHECK(cudaEventRecord(stop));
      EMBER_CUDA_CHECK(cudaEventSynchronize(stop));
      float ms = 0.0f;
      EMBER_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
      times_us.push_back(ms * 1e3f);
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    std::sort(times_us.begin(), times_us.end());
    median_us = times_us[times_us.size() / 2];
    min_us = times_us.front();
    std::vector<uint16_t> out_bits(q_elems);
    EMBER_CUDA_CHECK(
        cudaMemcpy(out_bits.data(), d_out.get(), out_bits.size() * 2, cudaMemcpyDeviceToHost));
    for (uint16_t x : out_bits) ASSERT_TRUE(std::isfinite(from_bits(x, dtype)));
  }
};

// Not a correctness check: prints the achieved KV-read bandwidth of a Llama-3-8B-shaped decode
// step (context 4096, 32 q heads, 8 kv heads, head_dim 128, block 16, bf16) at batch 64, and at
// batch 8, which takes the split path.
TEST_F(CudaPagedAttention, TimingDecodeBatch64Context4096) {
  for (int num_seqs : {64, 8}) {
    TimingBatch t{num_seqs, 1, 4096, 32, 8, 128, DType::kBF16};
    t.run(20);
    const double kv_bytes = 2.0 * num_seqs * 4096 * 8 * 128 * 2;  // K and V
    std::printf(
        "paged_attention decode B=%d ctx=4096 Hq=32 Hk=8 D=128 block=16 bf16: median %.1f us "
        "(min %.1f), KV read %.0f GB/s (%.0f%% of 4278 GB/s copy)\n",
        num_seqs, t.median_us, t.min_us, kv_bytes / (t.median_us * 1e-6) / 1e9,
        kv_bytes / (t.median_us * 1e-6) / 4278e9 * 100);
  }
}

// Not a correctness check: prints the prefill kernel's TFLOP/s (flops of the visible (query,
// key) pairs, 4 * Hq * D each) across head shapes and dtypes; engine_bench takes the bf16
// Llama-3-8B shape against the GEMM ceiling of the same run.
TEST_F(CudaPagedAttention, TimingPrefill) {
  struct Shape {
    int num_seqs, query_len, context, hq, hk, dim;
    DType dtype;
  };
  for (const Shape& s : {Shape{1, 4096, 4096, 32, 8, 128, DType::kBF16},
                         Shape{1, 4096, 4096, 32, 8, 128, DType::kF16},
                         Shape{1, 4096, 4096, 32, 32, 128, DType::kBF16},
                         Shape{1, 4096, 4096, 32, 4, 128, DType::kBF16},
                         Shape{1, 4096, 4096, 32, 8, 64, DType::kBF16},
                         Shape{1, 1024, 8192, 32, 8, 128, DType::kBF16},
                         Shape{4, 2048, 2048, 32, 8, 128, DType::kBF16}})
    for (PrefillKernel kernel : prefill_kernels()) {
      TimingBatch t{s.num_seqs, s.query_len, s.context, s.hq, s.hk, s.dim, s.dtype};
      t.run(10, kernel);
      double pairs = 0;  // visible (query, key) pairs of one sequence
      for (int i = 0; i < s.query_len; ++i) pairs += s.context - s.query_len + i + 1;
      const double flops = 4.0 * s.num_seqs * pairs * s.hq * s.dim;
      std::printf(
          "paged_attention prefill %s B=%d new=%d ctx=%d Hq=%d Hk=%d D=%d %s: median %.1f us "
          "(min %.1f), %.1f TFLOP/s\n",
          kernel_name(kernel), s.num_seqs, s.query_len, s.context, s.hq, s.hk, s.dim,
          dtype_name(s.dtype), t.median_us, t.min_us, flops / (t.median_us * 1e-6) / 1e12);
    }
}

}  // namespace
}  // namespace engine::cuda
