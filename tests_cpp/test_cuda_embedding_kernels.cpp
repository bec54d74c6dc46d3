// The CUDA embedding and gather_rows against the CPU backend's (the spec). Both only move and
// convert values, so results must match bit for bit: the embedding's fp32 -> compute dtype
// conversion rounds to nearest even on both sides, and the 16-bit -> 16-bit ones go through
// fp32 exactly. Outputs start poisoned; widths cover the 16-byte path and the narrow ones.

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <stdexcept>
#include <vector>

#include "backend/cpu/embedding.h"
#include "cuda_test_util.h"
#include "embedding/embedding.h"

namespace engine::test {
namespace {

constexpr int64_t kVocab = 1001;

class CudaEmbedding : public CudaTest {};

std::vector<int32_t> random_ids(int64_t count, int64_t bound, std::mt19937& rng) {
  std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(bound - 1));
  std::vector<int32_t> ids(count);
  for (auto& id : ids) id = dist(rng);
  if (count > 2) ids[count - 1] = ids[0];  // a repeated id
  return ids;
}

void check_embedding(DType table_dtype, DType dtype, int64_t tokens, int64_t hidden, int64_t offset,
                     std::mt19937& rng) {
  std::vector<float> unused;
  HostTensor table = to_dtype(random_f32({kVocab, hidden}, rng, -3.0f, 3.0f), table_dtype, &unused);
  HostTensor ids = i32_tensor(random_ids(tokens, kVocab, rng));
  HostTensor widened = poisoned_f32({tokens, hidden});
  cpu::embedding(widened.tensor, table.tensor, ids.tensor);
  std::vector<uint16_t> expected(widened.numel());
  for (int64_t i = 0; i < widened.numel(); ++i)
    expected[i] = to_bits(widened.ptr<float>()[i], dtype);

  DeviceTensor d_table = DeviceTensor::from_host(table, offset);
  DeviceTensor d_ids = DeviceTensor::from_host(ids);
  DeviceTensor out(dtype, {tokens, hidden}, offset);
  cuda::embedding(out.tensor, d_table.tensor, d_ids.tensor, nullptr);
  EXPECT_EQ(out.bits16(), expected);
}

TEST_F(CudaEmbedding, EmbeddingConvertsEveryTableDtype) {
  std::mt19937 rng(21);
  for (DType dtype : {DType::kBF16, DType::kF16}) {
    for (DType table_dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
      for (int64_t tokens : {1, 7, 33}) {
        for (int64_t hidden : {64, 576, 4096, 72, 4097, 30}) {
          SCOPED_TRACE(testing::Message()
                       << compute_name(dtype) << " table=" << dtype_name(table_dtype)
                       << " T=" << tokens << " H=" << hidden);
          check_embedding(table_dtype, dtype, tokens, hidden, 0, rng);
        }
      }
    }
  }
}

TEST_F(CudaEmbedding, EmbeddingUnalignedTable) {
  std::mt19937 rng(22);
  for (DType table_dtype : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(dtype_name(table_dtype));
    check_embedding(table_dtype, DType::kBF16, 7, 576, 1, rng);
  }
}

// Rows of any dtype and width: 16-, 4-, 2- and 1-byte copy units.
TEST_F(CudaEmbedding, GatherRowsMatchesCpu) {
  std::mt19937 rng(23);
  std::uniform_int_distribution<int> byte(0, 255);
  struct Case {
    DType dtype;
    int64_t width;
    int64_t offset;
  };
  const Case cases[] = {{DType::kBF16, 576, 0}, {DType::kF16, 4096, 0}, {DType::kF32, 64, 0},
                        {DType::kBF16, 72, 0},  {DType::kF16, 30, 0},   {DType::kBF16, 3, 0},
                        {DType::kI32, 7, 0},    {DType::kBF16, 576, 1}, {DType::kI64, 5, 0}};
  for (const Case& c : cases) {
    for (int64_t num_out : {1, 7, 33}) {
      SCOPED_TRACE(testing::Message() << dtype_name(c.dtype) << " H=" << c.width
                                      << " offset=" << c.offset << " S=" << num_out);
      const int64_t num_in = 40;
      HostTensor x(c.dtype, {num_in, c.width});
      auto* raw = static_cast<uint8_t*>(x.tensor.data);
      for (size_t i = 0; i < x.tensor.nbytes(); ++i) raw[i] = static_cast<uint8_t>(byte(rng));
      HostTensor indices = i32_tensor(random_ids(num_out, num_in, rng));
      HostTensor expected(c.dtype, {num_out, c.width});
      cpu::gather_rows(expected.tensor, x.tensor, indices.tensor);

      DeviceTensor d_x = DeviceTensor::from_host(x, c.offset);
      DeviceTensor d_indices = DeviceTensor::from_host(indices);
      DeviceTensor out(c.dtype, {num_out, c.width}, c.offset);
      cuda::gather_rows(out.tensor, d_x.tensor, d_indices.tensor, nullptr);
      const auto* e = static_cast<const uint8_t*>(expected.tensor.data);
      EXPECT_EQ(out.bytes(), std::vector<uint8_t>(e, e + expected.tensor.nbytes()));
    }
  }
}

TEST_F(CudaEmbedding, RejectsBadArguments) {
  DeviceTensor out(DType::kBF16, {3, 64});
  DeviceTensor out_f32(DType::kF32, {3, 64});
  DeviceTensor table(DType::kF32, {10, 64});
  DeviceTensor narrow_table(DType::kF32, {10, 32});
  DeviceTensor table_i32(DType::kI32, {10, 64});
  DeviceTensor ids(DType::kI32, {3});
  DeviceTensor ids_i64(DType::kI64, {3});
  DeviceTensor too_many_ids(DType::kI32, {4});
  DeviceTensor x_f16(DType::kF16, {10, 64});
  EXPECT_THROW(cuda::embedding(out_f32.tensor, table.tensor, ids.tensor, nullptr),
               std::invalid_argument);
  EXPECT_THROW(cuda::embedding(out.tensor, narrow_table.tensor, ids.tensor, nullptr),
               std::invalid_argument);
  EXPECT_THROW(cuda::embedding(out.tensor, table_i32.tensor, ids.tensor, nullptr),
               std::invalid_argument);
  EXPECT_THROW(cuda::embedding(out.tensor, table.tensor, ids_i64.tensor, nullptr),
               std::invalid_argument);
  EXPECT_THROW(cuda::embedding(out.tensor, table.tensor, too_many_ids.tensor, nullptr),
               std::invalid_argument);
  EXPECT_THROW(cuda::gather_rows(out.tensor, x_f16.tensor, ids.tensor, nullptr),
               std::invalid_argument);
  EXPECT_THROW(cuda::gather_rows(out.tensor, narrow_table.tensor, ids.tensor, nullptr),
               std::invalid_argument);
}

}  // namespace
}  // namespace engine::test
