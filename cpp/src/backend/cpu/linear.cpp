#include "backend/cpu/linear.h"

#include <algorithm>

#include "backend/cpu/checks.h"
#include "backend/cpu/linear_tiles.h"
#include "backend/cpu/scratch.h"
#include "backend/cpu/weight_types.h"

namespace engine::cpu {
namespace {

// Below this many multiply-adds a parallel region costs more than it saves.
constexpr int64_t kMinParallelMacs = 1 << 16;

// A chunk of weight rows, a block of token rows and their outputs fit in L2 together (2 MiB
// per core here); 64 KiB chunks also give even the 576 x 576 projections 12 items to balance.
constexpr int64_t kWeightChunkBytes = 64 * 1024;
constexpr int64_t kTokenBlockBytes = 512 * 1024;

// Token rows that share each loaded weight vector (the MT of one dot tile).
constexpr int kMaxDotRows = 8;

struct Range {
  int64_t begin;
  int64_t end;
};

#ifdef EMBER_CPU_AVX512

// Weight rows per dot tile for MT token rows: MT * NT accumulators plus NT weight vectors must
// fit the 32 zmm registers.
constexpr int dot_tile_width(int mt) { return mt <= 3 ? 8 : mt == 4 ? 6 : mt <= 6 ? 4 : 3; }

template <int MT, typename W>
void dot_rows(float* out /*[MT, N]*/, const float* x /*[MT, K]*/, const W* w /*[N, K]*/,
              int64_t num_n, int64_t num_k, Range rows, const float* bias /*[N] or null*/) {
  constexpr int NT = dot_tile_width(MT);
  int64_t n = rows.begin;
  for (; n + NT <= rows.end; n += NT) {
    dot_tile<MT, NT>(out + n, num_n, x, num_k, w + n * num_k, num_k, num_k,
                     bias ? bias + n : nullptr);
  }
  for (; n < rows.end; ++n) {
    dot_tile<MT, 1>(out + n, num_n, x, num_k, w + n * num_k, num_k, num_k,
                    bias ? bias + n : nullptr);
  }
}

template <typename W>
void dot_rows_any(int num_rows, float* out, const float* x, const W* w, int64_t num_n,
                  int64_t num_k, Range rows, const float* bias) {
  switch (num_rows) {
    case 1:
      return dot_rows<1>(out, x, w, num_n, num_k, rows, bias);
    case 2:
      return dot_rows<2>(out, x, w, num_n, num_k, rows, bias);
    case 3:
      return dot_rows<3>(out, x, w, num_n, num_k, rows, bias);
    case 4:
      return dot_rows<4>(out, x, w, num_n, num_k, rows, bias);
    case 5:
      return dot_rows<5>(out, x, w, num_n, num_k, rows, bias);
    case 6:
      return dot_rows<6>(out, x, w, num_n, num_k, rows, bias);
    case 7:
      return dot_rows<7>(out, x, w, num_n, num_k, rows, bias);
    default:
      return dot_rows<8>(out, x, w, num_n, num_k, rows, bias);
  }
}

// Work items are (block of token rows, chunk of weight rows), handed out dynamically: on a
// shared machine a descheduled thread must not stall the others at the barrier (static shares
// measured 2-10x slower under load). Within an item every loaded weight vector is used for up
// to 8 token rows, and the chunk stays in L2 for the remaining rows of the token block, so
// weights come from memory once per token block.
template <typename W>
void linear_blocked(float* out /*[T, N]*/, const float* x /*[T, K]*/, const W* w /*[N, K]*/,
                    int64_t num_t, int64_t num_n, int64_t num_k, const float* bias) {
  const int64_t row_bytes = std::max<int64_t>(1, num_k * static_cast<int64_t>(sizeof(W)));
  // 24 is a multiple of every dot tile width, so tiles stay full.
  const int64_t chunk_rows = std::max<int64_t>(24, kWeightChunkBytes / row_bytes / 24 * 24);
  const int64_t t_block = std::max<int64_t>(
      kMaxDotRows, kTokenBlockBytes / std::max<int64_t>(1, num_k * 4) / kMaxDotRows * kMaxDotRows);
  const int64_t num_chunks = (num_n + chunk_rows - 1) / chunk_rows;
  const int64_t num_items = (num_t + t_block - 1) / t_block * num_chunks;
#pragma omp parallel for schedule(dynamic, 1) if (num_t * num_n * num_k >= kMinParallelMacs)
  for (int64_t item = 0; item < num_items; ++item) {
    const int64_t t0 = item / num_chunks * t_block, t_end = std::min(num_t, t0 + t_block);
    const int64_t c0 = item % num_chunks * chunk_rows;
    const Range chunk{c0, std::min(num_n, c0 + chunk_rows)};
    for (int64_t t1 = t0; t1 < t_end; t1 += kMaxDotRows) {
      int rows = static_cast<int>(std::min<int64_t>(kMaxDotRows, t_end - t1));
      dot_rows_any(rows, out + t1 * num_n, x + t1 * num_k, w, num_n, num_k, chunk, bias);
    }
  }
}

#endif  // EMBER_CPU_AVX512

// Portable path for machines without AVX-512: widen one weight row, then dot it with each
// token row (the compiler vectorizes the inner loop).
template <typename W>
void linear_portable(float* out, const float* x, const W* w, int64_t num_t, int64_t num_n,
                     int64_t num_k, const float* bias) {
#pragma omp parallel if (num_t * num_n * num_k >= kMinParallelMacs)
  {
    float* row = thread_scratch(static_cast<size_t>(num_k));
#pragma omp for schedule(static)
    for (int64_t n = 0; n < num_n; ++n) {
      widen_weights(row, w + n * num_k, num_k);
      for (int64_t t = 0; t < num_t; ++t) {
        const float* xt = x + t * num_k;
        float sum = 0.0f;
        for (int64_t k = 0; k < num_k; ++k) sum += xt[k] * row[k];
        out[t * num_n + n] = sum + (bias ? bias[n] : 0.0f);
      }
    }
  }
}

void check_linear_args(const Tensor& out, const Tensor& x, const Tensor& weight,
                       const Tensor* bias) {
  check_rank("linear", "out", out, 2);
  check_rank("linear", "x", x, 2);
  check_rank("linear", "weight", weight, 2);
  check_dtype("linear", "out", out, DType::kF32);
  check_dtype("linear", "x", x, DType::kF32);
  check_float_dtype("linear", "weight", weight);
  check_size("linear", "x", x, 1, weight.size(1), "in_features K of weight [N, K]");
  check_size("linear", "out", out, 0, x.size(0), "tokens T of x [T, K]");
  check_size("linear", "out", out, 1, weight.size(0), "out_features N of weight [N, K]");
  if (bias != nullptr) {
    check_rank("linear", "bias", *bias, 1);
    check_dtype("linear", "bias", *bias, DType::kF32);
    check_size("linear", "bias", *bias, 0, weight.size(0), "out_features N of weight [N, K]");
  }
}

}  // namespace

void linear(Tensor out, Tensor x, Tensor weight, const Tensor* bias) {
  check_linear_args(out, x, weight, bias);
  const int64_t num_t = x.size(0), num_n = weight.size(0), num_k = x.size(1);
  if (num_t == 0 || num_n == 0) return;
  float* o = out.ptr<float>();
  const float* xs = x.ptr<float>();
  const float* b = bias ? bias->ptr<float>() : nullptr;
  dispatch_weight_dtype(weight.dtype, [&](auto tag) {
    using W = std::remove_cv_t<std::remove_pointer_t<decltype(tag)>>;
    const W* w = static_cast<const W*>(weight.data);
#ifdef EMBER_CPU_AVX512
    linear_blocked(o, xs, w, num_t, num_n, num_k, b);
#else
    linear_portable(o, xs, w, num_t, num_n, num_k, b);
#endif
  });
}

}  // namespace engine::cpu
