#include "backend/cpu/cpu_backend.h"

#include <omp.h>

#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "backend/cpu/activation.h"
#include "backend/cpu/attention.h"
#include "backend/cpu/checks.h"
#include "backend/cpu/embedding.h"
#include "backend/cpu/linear.h"
#include "backend/cpu/norm.h"
#include "backend/cpu/rope_cache.h"
#include "backend/cpu/scratch.h"

namespace engine::cpu {

CpuBackend::CpuBackend(int num_threads) : num_threads_(num_threads) { use_threads(); }

void CpuBackend::use_threads() const {
  if (num_threads_ > 0 && omp_get_max_threads() != num_threads_) omp_set_num_threads(num_threads_);
}

Buffer CpuBackend::allocate(size_t nbytes) {
  return Buffer(aligned_allocate(nbytes), nbytes, [](void* p) { std::free(p); });
}

void CpuBackend::copy_from_host(Tensor dst, const void* src) {
  check_defined("copy_from_host", "dst", dst);
  if (dst.nbytes() > 0) std::memcpy(dst.data, src, dst.nbytes());
}

void CpuBackend::copy_to_host(void* dst, Tensor src) {
  check_defined("copy_to_host", "src", src);
  if (src.nbytes() > 0) std::memcpy(dst, src.data, src.nbytes());
}

void CpuBackend::embedding(Tensor out, Tensor table, Tensor ids) {
  use_threads();
  cpu::embedding(out, table, ids);
}

void CpuBackend::rms_norm(Tensor out, Tensor x, Tensor weight, float eps) {
  use_threads();
  cpu::rms_norm(out, x, weight, eps);
}

void CpuBackend::add_rms_norm(Tensor x, Tensor residual, Tensor weight, float eps) {
  use_threads();
  cpu::add_rms_norm(x, residual, weight, eps);
}

void CpuBackend::linear(Tensor out, Tensor x, Tensor weight, const Tensor* bias) {
  use_threads();
  cpu::linear(out, x, weight, bias);
}

void CpuBackend::rope_and_cache(Tensor q_out, Tensor qkv, const QKNorm* qk_norm, Tensor cos_sin,
                                const AttentionMetadata& meta, KVCacheLayer cache) {
  use_threads();
  // positions and slot_mapping may be sized for the runner's largest step: use the first T.
  const int64_t num_tokens = q_out.dim() > 0 ? q_out.size(0) : 0;
  cpu::rope_and_cache(q_out, qkv, qk_norm, cos_sin, meta.positions.slice_rows(0, num_tokens),
                      meta.slot_mapping.slice_rows(0, num_tokens), cache.k, cache.v, cache.scales);
}

void CpuBackend::attention(Tensor out, Tensor q, KVCacheLayer cache, const AttentionMetadata& meta,
                           float scale, std::optional<int> sliding_window) {
  use_threads();
  // The runner may hand tensors sized for its largest step; meta.num_seqs says what is live.
  const int64_t num_seqs = meta.num_seqs;
  cpu::paged_attention(out, q, cache.k, cache.v, meta.query_start_loc.slice_rows(0, num_seqs + 1),
                       meta.seq_lens.slice_rows(0, num_seqs),
                       meta.block_table.slice_rows(0, num_seqs), scale, sliding_window,
                       cache.scales);
}

void CpuBackend::silu_and_mul(Tensor out, Tensor x) {
  use_threads();
  cpu::silu_and_mul(out, x);
}

void CpuBackend::gather_rows(Tensor out, Tensor x, Tensor indices) {
  use_threads();
  cpu::gather_rows(out, x, indices);
}

}  // namespace engine::cpu

namespace engine {

std::unique_ptr<Backend> make_cpu_backend(int num_threads) {
  return std::make_unique<cpu::CpuBackend>(num_threads);
}

}  // namespace engine
