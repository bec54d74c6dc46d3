#pragma once
// A causal language model written once against the Backend interface.

#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "model/model_config.h"

namespace engine {

struct LoadOptions {
  std::string model_dir;
  std::string dtype = "auto";        // auto, float32, bfloat16, float16
  std::string load_format = "auto";  // auto (safetensors) or dummy (random weights)
  uint64_t seed = 0;                 // for dummy weights
};

struct ForwardInputs {
  Tensor input_ids;  // [T] i32
  const AttentionMetadata* attention = nullptr;
  Tensor logits_indices;  // [S] i32: rows of the step whose logits are wanted
};

class Model {
 public:
  virtual ~Model() = default;
  virtual const ModelConfig& config() const = 0;
  // The checkpoint's calibrated fp8 K/V cache scales, one per layer, or empty when it has none.
  virtual const std::vector<KVCacheScales>& kv_cache_scales() const = 0;
  // Allocates activation buffers for up to max_num_tokens tokens per step and max_num_logits
  // logits rows. Called once before forward.
  virtual void allocate_workspace(int max_num_tokens, int max_num_logits) = 0;
  // Runs the layers over the step's tokens, writing K/V into kv_cache, and writes the logits
  // of the rows in logits_indices into logits ([S, vocab] f32, on the backend's device).
  virtual void forward(const ForwardInputs& inputs, const std::vector<KVCacheLayer>& kv_cache,
                       Tensor logits) = 0;
};

// Builds the architecture named in config.architecture and loads its weights (or fills them
// with random values for load_format "dummy"). Throws std::invalid_argument for an unknown
// architecture or dtype, std::runtime_error for missing or malformed weights (naming the
// tensor, its expected and actual shape).
std::unique_ptr<Model> load_model(const ModelConfig& config, const LoadOptions& options,
                                  Backend& backend);

}  // namespace engine
