#include "model/weights.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "core/mix.h"

namespace engine {
namespace {

std::string shape_string(const std::vector<int64_t>& shape) {
  return Tensor(nullptr, DType::kF32, shape).shape_string();
}

int64_t count_elements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

float read_as_float(const void* data, DType dtype, size_t i) {
  switch (dtype) {
    case DType::kF32:
      return static_cast<const float*>(data)[i];
    case DType::kBF16:
      return bf16_to_float(static_cast<const uint16_t*>(data)[i]);
    case DType::kF16:
      return fp16_to_float(static_cast<const uint16_t*>(data)[i]);
    default:
      throw std::logic_error("read_as_float: not a floating-point dtype");
  }
}

// Host bytes of `values` in `dtype`.
std::vector<uint8_t> encode(const std::vector<float>& values, DType dtype) {
  std::vector<uint8_t> bytes(values.size() * dtype_size(dtype));
  if (dtype == DType::kF32) {
    std::memcpy(bytes.data(), values.data(), bytes.size());
    return bytes;
  }
  auto* out = reinterpret_cast<uint16_t*>(bytes.data());
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < values.size(); ++i) {
    out[i] = dtype == DType::kBF16 ? float_to_bf16(values[i]) : float_to_fp16(values[i]);
  }
  return bytes;
}

bool is_float_dtype(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kBF16 || dtype == DType::kF16;
}

constexpr float kDummyStd = 0.02f;  // transformers' default initializer_range

// Dummy weights are uniform with standard deviation kDummyStd, counter-based: value i of a
// tensor depends only on (seed, tensor name, i), so they are the same with any standard
// library and an 8B-parameter model fills in seconds on all cores.
void fill_dummy(std::vector<float>& values, uint64_t seed, const std::string& name) {
  uint64_t key = seed;
  for (unsigned char c : name) key = splitmix64(key ^ c);
  const float half_width = kDummyStd * std::sqrt(3.0f);  // uniform on [-a, a] has std a/sqrt(3)
  const int64_t n = static_cast<int64_t>(values.size());
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const double u = static_cast<double>(splitmix64(key ^ splitmix64(i)) >> 11) * 0x1.0p-53;
    values[i] = half_width * static_cast<float>(2.0 * u - 1.0);
  }
}

}  // namespace

DType parse_float_dtype(const std::string& name, const std::string& what) {
  if (name == "float32" || name == "float") return DType::kF32;
  if (name == "bfloat16") return DType::kBF16;
  if (name == "float16" || name == "half") return DType::kF16;
  throw std::invalid_argument(what + " '" + name +
                              "' is not supported (must be float32, bfloat16 or float16)");
}

WeightLoader::WeightLoader(const LoadOptions& options, const std::string& checkpoint_dtype,
                           Backend& backend)
    : backend_(backend), seed_(options.seed) {
  bool dummy = options.load_format == "dummy";
  if (!dummy && options.load_format != "auto" && options.load_format != "safetensors") {
    throw std::invalid_argument("load_format '" + options.load_format +
                                "' is not supported (must be auto, safetensors or dummy)");
  }
  if (options.dtype != "auto") {
    forced_dtype_ = parse_float_dtype(options.dtype, "dtype");
  } else if (dummy) {
    forced_dtype_ = parse_float_dtype(checkpoint_dtype, "config.json torch_dtype");
  }
  if (!dummy) checkpoint_ = std::make_shared<WeightStore>(WeightStore::open(options.model_dir));
}

bool WeightLoader::contains(const std::string& name) const {
  return checkpoint_ && checkpoint_->contains(name);
}

DType WeightLoader::target_dtype(DType checkpoint_dtype) const {
  return forced_dtype_.value_or(checkpoint_dtype);
}

Tensor WeightLoader::checked_checkpoint_tensor(const std::string& name,
                                               const std::vector<int64_t>& shape) {
  Tensor tensor = checkpoint_->get(name);
  if (tensor.shape != shape) {
    throw std::runtime_error("weight '" + name + "' has shape " + tensor.shape_string() +
                             " but the config expects " + shape_string(shape));
  }
  if (!is_float_dtype(tensor.dtype)) {
    throw std::runtime_error("weight '" + name + "' has dtype " + dtype_name(tensor.dtype) +
                             " but must be float32, bfloat16 or float16");
  }
  return tensor;
}

std::vector<float> WeightLoader::host_values(const std::string& name,
                                             const std::vector<int64_t>& shape,
                                             std::optional<float> dummy_value) {
  std::vector<float> values(count_elements(shape));
  if (is_dummy()) {
    if (dummy_value) {
      std::fill(values.begin(), values.end(), *dummy_value);
    } else {
      fill_dummy(values, seed_, name);
    }
    return values;
  }
  Tensor tensor = checked_checkpoint_tensor(name, shape);
  for (size_t i = 0; i < values.size(); ++i)
    values[i] = read_as_float(tensor.data, tensor.dtype, i);
  return values;
}

Tensor WeightLoader::upload(const std::vector<float>& values, DType dtype,
                            std::vector<int64_t> shape) {
  std::vector<uint8_t> bytes = encode(values, dtype);
  Buffer buffer = backend_.allocate(bytes.size());
  Tensor tensor(buffer.data(), dtype, std::move(shape), backend_.device_type());
  backend_.copy_from_host(tensor, bytes.data());
  buffers_.push_back(std::move(buffer));
  return tensor;
}

Tensor WeightLoader::matrix(const std::string& name, const std::vector<int64_t>& shape) {
  if (is_dummy()) return upload(host_values(name, shape, std::nullopt), *forced_dtype_, shape);
  Tensor tensor = checked_checkpoint_tensor(name, shape);
  DType dtype = target_dtype(tensor.dtype);
  if (dtype == tensor.dtype) {
    // The mapping is read-only and lives as long as the checkpoint this loader hands over.
    if (backend_.device_type() == DeviceType::kCpu) return tensor;
    Buffer buffer = backend_.allocate(tensor.nbytes());
    Tensor copy(buffer.data(), dtype, shape, backend_.device_type());
    backend_.copy_from_host(copy, tensor.data);
    buffers_.push_back(std::move(buffer));
    return copy;
  }
  return upload(host_values(name, shape, std::nullopt), dtype, shape);
}

void WeightLoader::fill(Tensor dst, const std::string& name) {
  if (!is_dummy()) {
    Tensor src = checked_checkpoint_tensor(name, dst.shape);
    if (src.dtype == dst.dtype) {
      backend_.copy_from_host(dst, src.data);
      return;
    }
  }
  std::vector<uint8_t> bytes = encode(host_values(name, dst.shape, std::nullopt), dst.dtype);
  backend_.copy_from_host(dst, bytes.data());
}

Tensor WeightLoader::stacked_matrices(const std::vector<StackedPart>& parts, int64_t num_cols) {
  if (parts.empty()) throw std::logic_error("stacked_matrices: no parts");
  int64_t num_rows = 0;
  for (const StackedPart& part : parts) num_rows += part.num_rows;
  const StackedPart& first = parts.front();
  const DType dtype = forced_dtype_
                          ? *forced_dtype_
                          : checked_checkpoint_tensor(first.name, {first.num_rows, num_cols}).dtype;
  Tensor stacked(nullptr, dtype, {num_rows, num_cols}, backend_.device_type());
  Buffer buffer = backend_.allocate(stacked.nbytes());
  stacked.data = buffer.data();
  int64_t row = 0;
  for (const StackedPart& part : parts) {
    fill(stacked.slice_rows(row, row + part.num_rows), part.name);
    row += part.num_rows;
  }
  buffers_.push_back(std::move(buffer));
  return stacked;
}

Tensor WeightLoader::fp32_vector(const std::string& name, int64_t size,
                                 std::optional<float> dummy_value) {
  return upload(host_values(name, {size}, dummy_value), DType::kF32, {size});
}

Tensor WeightLoader::stacked_fp32_vectors(const std::vector<StackedPart>& parts) {
  std::vector<float> values;
  for (const StackedPart& part : parts) {
    std::vector<float> part_values = host_values(part.name, {part.num_rows}, std::nullopt);
    values.insert(values.end(), part_values.begin(), part_values.end());
  }
  const auto size = static_cast<int64_t>(values.size());
  return upload(values, DType::kF32, {size});
}

std::optional<float> WeightLoader::optional_scalar(const std::string& name) {
  if (!contains(name)) return std::nullopt;
  Tensor tensor = checkpoint_->get(name);
  if (tensor.numel() != 1 || tensor.shape.size() > 1 || !is_float_dtype(tensor.dtype)) {
    throw std::runtime_error("weight '" + name + "' must be one float32, bfloat16 or float16 " +
                             "value (shape [] or [1]), got dtype " + dtype_name(tensor.dtype) +
                             " and shape " + tensor.shape_string());
  }
  return read_as_float(tensor.data, tensor.dtype, 0);
}

WeightStorage WeightLoader::release() {
  WeightStorage storage{checkpoint_, std::move(buffers_)};
  buffers_.clear();
  return storage;
}

}  // namespace engine
