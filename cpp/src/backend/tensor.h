#pragma once
// Tensor: a non-owning, contiguous, row-major view of memory on one device. Buffer owns memory
// handed out by a Backend. Kernels take Tensors; model code never sees raw pointers.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

namespace engine {

// kFP8E4M3: OCP float8 e4m3 ("fn": no infinities, NaN = 0x7F/0xFF, max 448), the KV cache's
// compact storage type.
enum class DType { kF32, kF16, kBF16, kI32, kI64, kFP8E4M3 };
enum class DeviceType { kCpu, kCuda };

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);  // "float32", "float16", "bfloat16", "int32", "int64",
                                      // "float8_e4m3fn"

struct Tensor {
  void* data = nullptr;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  DeviceType device = DeviceType::kCpu;

  Tensor() = default;
  Tensor(void* data, DType dtype, std::vector<int64_t> shape, DeviceType device = DeviceType::kCpu)
      : data(data), dtype(dtype), shape(std::move(shape)), device(device) {}

  int dim() const { return static_cast<int>(shape.size()); }
  int64_t size(int i) const { return shape.at(i < 0 ? i + dim() : i); }
  int64_t numel() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  bool defined() const { return data != nullptr; }
  template <typename T>
  T* ptr() const {
    return static_cast<T*>(data);
  }

  // Same memory, another shape with the same number of elements.
  Tensor view(std::vector<int64_t> new_shape) const;
  // Rows [begin, end) of the first dimension.
  Tensor slice_rows(int64_t begin, int64_t end) const;
  std::string shape_string() const;  // "[2, 3]"
};

class Buffer {
 public:
  Buffer() = default;
  Buffer(void* data, size_t nbytes, std::function<void(void*)> deleter)
      : data_(data), nbytes_(nbytes), deleter_(std::move(deleter)) {}
  Buffer(Buffer&& other) noexcept { *this = std::move(other); }
  Buffer& operator=(Buffer&& other) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { reset(); }

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  void reset();

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  std::function<void(void*)> deleter_;
};

// bf16/fp16 <-> fp32 on the host (round to nearest even).
float bf16_to_float(uint16_t v);
uint16_t float_to_bf16(float f);
float fp16_to_float(uint16_t v);
uint16_t float_to_fp16(float f);
// fp8 e4m3 <-> fp32 on the host. float_to_fp8_e4m3 rounds to nearest even and saturates: any
// finite or infinite magnitude past 448 becomes +-448 (CUDA's __NV_SATFINITE); NaN stays NaN.
float fp8_e4m3_to_float(uint8_t v);
uint8_t float_to_fp8_e4m3(float f);

}  // namespace engine
