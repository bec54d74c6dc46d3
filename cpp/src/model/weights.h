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
  // Matrices of the same shape stacked along rows (gate_proj then up_proj):
  // [num_names * shape[0], shape[1]].
  Tensor stacked_matrices(const std::vector<std::string>& names, const std::vector<int64_t>& shape);
  // An fp32 vector (norm weight, bias); dummy values are `dummy_value` if given, else random.
  Tensor fp32_vector(const std::string& name, int64_t size, std::optional<float> dummy_value);

  WeightStorage release();

 private:
  // fp32 host copy of a checked checkpoint tensor, or dummy values.
  std::vector<float> host_values(const std::string& name, const std::vector<int64_t>& shape,
                                 std::optional<float> dummy_value);
  Tensor checked_checkpoint_tensor(const std::string& name, const std::vector<int64_t>& shape);
  Tensor upload(const std::vector<float>& values, DType dtype, std::vector<int64_t> shape);
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
