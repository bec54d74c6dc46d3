#include "backend/cpu/attention.h"

#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend/cpu/checks.h"
#include "backend/cpu/scratch.h"

namespace engine::cpu {
namespace {

// Query rows (heads x tokens) one work item carries: enough to reuse each K/V block, loaded
// into L1 once, for many rows, yet small enough that long prefills split into many items.
constexpr int64_t kRowsPerItem = 64;

struct AttentionProblem {
  float* out;           // [T, Hq, D]
  const float* q;       // [T, Hq, D]
  const void* k_cache;  // [num_blocks, block_size, Hk, D] f32 or fp8 e4m3
  const void* v_cache;  // [num_blocks, block_size, Hk, D] as k_cache
  bool fp8_cache;
  const int32_t* query_start;  // [B + 1]
  const int32_t* seq_lens;     // [B]
  const int32_t* block_table;  // [B, max_blocks]
  int64_t max_blocks, block_size, num_q_heads, num_kv_heads, head_dim;
  float scale;        // softmax scale times the cache's k scale
  float value_scale;  // the cache's v scale
  std::optional<int> window;
};

// fp32 value of every fp8 e4m3 code.
const std::array<float, 256>& fp8_table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int c = 0; c < 256; ++c) t[c] = fp8_e4m3_to_float(static_cast<uint8_t>(c));
    return t;
  }();
  return table;
}

// Keys [first, last) of one cache block as fp32 rows of stride D: straight from an fp32 cache,
// widened into `scratch` ([block_size, D]) from an fp8 one. base: element offset of the block's
// first row for the item's kv head.
const float* block_rows(const AttentionProblem& p, const void* cache, int64_t base, int64_t first,
                        int64_t last, float* scratch, int64_t& stride) {
  const int64_t row_stride = p.num_kv_heads * p.head_dim;
  if (!p.fp8_cache) {
    stride = row_stride;
    return static_cast<const float*>(cache) + base + first * row_stride;
  }
  const std::array<float, 256>& table = fp8_table();
  stride = p.head_dim;
  for (int64_t j = first; j < last; ++j) {
    const uint8_t* src = static_cast<const uint8_t*>(cache) + base + j * row_stride;
    for (int64_t d = 0; d < p.head_dim; ++d) scratch[(j - first) * p.head_dim + d] = table[src[d]];
  }
  return scratch;
}

// Query heads [head_begin, head_end) of kv head kv_head's group, for the sequence's new
// tokens [query_begin, query_end) (counted from its first new token).
struct WorkItem {
  int32_t seq, kv_head, head_begin, head_end, query_begin, query_end;
};

struct RowState {
  float* acc;  // [D] unnormalized output
  float max_score;
  float sum_exp;
};

// Folds keys [j_begin, j_end) of one block into a row's online softmax: rescale the running
// sums once per block by exp(old max - new max) rather than once per key.
// kHeadDim > 0 fixes head_dim at compile time so the loops over it unroll into whole vectors.
template <int kHeadDim>
void fold_keys(RowState& row, const float* q /*[D], pre-scaled*/, const float* k /*[keys, stride]*/,
               const float* v /*[keys, stride]*/, int64_t stride, int64_t num_keys,
               int64_t runtime_head_dim, float* scores /*[num_keys]*/) {
  const int64_t head_dim = kHeadDim > 0 ? kHeadDim : runtime_head_dim;
  float block_max = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < num_keys; ++j) {
    const float* kj = k + j * stride;
    float s = 0.0f;
    for (int64_t d = 0; d < head_dim; ++d) s += q[d] * kj[d];
    scores[j] = s;
    block_max = std::max(block_max, s);
  }
  const float new_max = std::max(row.max_score, block_max);
  const float correction = std::exp(row.max_score - new_max);
  float block_sum = 0.0f;
  for (int64_t j = 0; j < num_keys; ++j) {
    scores[j] = std::exp(scores[j] - new_max);
    block_sum += scores[j];
  }
  row.sum_exp = row.sum_exp * correction + block_sum;
  row.max_score = new_max;
  for (int64_t d = 0; d < head_dim; ++d) row.acc[d] *= correction;
  for (int64_t j = 0; j < num_keys; ++j) {
    const float* vj = v + j * stride;
    const float p = scores[j];
    for (int64_t d = 0; d < head_dim; ++d) row.acc[d] += p * vj[d];
  }
}

void fold_keys_any(RowState& row, const float* q, const float* k, const float* v, int64_t stride,
                   int64_t num_keys, int64_t head_dim, float* scores) {
  if (head_dim == 64) return fold_keys<64>(row, q, k, v, stride, num_keys, head_dim, scores);
  if (head_dim == 128) return fold_keys<128>(row, q, k, v, stride, num_keys, head_dim, scores);
  fold_keys<0>(row, q, k, v, stride, num_keys, head_dim, scores);
}

void run_item(const AttentionProblem& p, const WorkItem& w) {
  const int64_t dim = p.head_dim, bs = p.block_size;
  const int64_t group = p.num_q_heads / p.num_kv_heads;
  const int64_t first_token = p.query_start[w.seq];
  const int64_t num_new = p.query_start[w.seq + 1] - first_token;
  const int64_t context_before = p.seq_lens[w.seq] - num_new;
  const int64_t num_queries = w.query_end - w.query_begin;
  const int64_t num_rows = num_queries * (w.head_end - w.head_begin);

  const int64_t widened = p.fp8_cache ? 2 * bs * dim : 0;
  float* scratch = thread_scratch(static_cast<size_t>(num_rows * (2 * dim + 2) + bs + widened));
  float* q_rows = scratch;                   // [rows, D]
  float* acc = q_rows + num_rows * dim;      // [rows, D]
  float* max_scores = acc + num_rows * dim;  // [rows]
  float* sums = max_scores + num_rows;       // [rows]
  float* scores = sums + num_rows;           // [block_size]
  float* k_widened = scores + bs;            // [block_size, D], fp8 caches only
  float* v_widened = k_widened + bs * dim;   // [block_size, D], fp8 caches only
  auto token_of = [&](int64_t r) { return first_token + w.query_begin + r % num_queries; };
  auto head_of = [&](int64_t r) { return w.kv_head * group + w.head_begin + r / num_queries; };
  for (int64_t r = 0; r < num_rows; ++r) {
    const float* src = p.q + (token_of(r) * p.num_q_heads + head_of(r)) * dim;
    for (int64_t d = 0; d < dim; ++d) q_rows[r * dim + d] = src[d] * p.scale;
    std::fill(acc + r * dim, acc + (r + 1) * dim, 0.0f);
    max_scores[r] = -std::numeric_limits<float>::infinity();
    sums[r] = 0.0f;
  }
  // Row r is new token (r % num_queries); its own key index bounds what it may see.
  auto last_key = [&](int64_t r) { return context_before + w.query_begin + r % num_queries; };
  auto first_key = [&](int64_t r) {
    return p.window ? std::max<int64_t>(0, last_key(r) - *p.window + 1) : int64_t{0};
  };
  const int64_t key_begin = first_key(0), key_end = last_key(num_queries - 1) + 1;
  for (int64_t blk = key_begin / bs; blk * bs < key_end; ++blk) {
    const int64_t block = p.block_table[w.seq * p.max_blocks + blk];
    const int64_t base = (block * bs * p.num_kv_heads + w.kv_head) * dim;
    // The block's keys some row sees, [block_first, block_last) within the block.
    const int64_t block_first = std::max(blk * bs, key_begin) - blk * bs;
    const int64_t block_last = std::min((blk + 1) * bs, key_end) - blk * bs;
    int64_t stride = 0;
    const float* k_rows =
        block_rows(p, p.k_cache, base, block_first, block_last, k_widened, stride);
    const float* v_rows =
        block_rows(p, p.v_cache, base, block_first, block_last, v_widened, stride);
    for (int64_t r = 0; r < num_rows; ++r) {
      const int64_t lo = std::max(blk * bs, first_key(r));
      const int64_t hi = std::min((blk + 1) * bs, last_key(r) + 1);
      if (lo >= hi) continue;
      RowState row{acc + r * dim, max_scores[r], sums[r]};
      const int64_t offset = (lo - blk * bs - block_first) * stride;
      fold_keys_any(row, q_rows + r * dim, k_rows + offset, v_rows + offset, stride, hi - lo, dim,
                    scores);
      max_scores[r] = row.max_score;
      sums[r] = row.sum_exp;
    }
  }
  for (int64_t r = 0; r < num_rows; ++r) {
    float* dst = p.out + (token_of(r) * p.num_q_heads + head_of(r)) * dim;
    // Every row sees at least its own key, so sums[r] > 0.
    const float inv_sum = p.value_scale / sums[r];
    for (int64_t d = 0; d < dim; ++d) dst[d] = acc[r * dim + d] * inv_sum;
  }
}

// Items of (sequence, kv head, query tile). When they are too few to keep every thread busy
// (decode of a small batch), each kv head's group of query heads is split as well.
std::vector<WorkItem> plan_items(const AttentionProblem& p, int64_t num_seqs) {
  const int64_t group = p.num_q_heads / p.num_kv_heads;
  const int64_t queries_per_item = std::max<int64_t>(1, kRowsPerItem / group);
  std::vector<WorkItem> items;
  for (int64_t b = 0; b < num_seqs; ++b) {
    const int64_t num_new = p.query_start[b + 1] - p.query_start[b];
    for (int64_t q0 = 0; q0 < num_new; q0 += queries_per_item)
      for (int64_t h = 0; h < p.num_kv_heads; ++h)
        items.push_back({int32_t(b), int32_t(h), 0, int32_t(group), int32_t(q0),
                         int32_t(std::min(num_new, q0 + queries_per_item))});
  }
  const int64_t wanted = 4 * static_cast<int64_t>(omp_get_max_threads());
  if (items.empty() || static_cast<int64_t>(items.size()) >= wanted || group == 1) return items;
  const int64_t num_splits = std::min<int64_t>(group, (wanted + items.size() - 1) / items.size());
  std::vector<WorkItem> split;
  for (const WorkItem& item : items)
    for (int64_t s = 0; s < num_splits; ++s) {
      WorkItem part = item;
      part.head_begin = int32_t(group * s / num_splits);
      part.head_end = int32_t(group * (s + 1) / num_splits);
      if (part.head_end > part.head_begin) split.push_back(part);
    }
  return split;
}

}  // namespace

namespace {

void check_tensors(const Tensor& out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                   const Tensor& query_start_loc, const Tensor& seq_lens,
                   const Tensor& block_table) {
  const char* kn = "paged_attention";
  check_rank(kn, "q", q, 3);
  check_rank(kn, "out", out, 3);
  check_rank(kn, "k_cache", k_cache, 4);
  check_rank(kn, "v_cache", v_cache, 4);
  for (auto [name, t] : {std::pair{"q", &q}, {"out", &out}}) check_dtype(kn, name, *t, DType::kF32);
  for (int d = 0; d < 3; ++d) check_size(kn, "out", out, d, q.size(d), "same as q");
  for (int d = 0; d < 4; ++d) check_size(kn, "v_cache", v_cache, d, k_cache.size(d), "as k_cache");
  check_size(kn, "k_cache", k_cache, 3, q.size(2), "head_dim D of q");
  if (k_cache.size(2) <= 0 || q.size(1) % k_cache.size(2) != 0) {
    throw std::invalid_argument("paged_attention: q has " + std::to_string(q.size(1)) +
                                " heads, which must be a multiple of the cache's " +
                                std::to_string(k_cache.size(2)) + " kv heads");
  }
  check_rank(kn, "query_start_loc", query_start_loc, 1);
  check_rank(kn, "seq_lens", seq_lens, 1);
  check_rank(kn, "block_table", block_table, 2);
  for (auto [name, t] : {std::pair{"query_start_loc", &query_start_loc},
                         {"seq_lens", &seq_lens},
                         {"block_table", &block_table}})
    check_dtype(kn, name, *t, DType::kI32);
  check_size(kn, "query_start_loc", query_start_loc, 0, seq_lens.size(0) + 1,
             "number of sequences B + 1");
  check_size(kn, "block_table", block_table, 0, seq_lens.size(0), "number of sequences B");
}

// Every index the kernel follows is checked here, before any thread reads memory with it.
void check_sequences(const AttentionProblem& p, int64_t num_seqs, int64_t num_tokens,
                     int64_t num_blocks) {
  auto fail = [](int64_t b, const std::string& what) {
    throw std::invalid_argument("paged_attention: sequence " + std::to_string(b) + ": " + what);
  };
  if (p.query_start[0] != 0 || p.query_start[num_seqs] != num_tokens) {
    throw std::invalid_argument(
        "paged_attention: query_start_loc must run from 0 to T = " + std::to_string(num_tokens) +
        " but runs from " + std::to_string(p.query_start[0]) + " to " +
        std::to_string(p.query_start[num_seqs]));
  }
  for (int64_t b = 0; b < num_seqs; ++b) {
    const int64_t num_new = p.query_start[b + 1] - p.query_start[b];
    const int64_t seq_len = p.seq_lens[b];
    if (num_new < 0) fail(b, "query_start_loc decreases (" + std::to_string(num_new) + " tokens)");
    if (seq_len < num_new) {
      fail(b, "seq_len " + std::to_string(seq_len) + " is smaller than its " +
                  std::to_string(num_new) + " new tokens");
    }
    const int64_t used_blocks = (seq_len + p.block_size - 1) / p.block_size;
    if (used_blocks > p.max_blocks) {
      fail(b, "seq_len " + std::to_string(seq_len) + " needs " + std::to_string(used_blocks) +
                  " blocks but block_table has " + std::to_string(p.max_blocks) + " columns");
    }
    for (int64_t i = 0; i < used_blocks; ++i) {
      const int64_t block = p.block_table[b * p.max_blocks + i];
      if (block < 0 || block >= num_blocks) {
        fail(b, "block_table entry " + std::to_string(i) + " is " + std::to_string(block) +
                    " but must lie in [0, " + std::to_string(num_blocks) + ")");
      }
    }
  }
}

}  // namespace

void paged_attention(Tensor out, Tensor q, Tensor k_cache, Tensor v_cache, Tensor query_start_loc,
                     Tensor seq_lens, Tensor block_table, float scale,
                     std::optional<int> sliding_window, KVCacheScales scales) {
  check_tensors(out, q, k_cache, v_cache, query_start_loc, seq_lens, block_table);
  check_kv_cache("paged_attention", k_cache, v_cache, scales);
  if (sliding_window && *sliding_window <= 0) {
    throw std::invalid_argument("paged_attention: sliding_window is " +
                                std::to_string(*sliding_window) + " but must be > 0");
  }
  AttentionProblem p{out.ptr<float>(),
                     q.ptr<float>(),
                     k_cache.data,
                     v_cache.data,
                     k_cache.dtype == DType::kFP8E4M3,
                     query_start_loc.ptr<int32_t>(),
                     seq_lens.ptr<int32_t>(),
                     block_table.ptr<int32_t>(),
                     block_table.size(1),
                     k_cache.size(1),
                     q.size(1),
                     k_cache.size(2),
                     q.size(2),
                     scale * scales.k,
                     scales.v,
                     sliding_window};
  const int64_t num_seqs = seq_lens.size(0);
  check_sequences(p, num_seqs, q.size(0), k_cache.size(0));
  const std::vector<WorkItem> items = plan_items(p, num_seqs);
  const int64_t num_items = static_cast<int64_t>(items.size());
#pragma omp parallel for schedule(dynamic, 1) if (num_items > 1)
  for (int64_t i = 0; i < num_items; ++i) run_item(p, items[i]);
}

}  // namespace engine::cpu
