#pragma once
// A Linear layer is a strategy chosen at load time (DESIGN.md): dense fp32/bf16/fp16 today,
// fp8 or int4 later, each behind the same apply().

#include <optional>

#include "backend/backend.h"

namespace engine {

class LinearMethod {
 public:
  virtual ~LinearMethod() = default;
  virtual int64_t num_out_features() const = 0;
  virtual int64_t num_in_features() const = 0;
  // out = x @ W^T (+ bias)
  virtual void apply(Backend& backend, Tensor out /*[T, N]*/, Tensor x /*[T, K]*/) const = 0;
};

// Weights stored as they are (any dtype the backend's linear converts), optional fp32 bias.
class DenseLinear final : public LinearMethod {
 public:
  DenseLinear(Tensor weight /*[N, K]*/, std::optional<Tensor> bias /*[N] f32*/)
      : weight_(std::move(weight)), bias_(std::move(bias)) {}

  int64_t num_out_features() const override { return weight_.size(0); }
  int64_t num_in_features() const override { return weight_.size(1); }
  void apply(Backend& backend, Tensor out, Tensor x) const override {
    backend.linear(out, x, weight_, bias_ ? &*bias_ : nullptr);
  }
  const Tensor& weight() const { return weight_; }
  const Tensor* bias() const { return bias_ ? &*bias_ : nullptr; }

 private:
  Tensor weight_;
  std::optional<Tensor> bias_;
};

}  // namespace engine
