#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>

#include "common/cuda_check.h"
#include "common/pack.cuh"
#include "common/tensor_checks.h"
#include "rope/rope_cache.cuh"
#include "rope/rope_cache.h"

namespace engine::cuda {
namespace {

constexpr int kMaxThreads = 512;
constexpr const char* kKernel = "rope_and_cache";

void check_qk_norm(const QKNorm& norm, int64_t head_dim) {
  for (auto [name, t] : {std::pair{"qk_norm.q_weight", &norm.q_weight},
                         std::pair{"qk_norm.k_weight", &norm.k_weight}}) {
    arg_check::rank(kKernel, name, *t, 1);
    arg_check::dtype(kKernel, name, *t, DType::kF32);
    arg_check::size(kKernel, name, *t, 0, head_dim, "head_dim of q_out");
  }
}

void check_no_overlap(const Tensor& q_out, const Tensor& qkv) {
  const auto* q_begin = static_cast<const char*>(q_out.data);
  const auto* qkv_begin = static_cast<const char*>(qkv.data);
  if (q_begin < qkv_begin + qkv.nbytes() && qkv_begin < q_begin + q_out.nbytes()) {
    throw std::invalid_argument(arg_check::describe(kKernel, "q_out", q_out) +
                                " overlaps qkv; it must be a separate buffer");
  }
}

void check_shapes(const Tensor& q_out, const Tensor& qkv, const QKNorm* qk_norm,
                  const Tensor& cos_sin, const Tensor& positions, const Tensor& slot_mapping,
                  const Tensor& k_cache, const Tensor& v_cache, const KVCacheScales& scales) {
  const char* kn = kKernel;
  for (auto [name, t, rank] : {std::tuple{"q_out", &q_out, 3},
                               {"qkv", &qkv, 2},
                               {"cos_sin", &cos_sin, 2},
                               {"positions", &positions, 1},
                               {"slot_mapping", &slot_mapping, 1},
                               {"k_cache", &k_cache, 4},
                               {"v_cache", &v_cache, 4}}) {
    arg_check::rank(kn, name, *t, rank);
  }
  arg_check::compute_dtype(kn, "q_out", q_out);
  arg_check::dtype(kn, "qkv", qkv, q_out.dtype);
  arg_check::kv_cache(kn, q_out, k_cache, v_cache, scales);
  arg_check::dtype(kn, "cos_sin", cos_sin, DType::kF32);
  arg_check::dtype(kn, "positions", positions, DType::kI32);
  arg_check::dtype(kn, "slot_mapping", slot_mapping, DType::kI32);
  const int64_t num_tokens = q_out.size(0), head_dim = q_out.size(2);
  if (head_dim % 2 != 0) {
    throw std::invalid_argument(arg_check::describe(kn, "q_out", q_out) + ": head_dim " +
                                std::to_string(head_dim) + " must be even for neox rotation");
  }
  arg_check::size(kn, "k_cache", k_cache, 3, head_dim, "head_dim of q_out");
  for (int d = 0; d < 4; ++d) {
    arg_check::size(kn, "v_cache", v_cache, d, k_cache.size(d), "same as k_cache");
  }
  const int64_t num_heads = q_out.size(1) + 2 * k_cache.size(2);
  arg_check::size(kn, "qkv", qkv, 0, num_tokens, "tokens T of q_out");
  arg_check::size(kn, "qkv", qkv, 1, num_heads * head_dim, "(Hq + 2 Hk) * D of q_out, k_cache");
  arg_check::size(kn, "cos_sin", cos_sin, 1, head_dim, "head_dim of q_out");
  arg_check::min_size(kn, "positions", positions, 0, num_tokens, "tokens T of q_out");
  arg_check::min_size(kn, "slot_mapping", slot_mapping, 0, num_tokens, "tokens T of q_out");
  if (qk_norm) check_qk_norm(*qk_norm, head_dim);
  if (num_tokens > INT32_MAX || num_heads * head_dim > INT32_MAX) {
    throw std::invalid_argument(arg_check::describe(kn, "qkv", qkv) +
                                ": tokens or heads * head_dim past 2^31 - 1");
  }
  check_no_overlap(q_out, qkv);
}

// Lanes that share one head: the smallest power of two covering its packs, at most a warp
// (a lane then takes several packs).
int lanes_per_head(int64_t packs_per_half) {
  int lanes = 1;
  while (lanes < packs_per_half && lanes < 32) lanes *= 2;
  return lanes;
}

bool all_aligned_16(const std::initializer_list<const Tensor*> tensors) {
  return std::all_of(tensors.begin(), tensors.end(),
                     [](const Tensor* t) { return is_aligned_16(t->data); });
}

}  // namespace

void rope_and_cache(Tensor q_out, Tensor qkv, const QKNorm* qk_norm, Tensor cos_sin,
                    Tensor positions, Tensor slot_mapping, Tensor k_cache, Tensor v_cache,
                    cudaStream_t stream, KVCacheScales scales) {
  check_shapes(q_out, qkv, qk_norm, cos_sin, positions, slot_mapping, k_cache, v_cache, scales);
  const int64_t num_tokens = q_out.size(0);
  const int num_q_heads = static_cast<int>(q_out.size(1));
  const int num_kv_heads = static_cast<int>(k_cache.size(2));
  const int head_dim = static_cast<int>(q_out.size(2));
  if (num_tokens == 0 || head_dim == 0 || num_q_heads + num_kv_heads == 0) return;
  bool vectorize =
      (head_dim / 2) % 8 == 0 && all_aligned_16({&q_out, &qkv, &cos_sin, &k_cache, &v_cache});
  if (qk_norm) vectorize = vectorize && all_aligned_16({&qk_norm->q_weight, &qk_norm->k_weight});
  const float* q_norm = qk_norm ? qk_norm->q_weight.ptr<const float>() : nullptr;
  const float* k_norm = qk_norm ? qk_norm->k_weight.ptr<const float>() : nullptr;
  const float eps = qk_norm ? qk_norm->eps : 0.0f;
  // Reciprocals on the host, as the CPU backend takes them: both round the same products.
  const float inv_k_scale = 1.0f / scales.k, inv_v_scale = 1.0f / scales.v;
  const auto launch = [&]<typename T, typename C, int kVec>() {
    const int lanes = lanes_per_head(head_dim / 2 / kVec);
    const int64_t heads_per_warp = 32 / lanes;
    const int64_t num_warps =
        std::max((num_q_heads + num_kv_heads + heads_per_warp - 1) / heads_per_warp,
                 (int64_t(num_kv_heads) * head_dim / kVec + 31) / 32);
    const int threads = static_cast<int>(std::clamp<int64_t>(num_warps * 32, 32, kMaxThreads));
    rope_and_cache_kernel<T, C, kVec><<<static_cast<unsigned>(num_tokens), threads, 0, stream>>>(
        q_out.ptr<T>(), qkv.ptr<const T>(), q_norm, k_norm, eps, cos_sin.ptr<const float>(),
        positions.ptr<const int32_t>(), slot_mapping.ptr<const int32_t>(), k_cache.ptr<C>(),
        v_cache.ptr<C>(), inv_k_scale, inv_v_scale, num_q_heads, num_kv_heads, head_dim, lanes);
  };
  // kVec: 16 bytes of T per access (8 bytes of an fp8 cache), or single elements.
  const auto dispatch = [&]<typename T, typename C>() {
    if (vectorize) {
      launch.template operator()<T, C, kPackElems<T>>();
    } else {
      launch.template operator()<T, C, 1>();
    }
  };
  const auto dispatch_cache = [&]<typename T>() {
    if (k_cache.dtype == DType::kFP8E4M3) {
      dispatch.template operator()<T, __nv_fp8_e4m3>();
    } else {
      dispatch.template operator()<T, T>();
    }
  };
  if (q_out.dtype == DType::kBF16) {
    dispatch_cache.template operator()<__nv_bfloat16>();
  } else {
    dispatch_cache.template operator()<__half>();
  }
  EMBER_CUDA_CHECK_LAUNCH();
}

}  // namespace engine::cuda
