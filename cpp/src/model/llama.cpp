// Llama (1, 2, 3.x, SmolLM, ...) and Mistral: the shared decoder as it is.
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "model/architecture.h"
#include "model/config_json.h"

namespace engine {
namespace {

void read_llama_config(const nlohmann::json& json, ModelConfig& config) {
  bool attention_bias = config_json::optional_bool(json, "attention_bias").value_or(false);
  config.qkv_bias = attention_bias;
  config.o_proj_bias = attention_bias;
  if (config_json::optional_bool(json, "mlp_bias").value_or(false)) {
    throw std::invalid_argument("config.json: 'mlp_bias' true is not supported (must be false)");
  }
}

void read_mistral_config(const nlohmann::json& json, ModelConfig& config) {
  // Mistral's projections never carry a bias; its window (null in later releases) applies to
  // every layer.
  config.sliding_window = config_json::optional_int(json, "sliding_window");
}

}  // namespace

Architecture llama_architecture() { return {"LlamaForCausalLM", read_llama_config, {}}; }

Architecture mistral_architecture() { return {"MistralForCausalLM", read_mistral_config, {}}; }

}  // namespace engine
