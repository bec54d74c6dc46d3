#pragma once
// ModelConfig: what the engine needs from a Hugging Face config.json (and
// generation_config.json), parsed with nlohmann::json. Understands both the transformers 4
// layout (rope_theta, rope_scaling, torch_dtype) and the transformers 5 one (rope_parameters,
// dtype).

#include <optional>
#include <string>
#include <vector>

namespace engine {

struct RopeScaling {
  std::string rope_type;  // "llama3" (others are rejected at parse time)
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string architecture;  // architectures[0], e.g. "LlamaForCausalLM"
  int vocab_size = 0;
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_hidden_layers = 0;
  int num_attention_heads = 0;
  int num_key_value_heads = 0;  // defaults to num_attention_heads
  int head_dim = 0;             // defaults to hidden_size / num_attention_heads
  float rms_norm_eps = 1e-6f;
  double rope_theta = 10000.0;
  std::optional<RopeScaling> rope_scaling;
  int max_position_embeddings = 2048;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;              // Qwen2 always; Llama/Mistral when attention_bias is true
  bool o_proj_bias = false;           // Llama/Qwen3 when attention_bias is true (Qwen2 never)
  bool qk_norm = false;               // Qwen3: RMSNorm over each head of q and k
  std::optional<int> sliding_window;  // Mistral; Qwen2 only when use_sliding_window
  // Which layers use sliding_window (Qwen2/Qwen3 slide only from max_window_layers on, or as
  // layer_types says); empty means every layer does.
  std::vector<bool> sliding_window_layers;
  std::string torch_dtype = "float32";  // the checkpoint's dtype as config.json states it
  std::vector<int> eos_token_ids;       // generation_config.json wins over config.json

  // Reads <dir>/config.json (and generation_config.json if present). Throws
  // std::invalid_argument naming the file and the missing or invalid field, or the
  // unsupported architecture and the supported ones.
  static ModelConfig from_directory(const std::string& dir);
  static ModelConfig from_json(const std::string& config_json,
                               const std::string& generation_config_json = "");

  // The window of layer `layer`'s attention, or nullopt for full attention.
  std::optional<int> layer_sliding_window(int layer) const;
};

// The architectures this build can run, e.g. {"LlamaForCausalLM", "MistralForCausalLM", ...}.
std::vector<std::string> supported_architectures();

}  // namespace engine
