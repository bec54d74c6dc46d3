#include "backend/tensor.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <stdexcept>

namespace engine {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return 4;
    case DType::kF16:
      return 2;
    case DType::kBF16:
      return 2;
    case DType::kI32:
      return 4;
    case DType::kI64:
      return 8;
    case DType::kFP8E4M3:
      return 1;
  }
  throw std::invalid_argument("dtype_size: unknown DType value " +
                              std::to_string(static_cast<int>(dtype)));
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "float32";
    case DType::kF16:
      return "float16";
    case DType::kBF16:
      return "bfloat16";
    case DType::kI32:
      return "int32";
    case DType::kI64:
      return "int64";
    case DType::kFP8E4M3:
      return "float8_e4m3fn";
  }
  return "unknown";
}

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

std::string Tensor::shape_string() const {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

Tensor Tensor::view(std::vector<int64_t> new_shape) const {
  // One dimension may be -1 and is then inferred, as in torch.view.
  int64_t known = 1;
  int inferred = -1;
  for (size_t i = 0; i < new_shape.size(); ++i) {
    if (new_shape[i] == -1 && inferred < 0) {
      inferred = static_cast<int>(i);
    } else if (new_shape[i] < 0) {
      throw std::invalid_argument("Tensor::view: dimension " + std::to_string(i) + " is " +
                                  std::to_string(new_shape[i]) +
                                  " but must be >= 0 (or a single -1)");
    } else {
      known *= new_shape[i];
    }
  }
  if (inferred >= 0 && known > 0 && numel() % known == 0) new_shape[inferred] = numel() / known;
  Tensor out(data, dtype, std::move(new_shape), device);
  if (out.numel() != numel() || (inferred >= 0 && known == 0)) {
    throw std::invalid_argument("Tensor::view: cannot view a tensor of shape " + shape_string() +
                                " (" + std::to_string(numel()) + " elements) as " +
                                out.shape_string());
  }
  return out;
}

Tensor Tensor::slice_rows(int64_t begin, int64_t end) const {
  if (dim() == 0) throw std::invalid_argument("Tensor::slice_rows: tensor has no dimensions");
  if (begin < 0 || end < begin || end > shape[0]) {
    throw std::invalid_argument("Tensor::slice_rows: rows [" + std::to_string(begin) + ", " +
                                std::to_string(end) + ") must lie within [0, " +
                                std::to_string(shape[0]) + ") of a tensor of shape " +
                                shape_string());
  }
  int64_t row_elems = shape[0] == 0 ? 0 : numel() / shape[0];
  std::vector<int64_t> new_shape = shape;
  new_shape[0] = end - begin;
  char* base = static_cast<char*>(data);
  void* start = base == nullptr ? nullptr : base + begin * row_elems * dtype_size(dtype);
  return Tensor(start, dtype, std::move(new_shape), device);
}

Buffer& Buffer::operator=(Buffer&& other) noexcept {
  if (this != &other) {
    reset();
    data_ = other.data_;
    nbytes_ = other.nbytes_;
    deleter_ = std::move(other.deleter_);
    other.data_ = nullptr;
    other.nbytes_ = 0;
    other.deleter_ = nullptr;
  }
  return *this;
}

void Buffer::reset() {
  if (data_ != nullptr && deleter_) deleter_(data_);
  data_ = nullptr;
  nbytes_ = 0;
  deleter_ = nullptr;
}

float bf16_to_float(uint16_t v) { return std::bit_cast<float>(static_cast<uint32_t>(v) << 16); }

uint16_t float_to_bf16(float f) {
  uint32_t bits = std::bit_cast<uint32_t>(f);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) {
    // NaN: keep sign and top payload bits, force the quiet bit so it cannot become inf.
    return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  }
  uint32_t lsb = (bits >> 16) & 1u;
  return static_cast<uint16_t>((bits + 0x7FFFu + lsb) >> 16);
}

float fp16_to_float(uint16_t v) {
  uint32_t sign = static_cast<uint32_t>(v & 0x8000u) << 16;
  uint32_t exponent = (v >> 10) & 0x1Fu;
  uint32_t mantissa = v & 0x3FFu;
  if (exponent == 0) {
    // Zero or subnormal: mantissa units of 2^-24.
    float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) return std::bit_cast<float>(sign | 0x7F800000u | (mantissa << 13));
  return std::bit_cast<float>(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

uint16_t float_to_fp16(float f) {
  uint32_t bits = std::bit_cast<uint32_t>(f);
  uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  uint32_t abs_bits = bits & 0x7FFFFFFFu;
  if (abs_bits >= 0x7F800000u) {
    if (abs_bits == 0x7F800000u) return sign | 0x7C00u;
    return static_cast<uint16_t>(sign | 0x7E00u | ((abs_bits >> 13) & 0x3FFu));
  }
  if (abs_bits >= 0x477FF000u) return sign | 0x7C00u;  // >= 65520 rounds to inf
  if (abs_bits < 0x38800000u) {
    // Below the smallest normal half (2^-14): becomes a subnormal in units of 2^-24.
    uint32_t exponent = abs_bits >> 23;
    uint32_t mantissa = (abs_bits & 0x7FFFFFu) | 0x800000u;
    uint32_t shift = 126u - exponent;
    if (shift > 24u) return sign;
    uint32_t result = mantissa >> shift;
    uint32_t remainder = mantissa & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1u);
    if (remainder > half || (remainder == half && (result & 1u))) ++result;
    return static_cast<uint16_t>(sign | result);
  }
  uint32_t result = (abs_bits - 0x38000000u) >> 13;  // rebias exponent 127 -> 15
  uint32_t remainder = abs_bits & 0x1FFFu;
  if (remainder > 0x1000u || (remainder == 0x1000u && (result & 1u))) ++result;
  return static_cast<uint16_t>(sign | result);
}

float fp8_e4m3_to_float(uint8_t v) {
  const float sign = (v & 0x80u) ? -1.0f : 1.0f;
  const int exponent = (v >> 3) & 0xF, mantissa = v & 0x7;
  if (exponent == 0xF && mantissa == 0x7) return std::numeric_limits<float>::quiet_NaN();
  if (exponent == 0) return sign * std::ldexp(static_cast<float>(mantissa), -9);  // subnormal
  return sign * std::ldexp(static_cast<float>(8 + mantissa), exponent - 10);      // 1.m x 2^(e-7)
}

uint8_t float_to_fp8_e4m3(float f) {
  constexpr uint8_t kMaxFinite = 0x7E;  // 448
  const uint32_t bits = std::bit_cast<uint32_t>(f);
  const uint8_t sign = static_cast<uint8_t>((bits >> 24) & 0x80u);
  const uint32_t abs_bits = bits & 0x7FFFFFFFu;
  if (abs_bits > 0x7F800000u) return sign | 0x7Fu;        // NaN
  if (abs_bits >= 0x43E00000u) return sign | kMaxFinite;  // >= 448, inf included: saturate
  if (abs_bits < 0x3C800000u) {
    // Below the smallest normal (2^-6): a multiple of 2^-9, rounded to nearest even. Scaling by
    // 2^9 is exact; 8 units carry into the smallest normal, whose code is also 8.
    const float units = std::nearbyint(std::bit_cast<float>(abs_bits) * 512.0f);
    return sign | static_cast<uint8_t>(units);
  }
  // Rebias the exponent (127 -> 7), keep 3 of the 23 mantissa bits, round the other 20 to
  // nearest even; a carry out of the mantissa correctly bumps the exponent.
  uint32_t result = ((abs_bits >> 23) - 120u) << 3 | ((abs_bits >> 20) & 0x7u);
  const uint32_t remainder = abs_bits & 0xFFFFFu;
  if (remainder > 0x80000u || (remainder == 0x80000u && (result & 1u))) ++result;
  return sign | static_cast<uint8_t>(std::min<uint32_t>(result, kMaxFinite));
}

}  // namespace engine
