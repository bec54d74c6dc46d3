#include <algorithm>
#include <cstdint>
#include <stdexcept>

#include "common/cuda_check.h"
#include "common/pack.cuh"
#include "common/tensor_checks.h"
#include "embedding/embedding.cuh"
#include "embedding/embedding.h"

namespace engine::cuda {
namespace {

constexpr int kMaxThreads = 256;

int threads_for(int64_t num_units) {
  return static_cast<int>(std::clamp<int64_t>((num_units + 31) / 32 * 32, 32, kMaxThreads));
}

// Calls fn(Type{}) with the value-initialised element type of a float dtype.
template <typename Fn>
void dispatch_float(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kF32:
      return fn(float{});
    case DType::kBF16:
      return fn(__nv_bfloat16{});
    default:
      return fn(__half{});
  }
}

void check_row_count(const char* kernel, const char* arg, const Tensor& t) {
  if (t.size(0) > INT32_MAX) {
    throw std::invalid_argument(arg_check::describe(kernel, arg, t) +
                                " has more than 2^31 - 1 rows");
  }
}

}  // namespace

void embedding(Tensor out, Tensor table, Tensor ids, cudaStream_t stream) {
  const char* kn = "embedding";
  arg_check::rank(kn, "out", out, 2);
  arg_check::rank(kn, "table", table, 2);
  arg_check::rank(kn, "ids", ids, 1);
  arg_check::compute_dtype(kn, "out", out);
  if (table.dtype != DType::kF32 && table.dtype != DType::kBF16 && table.dtype != DType::kF16) {
    throw std::invalid_argument(arg_check::describe(kn, "table", table) +
                                " must have dtype float32, bfloat16 or float16");
  }
  arg_check::dtype(kn, "ids", ids, DType::kI32);
  arg_check::size(kn, "out", out, 0, ids.size(0), "number of ids T");
  arg_check::size(kn, "out", out, 1, table.size(1), "hidden size H of table [V, H]");
  check_row_count(kn, "out", out);
  const int64_t num_tokens = out.size(0), hidden = out.size(1);
  if (num_tokens == 0 || hidden == 0) return;
  const bool vectorize = hidden % 8 == 0 && is_aligned_16(out.data) && is_aligned_16(table.data);
  dispatch_float(out.dtype, [&](auto out_tag) {
    using Out = decltype(out_tag);
    dispatch_float(table.dtype, [&](auto src_tag) {
      using Src = decltype(src_tag);
      const auto launch = [&]<int kVec>() {
        embedding_kernel<Out, Src, kVec>
            <<<static_cast<unsigned>(num_tokens), threads_for(hidden / kVec), 0, stream>>>(
                out.ptr<Out>(), table.ptr<const Src>(), ids.ptr<const int32_t>(), hidden);
      };
      if (vectorize) {
        launch.template operator()<8>();
      } else {
        launch.template operator()<1>();
      }
    });
  });
  EMBER_CUDA_CHECK_LAUNCH();
}

void gather_rows(Tensor out, Tensor x, Tensor indices, cudaStream_t stream) {
  const char* kn = "gather_rows";
  arg_check::rank(kn, "out", out, 2);
  arg_check::rank(kn, "x", x, 2);
  arg_check::rank(kn, "indices", indices, 1);
  arg_check::dtype(kn, "out", out, x.dtype);
  arg_check::dtype(kn, "indices", indices, DType::kI32);
  arg_check::size(kn, "out", out, 0, indices.size(0), "number of indices S");
  arg_check::size(kn, "out", out, 1, x.size(1), "row width H of x");
  check_row_count(kn, "out", out);
  const int64_t num_rows = out.size(0);
  const int64_t row_bytes = x.size(1) * static_cast<int64_t>(dtype_size(x.dtype));
  if (num_rows == 0 || row_bytes == 0) return;
  const auto fits = [&](int64_t unit) {
    const auto aligned = [unit](const void* p) {
      return reinterpret_cast<uintptr_t>(p) % unit == 0;
    };
    return row_bytes % unit == 0 && aligned(out.data) && aligned(x.data);
  };
  const auto launch = [&](auto unit_tag) {
    using Unit = decltype(unit_tag);
    const int64_t row_units = row_bytes / static_cast<int64_t>(sizeof(Unit));
    gather_rows_kernel<Unit>
        <<<static_cast<unsigned>(num_rows), threads_for(row_units), 0, stream>>>(
            static_cast<Unit*>(out.data), static_cast<const Unit*>(x.data),
            indices.ptr<const int32_t>(), row_units);
  };
  if (fits(16)) {
    launch(uint4{});
  } else if (fits(4)) {
    launch(uint32_t{});
  } else if (fits(2)) {
    launch(uint16_t{});
  } else {
    launch(uint8_t{});
  }
  EMBER_CUDA_CHECK_LAUNCH();
}

}  // namespace engine::cuda
