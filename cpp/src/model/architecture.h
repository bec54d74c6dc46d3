#pragma once
// The registry of architectures: an explicit table (no static-initialisation registration, which
// a linker may drop). Each architecture file says how it differs from the shared decoder.

#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "model/model_config.h"

namespace engine {

// Hugging Face names of a decoder's weights; projections name the prefix of ".weight"/".bias".
struct DecoderWeightNames {
  std::string embed_tokens = "model.embed_tokens.weight";
  std::string layer_prefix = "model.layers.";  // followed by the layer index and '.'
  std::string input_norm = "input_layernorm.weight";
  std::string q_proj = "self_attn.q_proj";
  std::string k_proj = "self_attn.k_proj";
  std::string v_proj = "self_attn.v_proj";
  std::string o_proj = "self_attn.o_proj";
  std::string q_norm = "self_attn.q_norm.weight";
  std::string k_norm = "self_attn.k_norm.weight";
  // An fp8 cache's calibrated scales, as llm-compressor writes them; ModelOpt's sit under
  // k_proj/v_proj (".k_scale", ".v_scale"), and older checkpoints hold one kv_scale for both.
  std::string k_scale = "self_attn.k_scale";
  std::string v_scale = "self_attn.v_scale";
  std::string kv_scale = "self_attn.kv_scale";
  std::string post_attention_norm = "post_attention_layernorm.weight";
  std::string gate_proj = "mlp.gate_proj";
  std::string up_proj = "mlp.up_proj";
  std::string down_proj = "mlp.down_proj";
  std::string final_norm = "model.norm.weight";
  std::string lm_head = "lm_head.weight";
};

struct Architecture {
  std::string name;  // config.json's architectures[0]
  // Reads the config.json fields in which this architecture differs (qkv bias, q/k norm,
  // sliding window) after the common ones are in `config`.
  void (*read_config)(const nlohmann::json& config_json, ModelConfig& config) = nullptr;
  DecoderWeightNames weight_names;
};

// One per architecture file.
Architecture llama_architecture();
Architecture mistral_architecture();
Architecture qwen2_architecture();
Architecture qwen3_architecture();

// Qwen2 and Qwen3 slide only when use_sliding_window is true, and then only in the layers that
// layer_types marks "sliding_attention" (transformers 5) or from max_window_layers on.
void read_qwen_sliding_window(const nlohmann::json& config_json, ModelConfig& config);

const std::vector<Architecture>& architecture_table();
// Throws std::invalid_argument naming `name` and the supported architectures.
const Architecture& find_architecture(const std::string& name);

}  // namespace engine
