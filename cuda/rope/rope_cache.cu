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

void check_shapes(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cos_sin,
                  const Tensor& positions, const Tensor& slot_mapping, const Tensor& k_cache,
                  const Tensor& v_cache) {
  const char* kn = "rope_and_cache";
  for (auto [name, t, rank] : {std::tuple{"q", &q, 3},
                               {"k", &k, 3},
                               {"v", &v, 3},
                               {"cos_sin", &cos_sin, 2},
                               {"positions", &positions, 1},
                               {"slot_mapping", &slot_mapping, 1},
                               {"k_cache", &k_cache, 4},
                               {"v_cache", &v_cache, 4}}) {
    arg_check::rank(kn, name, *t, rank);
  }
  arg_check::compute_dtype(kn, "q", q);
  for (auto [name, t] :
       {std::pair{"k", &k}, {"v", &v}, {"k_cache", &k_cache}, {"v_cache", &v_cache}}) {
    arg_check::dtype(kn, name, *t, q.dtype);
  }
  arg_check::dtype(kn, "cos_sin", cos_sin, DType::kF32);
  arg_check::dtype(kn, "positions", positions, DType::kI32);
  arg_check::dtype(kn, "slot_mapping", slot_mapping, DType::kI32);
  const int64_t num_tokens = q.size(0), head_dim = q.size(2);
  if (head_dim % 2 != 0) {
    throw std::invalid_argument(arg_check::describe(kn, "q", q) + ": head_dim " +
                                std::to_string(head_dim) + " must be even for neox rotation");
  }
  arg_check::size(kn, "k", k, 0, num_tokens, "tokens T of q");
  arg_check::size(kn, "k", k, 2, head_dim, "head_dim of q");
  for (int d = 0; d < 3; ++d) arg_check::size(kn, "v", v, d, k.size(d), "same as k");
  arg_check::size(kn, "cos_sin", cos_sin, 1, head_dim, "head_dim of q");
  arg_check::min_size(kn, "positions", positions, 0, num_tokens, "tokens T of q");
  arg_check::min_size(kn, "slot_mapping", slot_mapping, 0, num_tokens, "tokens T of q");
  arg_check::size(kn, "k_cache", k_cache, 2, k.size(1), "kv heads Hk of k");
  arg_check::size(kn, "k_cache", k_cache, 3, head_dim, "head_dim of q");
  for (int d = 0; d < 4; ++d) {
    arg_check::size(kn, "v_cache", v_cache, d, k_cache.size(d), "same as k_cache");
  }
  if (num_tokens > INT32_MAX || (q.size(1) + k.size(1)) * head_dim > INT32_MAX) {
    throw std::invalid_argument(arg_check::describe(kn, "q", q) +
                                ": tokens or heads * head_dim past 2^31 - 1");
  }
}

}  // namespace

void rope_and_cache(Tensor q, Tensor k, Tensor v, Tensor cos_sin, Tensor positions,
                    Tensor slot_mapping, Tensor k_cache, Tensor v_cache, cudaStream_t stream) {
  check_shapes(q, k, v, cos_sin, positions, slot_mapping, k_cache, v_cache);
  const int64_t num_tokens = q.size(0);
  const int num_q_heads = static_cast<int>(q.size(1)), num_kv_heads = static_cast<int>(k.size(1));
  const int head_dim = static_cast<int>(q.size(2));
  if (num_tokens == 0 || head_dim == 0 || num_q_heads + num_kv_heads == 0) return;
  bool vectorize = (head_dim / 2) % 8 == 0;
  for (const Tensor* t : {&q, &k, &v, &cos_sin, &k_cache, &v_cache}) {
    vectorize = vectorize && is_aligned_16(t->data);
  }
  const auto launch = [&]<typename T, int kVec>() {
    const int64_t work = std::max<int64_t>((num_q_heads + num_kv_heads) * (head_dim / 2 / kVec),
                                           int64_t(num_kv_heads) * head_dim / kVec);
    const int threads =
        static_cast<int>(std::clamp<int64_t>((work + 31) / 32 * 32, 32, kMaxThreads));
    rope_and_cache_kernel<T, kVec><<<static_cast<unsigned>(num_tokens), threads, 0, stream>>>(
        q.ptr<T>(), k.ptr<T>(), v.ptr<const T>(), cos_sin.ptr<const float>(),
        positions.ptr<const int32_t>(), slot_mapping.ptr<const int32_t>(), k_cache.ptr<T>(),
        v_cache.ptr<T>(), num_q_heads, num_kv_heads, head_dim);
  };
  const auto dispatch = [&]<typename T>() {
    if (vectorize) {
      launch.template operator()<T, kPackElems<T>>();
    } else {
      launch.template operator()<T, 1>();
    }
  };
  if (q.dtype == DType::kBF16) {
    dispatch.template operator()<__nv_bfloat16>();
  } else {
    dispatch.template operator()<__half>();
  }
  EMBER_CUDA_CHECK_LAUNCH();
}

}  // namespace engine::cuda
