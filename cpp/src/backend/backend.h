#pragma once
// The Backend interface: memory plus one entry per kernel. Model code is written once
// against it; the CPU backend (plain C++ + OpenMP, fp32 compute) and the CUDA backend differ
// only in what is behind these entries.
//
// Conventions: activations are fp32 on the CPU backend (the CUDA backend will use the model
// dtype); weights may be fp32, bf16 or fp16 and are converted inside the kernel. Every
// Tensor is contiguous and row-major. T = tokens in the step, B = sequences in the step.

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "backend/tensor.h"

namespace engine {

// Attention metadata, built once per step by the runner and used by every layer.
struct AttentionMetadata {
  int num_seqs = 0;  // B
  int max_query_len = 0;
  int max_seq_len = 0;
  int max_blocks_per_seq = 0;  // columns of block_table
  // [B + 1] i32, prefix sums of query lengths, ending at T: every token belongs to a sequence
  // (the CPU backend checks it; the CUDA kernels cannot without a sync, and trust it)
  Tensor query_start_loc;
  Tensor seq_lens;      // [B] i32, tokens in context after this step (cached + new)
  Tensor block_table;   // [B, max_blocks_per_seq] i32, padded with the null block 0
  Tensor slot_mapping;  // [T] i32, cache slot of each new token: block * block_size + offset
  Tensor positions;     // [T] i32, position of each new token within its sequence
};

// Per-tensor scales of a KV cache: the cache stores k / k and v / v in its dtype, and attention
// reads back stored * scale. 1 unless calibrated; they matter to a compact (fp8) cache, whose
// range (+-448) they stretch, and apply to any cache dtype.
struct KVCacheScales {
  float k = 1.0f;
  float v = 1.0f;
};

// A usable scale is positive and finite with a finite reciprocal (cache writes multiply by it).
bool is_valid_kv_cache_scale(float scale);
// "<what> is <scale> but must be ...": the message for a scale is_valid_kv_cache_scale refuses.
std::string invalid_kv_cache_scale_message(const std::string& what, float scale);
// Throws std::invalid_argument ("<kernel>: scales.k is ...") unless both scales are valid.
void check_kv_cache_scales(const char* kernel, const KVCacheScales& scales);

// One layer's paged KV cache: the compute dtype, or fp8 e4m3 (kv_cache_dtype "fp8").
struct KVCacheLayer {
  Tensor k;  // [num_blocks, block_size, num_kv_heads, head_dim]
  Tensor v;  // [num_blocks, block_size, num_kv_heads, head_dim]
  KVCacheScales scales;
};

// Per-head RMSNorm of q and k before RoPE (Qwen3's self_attn.q_norm / k_norm): each head's D
// values x become x / sqrt(mean(x^2) + eps) * weight.
struct QKNorm {
  Tensor q_weight;  // [D] f32
  Tensor k_weight;  // [D] f32
  float eps = 1e-6f;
};

// Device memory now, for sizing the KV cache.
struct DeviceMemory {
  size_t free_bytes = 0;
  size_t total_bytes = 0;
};

// A recorded sequence of device work (a CUDA graph) that replays with the same pointers and
// launch shapes; the inputs it reads are refreshed in place between replays.
class CapturedGraph {
 public:
  virtual ~CapturedGraph() = default;
  virtual void replay() = 0;  // enqueued on the backend's stream, does not wait
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual DeviceType device_type() const = 0;
  virtual const char* name() const = 0;
  // The activation dtype this backend computes in (fp32 on the CPU).
  virtual DType compute_dtype() const = 0;

  virtual Buffer allocate(size_t nbytes) = 0;
  // Host memory the device copies from without staging (page-locked on a GPU), for inputs
  // rebuilt every step.
  virtual Buffer allocate_host(size_t nbytes) { return allocate(nbytes); }
  virtual void copy_from_host(Tensor dst, const void* src) = 0;  // dst.nbytes() bytes
  // Enqueues the copy and returns at once: src (from allocate_host) must stay unchanged until
  // the next synchronize(). Synchronous where the backend has no queue.
  virtual void copy_from_host_async(Tensor dst, const void* src) { copy_from_host(dst, src); }
  virtual void copy_to_host(void* dst, Tensor src) = 0;
  // Waits for all enqueued work; the time spent blocked adds to device_wait_seconds().
  virtual void synchronize() {}
  virtual double device_wait_seconds() const { return 0.0; }
  // A mark after the work enqueued so far: wait_for_fence() blocks until that work is done,
  // not what was enqueued after it (the time counts in device_wait_seconds()). Where the
  // backend has no queue the work is done already and both return at once.
  virtual uint64_t record_fence() { return 0; }
  virtual void wait_for_fence(uint64_t fence) { (void)fence; }
  // Free and total device memory, for sizing the KV cache; nothing on the CPU (sized by config).
  virtual std::optional<DeviceMemory> memory_info() const { return std::nullopt; }

  // CUDA graphs: record what `enqueue` puts on the stream into a graph instead of running it.
  // Everything enqueue touches must stay allocated, at the same addresses, while the graph lives.
  virtual bool supports_graphs() const { return false; }
  virtual std::unique_ptr<CapturedGraph> capture(const std::function<void()>& enqueue);

  // out[t, :] = table[ids[t], :]
  virtual void embedding(Tensor out /*[T, H]*/, Tensor table /*[V, H]*/,
                         Tensor ids /*[T] i32*/) = 0;
  // out[r, :] = x[r, :] / rms(x[r, :]) * weight; out may alias x.
  virtual void rms_norm(Tensor out /*[R, D]*/, Tensor x /*[R, D]*/, Tensor weight /*[D]*/,
                        float eps) = 0;
  // residual += x; x = rms_norm(residual) * weight  (the pre-norm block's fused step)
  virtual void add_rms_norm(Tensor x /*[R, D] in/out*/, Tensor residual /*[R, D] in/out*/,
                            Tensor weight /*[D]*/, float eps) = 0;
  // out = x @ weight^T (+ bias)
  virtual void linear(Tensor out /*[T, N]*/, Tensor x /*[T, K]*/, Tensor weight /*[N, K]*/,
                      const Tensor* bias /*[N] or null*/) = 0;
  // Reads the fused projection output qkv (per token: Hq q heads, then Hk k heads, then Hk v
  // heads, each of D elements); RMS-normalises every q and k head over D by qk_norm when given
  // (Qwen3); rotates q and k (neox style: pairs (i, i + D/2)) by the angles of their positions;
  // writes rotated q into q_out, and rotated k and raw v into the paged cache at slot_mapping
  // (a negative slot: padding, not cached), divided by cache.scales and rounded to the cache's
  // dtype (saturating to +-448 in fp8). cos_sin holds cos in [:, :D/2], sin in [:, D/2:].
  // T = q_out.size(0), Hk = cache.k.size(2). q_out must not overlap qkv.
  virtual void rope_and_cache(Tensor q_out /*[T, Hq, D]*/, Tensor qkv /*[T, (Hq + 2 Hk) * D]*/,
                              const QKNorm* qk_norm /*null unless the model norms q/k heads*/,
                              Tensor cos_sin /*[max_pos, D] f32*/, const AttentionMetadata& meta,
                              KVCacheLayer cache) = 0;
  // Causal attention of each new token over its sequence's cached context (itself included),
  // GQA by head index (q head h reads kv head h / (Hq / Hk)); sliding window if given (keys at
  // positions > pos - window). Cached K and V count as stored value * cache.scales.
  virtual void attention(Tensor out /*[T, Hq, D]*/, Tensor q /*[T, Hq, D]*/, KVCacheLayer cache,
                         const AttentionMetadata& meta, float scale,
                         std::optional<int> sliding_window) = 0;
  // out = silu(x[:, :I]) * x[:, I:]
  virtual void silu_and_mul(Tensor out /*[T, I]*/, Tensor x /*[T, 2I]*/) = 0;
  // out[i, :] = x[indices[i], :]
  virtual void gather_rows(Tensor out /*[S, H]*/, Tensor x /*[T, H]*/,
                           Tensor indices /*[S] i32*/) = 0;
};

std::unique_ptr<Backend> make_cpu_backend(int num_threads);

// The CUDA backend on GPU `device`, computing in `compute_dtype` (kBF16 or kF16). Defined in
// cuda/backend/ and present only in builds with the CUDA backend (EMBER_WITH_CUDA).
std::unique_ptr<Backend> make_cuda_backend(int device, DType compute_dtype);

}  // namespace engine
