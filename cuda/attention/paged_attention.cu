#include "attention/paged_attention.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "attention/paged_attention.cuh"
#include "attention/paged_decode.cuh"
#include "attention/paged_prefill.cuh"
#include "attention/paged_prefill_sm90.cuh"
#include "common/cuda_check.h"

namespace engine::cuda {
namespace {

using attention::kThreads;
using attention::kWarps;
using attention::PagedAttentionParams;
using attention::prefill::PrefillParams;

// Flash-decoding limits: a split below ~256 keys costs more in partial writes and the combine
// than it gains in parallelism; 64 splits fill 132 SMs even for one sequence and one kv head.
// Splits start at multiples of kSplitAlign keys.
constexpr int kMinKeysPerSplit = 256;
constexpr int kMaxSplits = 64;
constexpr int kSplitAlign = 32;
constexpr int kMaxDevices = 64;

[[noreturn]] void fail(const std::string& what) {
  throw std::invalid_argument("paged_attention: " + what);
}

void check_rank(const char* name, const Tensor& t, int rank) {
  if (t.dim() != rank) {
    fail(std::string(name) + " has shape " + t.shape_string() + " but must have " +
         std::to_string(rank) + " dimensions");
  }
}

void check_dtype(const char* name, const Tensor& t, DType dtype) {
  if (t.dtype != dtype) {
    fail(std::string(name) + " is " + dtype_name(t.dtype) + " but must be " + dtype_name(dtype));
  }
}

void check_on_device(const char* name, const Tensor& t) {
  if (t.device != DeviceType::kCuda || (!t.defined() && t.numel() > 0)) {
    fail(std::string(name) + " " + t.shape_string() + " must be a defined CUDA tensor");
  }
}

void check_size(const char* name, const Tensor& t, int dim, int64_t expected, const char* what) {
  if (t.size(dim) != expected) {
    fail(std::string(name) + " has shape " + t.shape_string() + " but dimension " +
         std::to_string(dim) + " must be " + std::to_string(expected) + " (" + what + ")");
  }
}

void check_inputs(const Tensor& out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                  const AttentionMetadata& meta, float scale, std::optional<int> sliding_window,
                  const KVCacheScales& scales) {
  check_rank("q", q, 3);
  check_rank("out", out, 3);
  check_rank("k_cache", k_cache, 4);
  check_rank("v_cache", v_cache, 4);
  if (q.dtype != DType::kBF16 && q.dtype != DType::kF16) {
    fail(std::string("q is ") + dtype_name(q.dtype) + " but must be bfloat16 or float16");
  }
  check_dtype("out", out, q.dtype);
  if (k_cache.dtype != q.dtype && k_cache.dtype != DType::kFP8E4M3) {
    fail(std::string("k_cache is ") + dtype_name(k_cache.dtype) + " but must be " +
         dtype_name(q.dtype) + " (as q) or float8_e4m3fn");
  }
  check_dtype("v_cache", v_cache, k_cache.dtype);
  check_kv_cache_scales("paged_attention", scales);
  // The kernels fold the k scale into the softmax scale.
  if (!std::isfinite(scale * scales.k) || !(scale * scales.k > 0.0f)) {
    fail("scale * scales.k is " + std::to_string(scale * scales.k) +
         " but must be positive and finite");
  }
  for (int d = 0; d < 3; ++d) check_size("out", out, d, q.size(d), "same as q");
  for (int d = 0; d < 4; ++d) check_size("v_cache", v_cache, d, k_cache.size(d), "as k_cache");
  if (q.size(2) != 64 && q.size(2) != 128) {
    fail("q has shape " + q.shape_string() + ": head_dim " + std::to_string(q.size(2)) +
         " is not supported (supported: 64, 128)");
  }
  check_size("k_cache", k_cache, 3, q.size(2), "head_dim D of q");
  if (q.size(1) <= 0) fail("q has shape " + q.shape_string() + ": it needs at least one head");
  if (k_cache.size(2) <= 0 || q.size(1) % k_cache.size(2) != 0) {
    fail("q has " + std::to_string(q.size(1)) + " heads, which must be a multiple of the cache's " +
         std::to_string(k_cache.size(2)) + " kv heads");
  }
  if (k_cache.size(1) <= 0) fail("k_cache " + k_cache.shape_string() + " has block_size 0");
  const int64_t num_seqs = meta.num_seqs;
  check_rank("meta.query_start_loc", meta.query_start_loc, 1);
  check_rank("meta.seq_lens", meta.seq_lens, 1);
  check_rank("meta.block_table", meta.block_table, 2);
  check_dtype("meta.query_start_loc", meta.query_start_loc, DType::kI32);
  check_dtype("meta.seq_lens", meta.seq_lens, DType::kI32);
  check_dtype("meta.block_table", meta.block_table, DType::kI32);
  check_size("meta.query_start_loc", meta.query_start_loc, 0, num_seqs + 1, "meta.num_seqs + 1");
  check_size("meta.seq_lens", meta.seq_lens, 0, num_seqs, "meta.num_seqs");
  check_size("meta.block_table", meta.block_table, 0, num_seqs, "meta.num_seqs");
  check_size("meta.block_table", meta.block_table, 1, meta.max_blocks_per_seq,
             "meta.max_blocks_per_seq");
  for (auto [name, t] : {std::pair{"out", &out},
                         {"q", &q},
                         {"k_cache", &k_cache},
                         {"v_cache", &v_cache},
                         {"meta.query_start_loc", &meta.query_start_loc},
                         {"meta.seq_lens", &meta.seq_lens},
                         {"meta.block_table", &meta.block_table}})
    check_on_device(name, *t);
  // 16-byte copies of q rows, cache rows and output rows.
  for (auto [name, t] :
       {std::pair{"out", &out}, {"q", &q}, {"k_cache", &k_cache}, {"v_cache", &v_cache}}) {
    if (reinterpret_cast<uintptr_t>(t->data) % 16 != 0) {
      fail(std::string(name) + " must be 16-byte aligned but its data pointer is " +
           std::to_string(reinterpret_cast<uintptr_t>(t->data)));
    }
  }
  if (meta.max_query_len < 0 || meta.max_seq_len < 0) {
    fail("meta.max_query_len " + std::to_string(meta.max_query_len) + " and max_seq_len " +
         std::to_string(meta.max_seq_len) + " must be >= 0");
  }
  if (sliding_window && *sliding_window <= 0) {
    fail("sliding_window is " + std::to_string(*sliding_window) + " but must be > 0");
  }
  // The prefill kernel tracks each row's max of raw scores, which is the max of scaled scores
  // only for a positive scale.
  if (!(scale > 0.0f) || !std::isfinite(scale)) {
    fail("scale is " + std::to_string(scale) + " but must be positive and finite");
  }
}

int multiprocessor_count() {
  static std::array<int, kMaxDevices> counts{};  // 0: not read yet
  int device = 0;
  EMBER_CUDA_CHECK(cudaGetDevice(&device));
  if (device >= kMaxDevices) fail("device index " + std::to_string(device) + " >= 64");
  if (counts[device] == 0) {
    int count = 0;
    EMBER_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    counts[device] = count;  // a benign race: every writer stores the same value
  }
  return counts[device];
}

// fp32 scratch for split partials, one grow-only buffer per device: allocated on the first
// split launch and grown (to at least twice its size) when a larger batch needs more, so
// steady-state steps allocate nothing. NOTE: a CUDA graph keeps the pointer it was captured
// with, and an eager step after the capture may need a larger scratch than any captured one
// (another batch size, another split count). So an outgrown buffer is retired, never freed:
// the graphs that captured it stay valid. Growth happens a few times per process (each one at
// least doubles), and cudaMalloc is illegal inside a capture, so callers warm up first.
float* split_scratch(size_t num_floats) {
  static std::mutex mutex;
  static std::array<float*, kMaxDevices> buffers{};
  static std::array<size_t, kMaxDevices> capacities{};
  static std::vector<float*> retired;  // outgrown buffers that graphs may still use
  int device = 0;
  EMBER_CUDA_CHECK(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(mutex);
  if (capacities[device] < num_floats) {
    const size_t grown = std::max(num_floats, 2 * capacities[device]);
    float* buffer = nullptr;
    EMBER_CUDA_CHECK(cudaMalloc(&buffer, grown * sizeof(float)));
    if (buffers[device] != nullptr) retired.push_back(buffers[device]);
    buffers[device] = buffer;
    capacities[device] = grown;
  }
  return buffers[device];
}

struct LaunchShape {
  int num_head_chunks, num_splits, keys_per_split;
};

// Pure decode batches (max_query_len == 1): one CTA per (sequence, kv head, head chunk, split)
// of decode::paged_decode_kernel, split only when the batch leaves most CTA slots empty.
LaunchShape plan_decode_launch(int64_t num_q_heads, int64_t num_kv_heads, int heads_per_cta,
                               const AttentionMetadata& meta) {
  LaunchShape s{};
  const int group = static_cast<int>(num_q_heads / num_kv_heads);
  s.num_head_chunks = (group + heads_per_cta - 1) / heads_per_cta;
  s.num_splits = 1;
  s.keys_per_split = 1 << 30;
  const int64_t num_ctas = int64_t(meta.num_seqs) * num_kv_heads * s.num_head_chunks;
  // One wave holds kMinCtasPerSm CTAs per SM; fill it, never spill into a second wave.
  const int64_t wanted =
      int64_t(attention::decode::kMinCtasPerSm) * multiprocessor_count() / num_ctas;
  const int64_t by_length = meta.max_seq_len / kMinKeysPerSplit;
  const int splits = static_cast<int>(std::min<int64_t>({wanted, by_length, kMaxSplits}));
  if (splits > 1) {
    const int per_split = (meta.max_seq_len + splits - 1) / splits;
    s.keys_per_split = (per_split + kSplitAlign - 1) / kSplitAlign * kSplitAlign;
    s.num_splits = (meta.max_seq_len + s.keys_per_split - 1) / s.keys_per_split;
  }
  return s;
}

// Raises a kernel's dynamic shared-memory limit (past the 48 KB a launch gets by default) once
// per device and instantiation, with the carveout preference that lets its CTAs share an SM.
template <typename Kernel>
void configure_once(std::array<std::once_flag, kMaxDevices>& configured, Kernel* kernel,
                    size_t shared_bytes) {
  int device = 0;
  EMBER_CUDA_CHECK(cudaGetDevice(&device));
  if (device >= kMaxDevices) fail("device index " + std::to_string(device) + " >= 64");
  std::call_once(configured[device], [kernel, shared_bytes] {
    EMBER_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(shared_bytes)));
    EMBER_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                          cudaSharedmemCarveoutMaxShared));
  });
}

// Launches decode::paged_decode_kernel, asking once per device and instantiation for the
// shared-memory carveout that lets kMinCtasPerSm CTAs of 48 KB (static) share an SM (a
// preference for occupancy; results do not depend on it).
template <typename T, typename C, int kHeadDim, int kHeads>
void launch_decode(const PagedAttentionParams<T, C>& p, dim3 grid, cudaStream_t stream) {
  auto* kernel = attention::decode::paged_decode_kernel<T, C, kHeadDim, kHeads>;
  static std::array<std::once_flag, kMaxDevices> configured;
  configure_once(configured, kernel, 0);
  kernel<<<grid, attention::decode::kThreads, 0, stream>>>(p);
}

// The fields the decode and prefill kernels' parameters share: tensors, shapes, the scales (the k
// scale folded into the softmax scale).
template <typename Params, typename T, typename C>
Params common_params(const Tensor& out, const Tensor& q, const Tensor& k_cache,
                     const Tensor& v_cache, const AttentionMetadata& meta, float scale,
                     const KVCacheScales& scales) {
  Params p{};
  p.out = out.ptr<T>();
  p.q = q.ptr<const T>();
  p.k_cache = k_cache.ptr<const C>();
  p.v_cache = v_cache.ptr<const C>();
  p.query_start_loc = meta.query_start_loc.ptr<const int32_t>();
  p.seq_lens = meta.seq_lens.ptr<const int32_t>();
  p.block_table = meta.block_table.ptr<const int32_t>();
  p.num_q_heads = static_cast<int>(q.size(1));
  p.num_kv_heads = static_cast<int>(k_cache.size(2));
  p.block_size = static_cast<int>(k_cache.size(1));
  p.max_blocks_per_seq = meta.max_blocks_per_seq;
  p.scale_log2 = scale * scales.k * 1.4426950408889634f;  // log2(e)
  p.v_scale = scales.v;
  return p;
}

// Pure decode batches: decode::paged_decode_kernel, then the merge when the context is split.
template <typename T, typename C, int kHeadDim>
void run_decode(const Tensor& out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                const AttentionMetadata& meta, float scale, std::optional<int> sliding_window,
                const KVCacheScales& scales, cudaStream_t stream) {
  const int64_t num_tokens = q.size(0), num_q_heads = q.size(1), num_kv_heads = k_cache.size(2);
  const int group = static_cast<int>(num_q_heads / num_kv_heads);
  // Decode CTAs carry 1, 2 or 4 heads: more would cost registers that occupancy needs.
  const int decode_heads = group == 1 ? 1 : group == 2 ? 2 : 4;
  const LaunchShape shape = plan_decode_launch(num_q_heads, num_kv_heads, decode_heads, meta);
  auto p = common_params<PagedAttentionParams<T, C>, T, C>(out, q, k_cache, v_cache, meta, scale,
                                                           scales);
  p.num_tokens = static_cast<int>(num_tokens);
  p.num_head_chunks = shape.num_head_chunks;
  p.keys_per_split = shape.keys_per_split;
  p.has_window = sliding_window.has_value();
  p.window = sliding_window.value_or(0);
  const int64_t num_rows = num_tokens * num_q_heads;
  if (shape.num_splits > 1) {
    float* scratch = split_scratch(size_t(shape.num_splits) * num_rows * (kHeadDim + 2));
    p.partial_out = scratch;
    p.partial_max = scratch + size_t(shape.num_splits) * num_rows * kHeadDim;
    p.partial_sum = p.partial_max + size_t(shape.num_splits) * num_rows;
  }
  const int64_t grid_y = num_kv_heads * shape.num_head_chunks;
  if (grid_y > 65535) {
    fail("decode launch grid y " + std::to_string(grid_y) + " exceeds CUDA's limit of 65535");
  }
  const dim3 grid(static_cast<unsigned>(meta.num_seqs), static_cast<unsigned>(grid_y),
                  static_cast<unsigned>(shape.num_splits));
  if (decode_heads == 1) {
    launch_decode<T, C, kHeadDim, 1>(p, grid, stream);
  } else if (decode_heads == 2) {
    launch_decode<T, C, kHeadDim, 2>(p, grid, stream);
  } else {
    launch_decode<T, C, kHeadDim, 4>(p, grid, stream);
  }
  EMBER_CUDA_CHECK_LAUNCH();
  if (shape.num_splits > 1) {
    const int64_t num_blocks = (num_rows + kWarps - 1) / kWarps;
    attention::combine_splits_kernel<T, kHeadDim>
        <<<static_cast<unsigned>(num_blocks), kThreads, 0, stream>>>(
            out.ptr<T>(), p.partial_out, p.partial_max, p.partial_sum, num_rows, shape.num_splits);
    EMBER_CUDA_CHECK_LAUNCH();
  }
}

// Whether the current device runs the wgmma kernel: a Hopper (sm_90) device, and this build
// holds sm_90a code (attention::sm90::kWgmmaCompiled, read from the device once per device).
bool wgmma_available() {
  static std::array<std::once_flag, kMaxDevices> read;
  static std::array<bool, kMaxDevices> available{};
  int device = 0;
  EMBER_CUDA_CHECK(cudaGetDevice(&device));
  if (device >= kMaxDevices) fail("device index " + std::to_string(device) + " >= 64");
  std::call_once(read[device], [device] {
    int major = 0;
    EMBER_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    int compiled = 0;
    if (major == 9) {
      EMBER_CUDA_CHECK(
          cudaMemcpyFromSymbol(&compiled, attention::sm90::kWgmmaCompiled, sizeof(compiled)));
    }
    available[device] = compiled == 1;
  });
  return available[device];
}

// Batches with a prefill chunk: one CTA of prefill::paged_prefill_kernel (mma.sync) or
// prefill_sm90::paged_prefill_wgmma_kernel per (query tile rank, sequence, kv head, head chunk);
// both carry kBlockM = 128 rows, so they share the plan.
template <typename T, typename C, int kHeadDim>
void run_prefill(const Tensor& out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                 const AttentionMetadata& meta, float scale, std::optional<int> sliding_window,
                 const KVCacheScales& scales, PrefillKernel which, cudaStream_t stream) {
  namespace prefill = attention::prefill;
  namespace prefill_sm90 = attention::prefill_sm90;
  const int64_t num_q_heads = q.size(1), num_kv_heads = k_cache.size(2);
  const int group = static_cast<int>(num_q_heads / num_kv_heads);
  auto p = common_params<PrefillParams<T, C>, T, C>(out, q, k_cache, v_cache, meta, scale, scales);
  p.num_seqs = meta.num_seqs;
  p.heads_per_cta = std::min(group, prefill::kBlockM);
  p.num_head_chunks = (group + p.heads_per_cta - 1) / p.heads_per_cta;
  p.queries_per_tile = prefill::kBlockM / p.heads_per_cta;
  p.has_window = sliding_window.has_value();
  // A window past 2^30 positions excludes nothing a context can hold.
  p.window = std::min(sliding_window.value_or(0), 1 << 30);
  const int64_t num_ranks = (meta.max_query_len + p.queries_per_tile - 1) / p.queries_per_tile;
  const int64_t num_ctas = num_ranks * meta.num_seqs * num_kv_heads * p.num_head_chunks;
  if (num_ctas >= (int64_t{1} << 31)) {
    fail("prefill launch of " + std::to_string(num_ctas) + " CTAs exceeds CUDA's grid limit");
  }
  // NOTE: kAuto stays on mma.sync until the wgmma kernel has passed the tests on a GPU.
  constexpr bool kAutoPicksWgmma = false;
  constexpr bool kCacheInT = std::is_same_v<C, T>;  // what the wgmma kernel reads
  const bool wgmma =
      which == PrefillKernel::kWgmma ||
      (kAutoPicksWgmma && kCacheInT && which == PrefillKernel::kAuto && wgmma_available());
  if (which == PrefillKernel::kWgmma && !kCacheInT) {
    fail(
        "PrefillKernel::kWgmma reads a cache in the compute dtype only; an fp8 cache runs the "
        "mma.sync kernel (kAuto or kMmaSync)");
  }
  if (which == PrefillKernel::kWgmma && !wgmma_available()) {
    fail("PrefillKernel::kWgmma needs an sm_90 device and a build with sm_90a code");
  }
  if constexpr (kCacheInT) {
    if (wgmma) {
      constexpr size_t kSharedBytes = prefill_sm90::Sm90Layout<T, kHeadDim>::kDynamicBytes;
      auto* kernel = prefill_sm90::paged_prefill_wgmma_kernel<T, kHeadDim>;
      static std::array<std::once_flag, kMaxDevices> configured;
      configure_once(configured, kernel, kSharedBytes);
      kernel<<<static_cast<unsigned>(num_ctas), prefill_sm90::kThreads, kSharedBytes, stream>>>(p);
      EMBER_CUDA_CHECK_LAUNCH();
      return;
    }
  }
  {
    constexpr size_t kSharedBytes = sizeof(prefill::PrefillSmem<T, C, kHeadDim>);
    auto* kernel = prefill::paged_prefill_kernel<T, C, kHeadDim>;
    static std::array<std::once_flag, kMaxDevices> configured;
    configure_once(configured, kernel, kSharedBytes);
    kernel<<<static_cast<unsigned>(num_ctas), prefill::kThreads, kSharedBytes, stream>>>(p);
  }
  EMBER_CUDA_CHECK_LAUNCH();
}

// One call's tensors and settings, handed down the dispatch.
struct AttentionCall {
  const Tensor &out, &q, &k_cache, &v_cache;
  const AttentionMetadata& meta;
  float scale;
  std::optional<int> sliding_window;
  KVCacheScales scales;
  PrefillKernel which;
  cudaStream_t stream;
};

template <typename T, typename C, int kHeadDim>
void launch(const AttentionCall& c) {
  if (c.meta.max_query_len == 1) {
    run_decode<T, C, kHeadDim>(c.out, c.q, c.k_cache, c.v_cache, c.meta, c.scale, c.sliding_window,
                               c.scales, c.stream);
  } else {
    run_prefill<T, C, kHeadDim>(c.out, c.q, c.k_cache, c.v_cache, c.meta, c.scale, c.sliding_window,
                                c.scales, c.which, c.stream);
  }
}

template <typename T, typename C>
void launch_for_head_dim(const AttentionCall& c) {
  if (c.q.size(2) == 64) {
    launch<T, C, 64>(c);
  } else {
    launch<T, C, 128>(c);
  }
}

template <typename T>
void launch_for_cache(const AttentionCall& c) {
  if (c.k_cache.dtype == DType::kFP8E4M3) {
    launch_for_head_dim<T, __nv_fp8_e4m3>(c);
  } else {
    launch_for_head_dim<T, T>(c);
  }
}

}  // namespace

void paged_attention(Tensor out, Tensor q, Tensor k_cache, Tensor v_cache,
                     const AttentionMetadata& meta, float scale, std::optional<int> sliding_window,
                     cudaStream_t stream, PrefillKernel prefill_kernel, KVCacheScales scales) {
  check_inputs(out, q, k_cache, v_cache, meta, scale, sliding_window, scales);
  if (q.size(0) == 0 || meta.num_seqs == 0 || meta.max_query_len == 0) return;
  const AttentionCall call{
      out, q, k_cache, v_cache, meta, scale, sliding_window, scales, prefill_kernel, stream};
  if (q.dtype == DType::kBF16) {
    launch_for_cache<__nv_bfloat16>(call);
  } else {
    launch_for_cache<__half>(call);
  }
}

}  // namespace engine::cuda
