// embedding (all table dtypes) and gather_rows against naive lookups.

#include <gtest/gtest.h>

#include <random>
#include <stdexcept>

#include "backend/cpu/embedding.h"
#include "cpu_test_util.h"

namespace engine::test {
namespace {

TEST(CpuEmbedding, LooksUpRowsForEveryDtype) {
  std::mt19937 rng(21);
  const int64_t vocab = 101, hidden = 37;
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16})
    for (int64_t num_t : {1, 7, 33}) {
      std::vector<float> rounded;
      HostTensor table = to_dtype(random_f32({vocab, hidden}, rng), dtype, &rounded);
      std::vector<int32_t> ids(num_t);
      for (auto& id : ids) id = static_cast<int32_t>(rng() % vocab);
      ids[0] = vocab - 1;
      HostTensor id_tensor = i32_tensor(ids);
      HostTensor out = poisoned_f32({num_t, hidden});
      cpu::embedding(out.tensor, table.tensor, id_tensor.tensor);
      for (int64_t t = 0; t < num_t; ++t)
        for (int64_t h = 0; h < hidden; ++h)
          ASSERT_EQ(out.ptr<float>()[t * hidden + h], rounded[ids[t] * hidden + h])
              << dtype_name(dtype) << " t=" << t << " h=" << h;
    }
}

TEST(CpuEmbedding, RejectsOutOfRangeIdsAndBadShapes) {
  std::mt19937 rng(22);
  HostTensor table = random_f32({10, 4}, rng);
  HostTensor out = poisoned_f32({2, 4});
  HostTensor too_big = i32_tensor({3, 10});
  EXPECT_THROW(cpu::embedding(out.tensor, table.tensor, too_big.tensor), std::out_of_range);
  HostTensor negative = i32_tensor({-1, 0});
  EXPECT_THROW(cpu::embedding(out.tensor, table.tensor, negative.tensor), std::out_of_range);
  HostTensor ids = i32_tensor({1, 2, 3});
  EXPECT_THROW(cpu::embedding(out.tensor, table.tensor, ids.tensor), std::invalid_argument);
}

TEST(CpuGatherRows, CopiesSelectedRows) {
  std::mt19937 rng(23);
  for (int64_t num_rows : {1, 7, 33}) {
    const int64_t width = 29;
    HostTensor x = random_f32({num_rows, width}, rng);
    std::vector<int32_t> idx = {int32_t(num_rows - 1), 0, int32_t(num_rows / 2), 0};
    HostTensor indices = i32_tensor(idx);
    HostTensor out = poisoned_f32({4, width});
    cpu::gather_rows(out.tensor, x.tensor, indices.tensor);
    for (int64_t i = 0; i < 4; ++i)
      for (int64_t h = 0; h < width; ++h)
        ASSERT_EQ(out.ptr<float>()[i * width + h], x.ptr<float>()[idx[i] * width + h]);
  }
  HostTensor x = random_f32({3, 5}, rng);
  HostTensor out = poisoned_f32({1, 5});
  HostTensor bad = i32_tensor({3});
  EXPECT_THROW(cpu::gather_rows(out.tensor, x.tensor, bad.tensor), std::out_of_range);
}

}  // namespace
}  // namespace engine::test
