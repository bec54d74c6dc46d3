#pragma once
// WeightLoader: hands the model each weight by its Hugging Face name, shape-checked and in the
// dtype the load options ask for, from a safetensors checkpoint or (load_format "dummy") from a
// seeded random generator. It owns every byte it hands out until release().

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "model/model.h"
#include "model/safetensors.h"

namespace engine {

// The memory behind a model's weights: the mmap'd checkpoint (zero-copy tensors point into it)
// and the buffers of converted or generated weights.
struct WeightStorage {
  std::shared_ptr<WeightStore> checkpoint;
  std::vector<Buffer> buffers;
};

// One part of a stacked weight: the tensor's name and its rows (its length, for a vector).
struct StackedPart {
  std::string name;
  int64_t num_rows = 0;
};

class WeightLoader {
 public:
  // Throws std::invalid_argument for an unknown dtype or load_format; std::runtime_error if
  // the checkpoint cannot be opened. `checkpoint_dtype` is config.json's torch_dtype, which
  // "auto" means for dummy weights.
  WeightLoader(const LoadOptions& options, const std::string& checkpoint_dtype, Backend& backend);

  bool is_dummy() const { return !checkpoint_; }
  bool contains(const std::string& name) const;

  // A matrix (or embedding table) in the load dtype: zero copy from the mapping on the CPU
  // when no conversion is needed. Throws std::runtime_error naming the tensor and both shapes
  // when the checkpoint's shape differs.
  Tensor matrix(const std::string& name, const std::vector<int64_t>& shape);
  // Matrices of num_cols columns stacked along rows in the order given (q, k, v; gate, up):
  // [sum of num_rows, num_cols], in the load dtype of the first. One buffer of their own, even
  // on the CPU; each part is copied in as it is read, with no fp32 detour when its dtype is
  // kept. Each part is read, or generated from its own name, exactly as matrix() would, so
  // dummy values do not depend on the stacking.
  Tensor stacked_matrices(const std::vector<StackedPart>& parts, int64_t num_cols);
  // An fp32 vector (norm weight, bias); dummy values are `dummy_value` if given, else random.
  Tensor fp32_vector(const std::string& name, int64_t size, std::optional<float> dummy_value);
  // fp32 vectors concatenated in the order given (q, k, v biases): [sum of num_rows]. Dummy
  // values are random, each part's from its own name as fp32_vector's.
  Tensor stacked_fp32_vectors(const std::vector<StackedPart>& parts);
  // A per-tensor scalar the checkpoint may hold (an fp8 cache's calibrated K/V scale): nullopt
  // when it has no tensor of that name (and for dummy weights). Throws std::runtime_error
  // naming the tensor unless it is one float32, bfloat16 or float16 value (shape [] or [1]).
  std::optional<float> optional_scalar(const std::string& name);

  WeightStorage release();

 private:
  // fp32 host copy of a checked checkpoint tensor, or dummy values.
  std::vector<float> host_values(const std::string& name, const std::vector<int64_t>& shape,
                                 std::optional<float> dummy_value);
  Tensor checked_checkpoint_tensor(const std::string& name, const std::vector<int64_t>& shape);
  Tensor upload(const std::vector<float>& values, DType dtype, std::vector<int64_t> shape);
  // Writes tensor `name` (dst's shape) into dst, converting to dst's dtype where needed.
  void fill(Tensor dst, const std::string& name);
  DType target_dtype(DType checkpoint_dtype) const;

  Backend& backend_;
  std::optional<DType> forced_dtype_;  // nullopt: keep each tensor's checkpoint dtype
  std::shared_ptr<WeightStore> checkpoint_;
  std::vector<Buffer> buffers_;
  uint64_t seed_;  // of the dummy weights
};

// "float32" -> kF32, "bfloat16" -> kBF16, "float16" -> kF16; throws std::invalid_argument
// naming `what` otherwise.
DType parse_float_dtype(const std::string& name, const std::string& what);

}  // namespace engine
