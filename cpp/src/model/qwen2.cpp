// Qwen2 / Qwen2.5: the shared decoder with biased q/k/v projections (always, whatever
// attention_bias says) and an optional sliding window in the upper layers.
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "model/architecture.h"
#include "model/config_json.h"

namespace engine {
namespace {

std::vector<bool> read_layer_types(const nlohmann::json& layer_types, int num_layers) {
  if (!layer_types.is_array() || static_cast<int>(layer_types.size()) != num_layers) {
    throw std::invalid_argument("config.json: field 'layer_types' must be a list of " +
                                std::to_string(num_layers) + " strings, got " + layer_types.dump());
  }
  std::vector<bool> sliding;
  for (const nlohmann::json& type : layer_types) {
    if (type == "sliding_attention") {
      sliding.push_back(true);
    } else if (type == "full_attention") {
      sliding.push_back(false);
    } else {
      throw std::invalid_argument("config.json: layer_types entry " + type.dump() +
                                  " is not 'full_attention' or 'sliding_attention'");
    }
  }
  return sliding;
}

void read_qwen2_config(const nlohmann::json& json, ModelConfig& config) {
  config.qkv_bias = true;
  config.o_proj_bias = false;
  read_qwen_sliding_window(json, config);
}

}  // namespace

void read_qwen_sliding_window(const nlohmann::json& json, ModelConfig& config) {
  config.sliding_window.reset();
  config.sliding_window_layers.clear();
  if (!config_json::optional_bool(json, "use_sliding_window").value_or(false)) return;
  std::optional<int> window = config_json::optional_int(json, "sliding_window");
  if (!window) return;
  int num_layers = config.num_hidden_layers;
  std::vector<bool> sliding(num_layers, false);
  auto layer_types = json.find("layer_types");
  if (layer_types != json.end() && !layer_types->is_null()) {
    sliding = read_layer_types(*layer_types, num_layers);
  } else {
    // max_window_layers: transformers builds layer_types from it when it is absent.
    int first_sliding = config_json::optional_int(json, "max_window_layers").value_or(28);
    for (int layer = first_sliding; layer < num_layers; ++layer) sliding[layer] = true;
  }
  bool any_sliding = false;
  for (bool s : sliding) any_sliding = any_sliding || s;
  if (!any_sliding) return;
  config.sliding_window = window;
  config.sliding_window_layers = sliding;
}

Architecture qwen2_architecture() { return {"Qwen2ForCausalLM", read_qwen2_config, {}}; }

}  // namespace engine
