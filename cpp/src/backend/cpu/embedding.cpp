#include "backend/cpu/embedding.h"

#include <cstring>
#include <stdexcept>
#include <string>

#include "backend/cpu/checks.h"
#include "backend/cpu/weight_types.h"

namespace engine::cpu {
namespace {

// Validates every index up front: an out-of-range id must not read outside the table, and
// exceptions cannot leave an OpenMP region.
void check_indices(const char* kernel, const int32_t* ids, int64_t num_ids, int64_t num_rows) {
  for (int64_t i = 0; i < num_ids; ++i) {
    if (ids[i] < 0 || ids[i] >= num_rows) {
      throw std::out_of_range(std::string(kernel) + ": index " + std::to_string(ids[i]) +
                              " at position " + std::to_string(i) + " must lie in [0, " +
                              std::to_string(num_rows) + ")");
    }
  }
}

}  // namespace

void embedding(Tensor out, Tensor table, Tensor ids) {
  check_rank("embedding", "out", out, 2);
  check_rank("embedding", "table", table, 2);
  check_rank("embedding", "ids", ids, 1);
  check_dtype("embedding", "out", out, DType::kF32);
  check_float_dtype("embedding", "table", table);
  check_dtype("embedding", "ids", ids, DType::kI32);
  check_size("embedding", "out", out, 0, ids.size(0), "number of ids T");
  check_size("embedding", "out", out, 1, table.size(1), "hidden size H of table [V, H]");
  const int64_t num_t = ids.size(0), hidden = table.size(1);
  const int32_t* id = ids.ptr<int32_t>();
  check_indices("embedding", id, num_t, table.size(0));
  float* o = out.ptr<float>();
  dispatch_weight_dtype(table.dtype, [&](auto tag) {
    using W = std::remove_cv_t<std::remove_pointer_t<decltype(tag)>>;
    const W* rows = static_cast<const W*>(table.data);
    for (int64_t t = 0; t < num_t; ++t)
      widen_weights(o + t * hidden, rows + id[t] * hidden, hidden);
  });
}

void gather_rows(Tensor out, Tensor x, Tensor indices) {
  check_rank("gather_rows", "out", out, 2);
  check_rank("gather_rows", "x", x, 2);
  check_rank("gather_rows", "indices", indices, 1);
  check_dtype("gather_rows", "out", out, x.dtype);
  check_dtype("gather_rows", "indices", indices, DType::kI32);
  check_size("gather_rows", "out", out, 0, indices.size(0), "number of indices S");
  check_size("gather_rows", "out", out, 1, x.size(1), "row width H of x");
  const int32_t* idx = indices.ptr<int32_t>();
  check_indices("gather_rows", idx, indices.size(0), x.size(0));
  const size_t row_bytes = static_cast<size_t>(x.size(1)) * dtype_size(x.dtype);
  char* dst = static_cast<char*>(out.data);
  const char* src = static_cast<const char*>(x.data);
  for (int64_t i = 0; i < indices.size(0); ++i)
    std::memcpy(dst + i * row_bytes, src + idx[i] * row_bytes, row_bytes);
}

}  // namespace engine::cpu
