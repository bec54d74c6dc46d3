#include "backend/cpu/rope_cache.h"

#include <cstring>
#include <stdexcept>
#include <string>
#include <tuple>

#include "backend/cpu/checks.h"

namespace engine::cpu {
namespace {

void rotate_heads(float* x /*[num_heads, D]*/, int64_t num_heads, int64_t head_dim,
                  const float* cos /*[D/2]*/, const float* sin /*[D/2]*/) {
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < num_heads; ++h) {
    float* first = x + h * head_dim;
    float* second = first + half;
    for (int64_t i = 0; i < half; ++i) {
      float a = first[i], b = second[i];
      first[i] = a * cos[i] - b * sin[i];
      second[i] = b * cos[i] + a * sin[i];
    }
  }
}

void check_shapes(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cos_sin,
                  const Tensor& positions, const Tensor& slot_mapping, const Tensor& k_cache,
                  const Tensor& v_cache) {
  const char* kn = "rope_and_cache";
  for (auto [name, t, rank] : {std::tuple{"q", &q, 3},
                               {"k", &k, 3},
                               {"v", &v, 3},
                               {"cos_sin", &cos_sin, 2},
                               {"k_cache", &k_cache, 4},
                               {"v_cache", &v_cache, 4}}) {
    check_rank(kn, name, *t, rank);
    check_dtype(kn, name, *t, DType::kF32);
  }
  check_rank(kn, "positions", positions, 1);
  check_rank(kn, "slot_mapping", slot_mapping, 1);
  check_dtype(kn, "positions", positions, DType::kI32);
  check_dtype(kn, "slot_mapping", slot_mapping, DType::kI32);
  const int64_t num_t = q.size(0), head_dim = q.size(2);
  if (head_dim % 2 != 0) {
    throw std::invalid_argument("rope_and_cache: head_dim " + std::to_string(head_dim) +
                                " must be even for neox rotation");
  }
  check_size(kn, "k", k, 0, num_t, "tokens T of q");
  check_size(kn, "k", k, 2, head_dim, "head_dim of q");
  for (int d = 0; d < 3; ++d) check_size(kn, "v", v, d, k.size(d), "same as k");
  check_size(kn, "cos_sin", cos_sin, 1, head_dim, "head_dim of q");
  check_size(kn, "positions", positions, 0, num_t, "tokens T of q");
  check_size(kn, "slot_mapping", slot_mapping, 0, num_t, "tokens T of q");
  check_size(kn, "k_cache", k_cache, 2, k.size(1), "kv heads Hk of k");
  check_size(kn, "k_cache", k_cache, 3, head_dim, "head_dim of q");
  for (int d = 0; d < 4; ++d) check_size(kn, "v_cache", v_cache, d, k_cache.size(d), "as k_cache");
}

void check_index_ranges(const int32_t* pos, const int32_t* slots, int64_t num_t, int64_t max_pos,
                        int64_t num_slots) {
  for (int64_t t = 0; t < num_t; ++t) {
    if (pos[t] < 0 || pos[t] >= max_pos) {
      throw std::out_of_range("rope_and_cache: position " + std::to_string(pos[t]) + " of token " +
                              std::to_string(t) + " must lie in [0, " + std::to_string(max_pos) +
                              ") (rows of cos_sin)");
    }
    if (slots[t] >= num_slots) {
      throw std::out_of_range("rope_and_cache: slot " + std::to_string(slots[t]) + " of token " +
                              std::to_string(t) + " must be < " + std::to_string(num_slots) +
                              " (num_blocks * block_size)");
    }
  }
}

}  // namespace

void rope_and_cache(Tensor q, Tensor k, Tensor v, Tensor cos_sin, Tensor positions,
                    Tensor slot_mapping, Tensor k_cache, Tensor v_cache) {
  check_shapes(q, k, v, cos_sin, positions, slot_mapping, k_cache, v_cache);
  const int64_t num_t = q.size(0), num_q_heads = q.size(1), num_kv_heads = k.size(1);
  const int64_t head_dim = q.size(2), half = head_dim / 2;
  const int64_t block_size = k_cache.size(1);
  const int32_t* pos = positions.ptr<int32_t>();
  const int32_t* slots = slot_mapping.ptr<int32_t>();
  check_index_ranges(pos, slots, num_t, cos_sin.size(0), k_cache.size(0) * block_size);

  float* qs = q.ptr<float>();
  float* ks = k.ptr<float>();
  const float* vs = v.ptr<float>();
  const float* table = cos_sin.ptr<float>();
  float* kc = k_cache.ptr<float>();
  float* vc = v_cache.ptr<float>();
  const int64_t kv_row = num_kv_heads * head_dim;
  // Slot s is element offset s * kv_row whatever block_size is, since a block is block_size
  // consecutive rows; block_size only matters to callers composing slots.
#pragma omp parallel for schedule(static) if (num_t >= 64)
  for (int64_t t = 0; t < num_t; ++t) {
    const float* cos = table + pos[t] * head_dim;
    const float* sin = cos + half;
    rotate_heads(qs + t * num_q_heads * head_dim, num_q_heads, head_dim, cos, sin);
    float* k_row = ks + t * kv_row;
    rotate_heads(k_row, num_kv_heads, head_dim, cos, sin);
    if (slots[t] < 0) continue;
    std::memcpy(kc + slots[t] * kv_row, k_row, kv_row * sizeof(float));
    std::memcpy(vc + slots[t] * kv_row, vs + t * kv_row, kv_row * sizeof(float));
  }
}

}  // namespace engine::cpu
