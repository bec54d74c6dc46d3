#pragma once
// The weights of the shared pre-norm decoder, loaded by their Hugging Face names and checked
// against the config's shapes.

#include <memory>
#include <optional>
#include <vector>

#include "model/architecture.h"
#include "model/linear.h"
#include "model/weights.h"

namespace engine {

struct DecoderLayerWeights {
  Tensor input_norm;           // [H] f32
  Tensor post_attention_norm;  // [H] f32
  // [(Hq + 2 Hk) * D, H]: q_proj rows, then k_proj, then v_proj (biases likewise, Qwen2), so
  // one GEMM serves all three (as vLLM's QKVParallelLinear); rope_and_cache splits its output.
  std::unique_ptr<LinearMethod> qkv_proj;
  std::unique_ptr<LinearMethod> o_proj;        // [H, Hq * D]
  std::optional<QKNorm> qk_norm;               // Qwen3: weights [D] f32, eps = rms_norm_eps
  std::unique_ptr<LinearMethod> gate_up_proj;  // [2I, H]: gate_proj rows, then up_proj rows
  std::unique_ptr<LinearMethod> down_proj;     // [H, I]
};

struct DecoderWeights {
  Tensor embed_tokens;  // [V, H]
  std::vector<DecoderLayerWeights> layers;
  Tensor final_norm;                      // [H] f32
  std::unique_ptr<LinearMethod> lm_head;  // [V, H]; embed_tokens when tied
  // The checkpoint's calibrated fp8 K/V cache scales, one per layer (1 where a layer has none),
  // or empty when no layer has any.
  std::vector<KVCacheScales> kv_cache_scales;
  WeightStorage storage;  // keeps the memory of every tensor above alive
};

DecoderWeights load_decoder_weights(const ModelConfig& config, const DecoderWeightNames& names,
                                    const LoadOptions& options, Backend& backend);

}  // namespace engine
