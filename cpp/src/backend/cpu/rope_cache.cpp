#include "backend/cpu/rope_cache.h"

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <tuple>

#include "backend/cpu/checks.h"
#include "backend/cpu/scratch.h"

namespace engine::cpu {
namespace {

// x / sqrt(mean(x^2) + eps) * weight over one head, in place: the arithmetic of rms_norm
// (norm.cpp), so the fused step gives what rms_norm then rope gave.
void normalize_head(float* x /*[D]*/, const float* weight /*[D]*/, int64_t head_dim, float eps) {
  float sum_squares = 0.0f;
  for (int64_t d = 0; d < head_dim; ++d) sum_squares += x[d] * x[d];
  const float inv_rms = 1.0f / std::sqrt(sum_squares / static_cast<float>(head_dim) + eps);
  for (int64_t d = 0; d < head_dim; ++d) x[d] = x[d] * inv_rms * weight[d];
}

void rotate_head(float* x /*[D]*/, int64_t head_dim, const float* cos /*[D/2]*/,
                 const float* sin /*[D/2]*/) {
  const int64_t half = head_dim / 2;
  float* first = x;
  float* second = x + half;
  for (int64_t i = 0; i < half; ++i) {
    float a = first[i], b = second[i];
    first[i] = a * cos[i] - b * sin[i];
    second[i] = b * cos[i] + a * sin[i];
  }
}

// The angles of one position and the optional norm of one kind of head (q or k).
struct HeadTransform {
  const float* cos;          // [D/2]
  const float* sin;          // [D/2]
  const float* norm_weight;  // [D], or null: no norm
  float eps;
};

// dst = rotate(norm(src)) for num_heads consecutive heads of D elements.
void transform_heads(float* dst /*[num_heads, D]*/, const float* src /*[num_heads, D]*/,
                     int64_t num_heads, int64_t head_dim, const HeadTransform& transform) {
  std::memcpy(dst, src, num_heads * head_dim * sizeof(float));
  for (int64_t h = 0; h < num_heads; ++h) {
    float* head = dst + h * head_dim;
    if (transform.norm_weight) normalize_head(head, transform.norm_weight, head_dim, transform.eps);
    rotate_head(head, head_dim, transform.cos, transform.sin);
  }
}

void check_qk_norm(const QKNorm& norm, int64_t head_dim) {
  const char* kn = "rope_and_cache";
  for (auto [name, t] : {std::pair{"qk_norm.q_weight", &norm.q_weight},
                         std::pair{"qk_norm.k_weight", &norm.k_weight}}) {
    check_rank(kn, name, *t, 1);
    check_dtype(kn, name, *t, DType::kF32);
    check_size(kn, name, *t, 0, head_dim, "head_dim of q_out");
  }
}

void check_no_overlap(const Tensor& q_out, const Tensor& qkv) {
  const auto* q_begin = static_cast<const char*>(q_out.data);
  const auto* qkv_begin = static_cast<const char*>(qkv.data);
  if (q_begin < qkv_begin + qkv.nbytes() && qkv_begin < q_begin + q_out.nbytes()) {
    throw std::invalid_argument("rope_and_cache: q_out " + q_out.shape_string() + " overlaps qkv " +
                                qkv.shape_string() + "; it must be a separate buffer");
  }
}

void check_shapes(const Tensor& q_out, const Tensor& qkv, const QKNorm* qk_norm,
                  const Tensor& cos_sin, const Tensor& positions, const Tensor& slot_mapping,
                  const Tensor& k_cache, const Tensor& v_cache, const KVCacheScales& scales) {
  const char* kn = "rope_and_cache";
  for (auto [name, t, rank] : {std::tuple{"q_out", &q_out, 3},
                               {"qkv", &qkv, 2},
                               {"cos_sin", &cos_sin, 2},
                               {"k_cache", &k_cache, 4},
                               {"v_cache", &v_cache, 4}}) {
    check_rank(kn, name, *t, rank);
  }
  for (auto [name, t] : {std::pair{"q_out", &q_out}, {"qkv", &qkv}, {"cos_sin", &cos_sin}})
    check_dtype(kn, name, *t, DType::kF32);
  check_kv_cache(kn, k_cache, v_cache, scales);
  check_rank(kn, "positions", positions, 1);
  check_rank(kn, "slot_mapping", slot_mapping, 1);
  check_dtype(kn, "positions", positions, DType::kI32);
  check_dtype(kn, "slot_mapping", slot_mapping, DType::kI32);
  const int64_t num_t = q_out.size(0), head_dim = q_out.size(2);
  if (head_dim % 2 != 0) {
    throw std::invalid_argument("rope_and_cache: head_dim " + std::to_string(head_dim) +
                                " must be even for neox rotation");
  }
  check_size(kn, "k_cache", k_cache, 3, head_dim, "head_dim of q_out");
  for (int d = 0; d < 4; ++d) check_size(kn, "v_cache", v_cache, d, k_cache.size(d), "as k_cache");
  const int64_t num_heads = q_out.size(1) + 2 * k_cache.size(2);
  check_size(kn, "qkv", qkv, 0, num_t, "tokens T of q_out");
  check_size(kn, "qkv", qkv, 1, num_heads * head_dim, "(Hq + 2 Hk) * D of q_out and k_cache");
  check_size(kn, "cos_sin", cos_sin, 1, head_dim, "head_dim of q_out");
  check_size(kn, "positions", positions, 0, num_t, "tokens T of q_out");
  check_size(kn, "slot_mapping", slot_mapping, 0, num_t, "tokens T of q_out");
  if (qk_norm) check_qk_norm(*qk_norm, head_dim);
  check_no_overlap(q_out, qkv);
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

// Writes n values times inv_scale into cache row `row` (n elements per row) of an fp32 or fp8
// cache.
void store_cache_row(const Tensor& cache, int64_t row, const float* values, int64_t n,
                     float inv_scale) {
  if (cache.dtype == DType::kF32) {
    float* dst = cache.ptr<float>() + row * n;
    for (int64_t i = 0; i < n; ++i) dst[i] = values[i] * inv_scale;
  } else {
    uint8_t* dst = cache.ptr<uint8_t>() + row * n;
    for (int64_t i = 0; i < n; ++i) dst[i] = float_to_fp8_e4m3(values[i] * inv_scale);
  }
}

}  // namespace

void rope_and_cache(Tensor q_out, Tensor qkv, const QKNorm* qk_norm, Tensor cos_sin,
                    Tensor positions, Tensor slot_mapping, Tensor k_cache, Tensor v_cache,
                    KVCacheScales scales) {
  check_shapes(q_out, qkv, qk_norm, cos_sin, positions, slot_mapping, k_cache, v_cache, scales);
  const int64_t num_t = q_out.size(0), num_q_heads = q_out.size(1);
  const int64_t num_kv_heads = k_cache.size(2), head_dim = q_out.size(2);
  const int32_t* pos = positions.ptr<int32_t>();
  const int32_t* slots = slot_mapping.ptr<int32_t>();
  check_index_ranges(pos, slots, num_t, cos_sin.size(0), k_cache.size(0) * k_cache.size(1));

  const float* table = cos_sin.ptr<float>();
  const float* q_norm = qk_norm ? qk_norm->q_weight.ptr<float>() : nullptr;
  const float* k_norm = qk_norm ? qk_norm->k_weight.ptr<float>() : nullptr;
  const float eps = qk_norm ? qk_norm->eps : 0.0f;
  const int64_t q_row = num_q_heads * head_dim, kv_row = num_kv_heads * head_dim;
  const int64_t qkv_row = q_row + 2 * kv_row;
  // As the CUDA kernel does: multiply by the reciprocal, so both round the same products.
  const float inv_k_scale = 1.0f / scales.k, inv_v_scale = 1.0f / scales.v;
  // Slot s is row s of [num_blocks * block_size, Hk * D] whatever block_size is, since a block
  // is block_size consecutive rows; block_size only matters to callers composing slots.
#pragma omp parallel for schedule(static) if (num_t >= 64)
  for (int64_t t = 0; t < num_t; ++t) {
    const float* cos = table + pos[t] * head_dim;
    const float* row = qkv.ptr<float>() + t * qkv_row;
    transform_heads(q_out.ptr<float>() + t * q_row, row, num_q_heads, head_dim,
                    {cos, cos + head_dim / 2, q_norm, eps});
    if (slots[t] < 0) continue;  // padding: its k and v are never read
    float* k_rotated = thread_scratch(static_cast<size_t>(kv_row));
    transform_heads(k_rotated, row + q_row, num_kv_heads, head_dim,
                    {cos, cos + head_dim / 2, k_norm, eps});
    store_cache_row(k_cache, slots[t], k_rotated, kv_row, inv_k_scale);
    store_cache_row(v_cache, slots[t], row + q_row + kv_row, kv_row, inv_v_scale);
  }
}

}  // namespace engine::cpu
