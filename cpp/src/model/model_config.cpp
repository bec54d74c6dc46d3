#include "model/model_config.h"

#include <fstream>
#include <sstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "model/architecture.h"
#include "model/config_json.h"

namespace engine {
namespace {

using config_json::optional_bool;
using config_json::optional_int;
using config_json::optional_number;
using config_json::optional_string;
using config_json::required_int;
using config_json::required_number;

nlohmann::json parse_json_object(const std::string& text, const std::string& file) {
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    throw std::invalid_argument(file + ": invalid JSON: " + e.what());
  }
  if (!json.is_object()) {
    throw std::invalid_argument(file + ": expected a JSON object, got " + json.type_name());
  }
  return json;
}

std::string read_architecture(const nlohmann::json& json) {
  auto it = json.find("architectures");
  if (it == json.end() || it->is_null()) {
    throw std::invalid_argument("config.json: missing required field 'architectures'");
  }
  if (!it->is_array() || it->empty() || !(*it)[0].is_string()) {
    throw std::invalid_argument(
        "config.json: field 'architectures' must be a non-empty list of strings, got " +
        it->dump());
  }
  return (*it)[0].get<std::string>();
}

// rope_scaling (transformers 4) or rope_parameters (transformers 5) with rope_type "llama3".
RopeScaling read_llama3_scaling(const nlohmann::json& params, const std::string& field,
                                int max_position_embeddings) {
  RopeScaling scaling;
  scaling.rope_type = "llama3";
  scaling.factor = required_number(params, "factor", "config.json: " + field);
  scaling.low_freq_factor = required_number(params, "low_freq_factor", "config.json: " + field);
  scaling.high_freq_factor = required_number(params, "high_freq_factor", "config.json: " + field);
  scaling.original_max_position_embeddings =
      optional_int(params, "original_max_position_embeddings", "config.json: " + field)
          .value_or(max_position_embeddings);
  if (!(scaling.high_freq_factor > scaling.low_freq_factor) || scaling.factor <= 0 ||
      scaling.original_max_position_embeddings <= 0) {
    throw std::invalid_argument("config.json: " + field +
                                " must have factor > 0, high_freq_factor > low_freq_factor and "
                                "original_max_position_embeddings > 0, got " +
                                params.dump());
  }
  return scaling;
}

// Fills rope_theta and rope_scaling from either layout; rope_parameters wins when both exist.
void read_rope(const nlohmann::json& json, ModelConfig& config) {
  config.rope_theta = optional_number(json, "rope_theta").value_or(10000.0);
  std::string field = "rope_parameters";
  auto params = json.find(field);
  if (params == json.end() || params->is_null()) {
    field = "rope_scaling";
    params = json.find(field);
    if (params == json.end() || params->is_null()) return;
  }
  if (!params->is_object()) {
    throw std::invalid_argument("config.json: field '" + field + "' must be an object, got " +
                                params->dump());
  }
  const std::string file = "config.json: " + field;
  config.rope_theta = optional_number(*params, "rope_theta", file).value_or(config.rope_theta);
  std::optional<std::string> type = optional_string(*params, "rope_type", file);
  if (!type) type = optional_string(*params, "type", file);
  std::string rope_type = type.value_or("default");
  if (rope_type == "default") return;
  if (rope_type != "llama3") {
    throw std::invalid_argument("config.json: unsupported rope type '" + rope_type + "' in '" +
                                field + "' (supported: default, llama3)");
  }
  config.rope_scaling = read_llama3_scaling(*params, field, config.max_position_embeddings);
}

void read_sizes(const nlohmann::json& json, ModelConfig& config) {
  config.vocab_size = required_int(json, "vocab_size");
  config.hidden_size = required_int(json, "hidden_size");
  config.intermediate_size = required_int(json, "intermediate_size");
  config.num_hidden_layers = required_int(json, "num_hidden_layers");
  config.num_attention_heads = required_int(json, "num_attention_heads");
  config.num_key_value_heads =
      optional_int(json, "num_key_value_heads").value_or(config.num_attention_heads);
  config.max_position_embeddings =
      optional_int(json, "max_position_embeddings").value_or(config.max_position_embeddings);
  config.rms_norm_eps =
      static_cast<float>(optional_number(json, "rms_norm_eps").value_or(config.rms_norm_eps));
  config.tie_word_embeddings = optional_bool(json, "tie_word_embeddings").value_or(false);
  std::optional<int> head_dim = optional_int(json, "head_dim");
  if (!head_dim && config.num_attention_heads > 0) {
    if (config.hidden_size % config.num_attention_heads != 0) {
      throw std::invalid_argument("config.json: hidden_size " + std::to_string(config.hidden_size) +
                                  " is not a multiple of num_attention_heads " +
                                  std::to_string(config.num_attention_heads) + " (set head_dim)");
    }
    head_dim = config.hidden_size / config.num_attention_heads;
  }
  config.head_dim = head_dim.value_or(0);
}

void require_positive(int value, const char* field) {
  if (value <= 0) {
    throw std::invalid_argument(std::string("config.json: field '") + field +
                                "' must be positive, got " + std::to_string(value));
  }
}

void validate(const ModelConfig& config) {
  require_positive(config.vocab_size, "vocab_size");
  require_positive(config.hidden_size, "hidden_size");
  require_positive(config.intermediate_size, "intermediate_size");
  require_positive(config.num_hidden_layers, "num_hidden_layers");
  require_positive(config.num_attention_heads, "num_attention_heads");
  require_positive(config.num_key_value_heads, "num_key_value_heads");
  require_positive(config.head_dim, "head_dim");
  require_positive(config.max_position_embeddings, "max_position_embeddings");
  if (config.num_attention_heads % config.num_key_value_heads != 0) {
    throw std::invalid_argument(
        "config.json: num_attention_heads " + std::to_string(config.num_attention_heads) +
        " must be a multiple of num_key_value_heads " + std::to_string(config.num_key_value_heads));
  }
  if (config.head_dim % 2 != 0) {
    throw std::invalid_argument("config.json: head_dim must be even for rotary embeddings, got " +
                                std::to_string(config.head_dim));
  }
  if (config.sliding_window && *config.sliding_window <= 0) {
    throw std::invalid_argument(
        "config.json: field 'sliding_window' must be positive or null, got " +
        std::to_string(*config.sliding_window));
  }
}

// eos_token_id: an int, a list of ints, or null (then the other file decides).
std::optional<std::vector<int>> read_eos_ids(const nlohmann::json& json, const std::string& file) {
  auto it = json.find("eos_token_id");
  if (it == json.end() || it->is_null()) return std::nullopt;
  std::vector<int> ids;
  if (it->is_number_integer()) {
    ids.push_back(it->get<int>());
    return ids;
  }
  bool valid = it->is_array();
  if (valid) {
    for (const nlohmann::json& id : *it) {
      valid = valid && id.is_number_integer();
      if (valid) ids.push_back(id.get<int>());
    }
  }
  if (!valid) {
    throw std::invalid_argument(file +
                                ": field 'eos_token_id' must be an integer or a list of "
                                "integers, got " +
                                it->dump());
  }
  return ids;
}

std::string read_file_or_empty(const std::string& path, bool required) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    if (required) throw std::invalid_argument(path + ": cannot open (no config.json there?)");
    return "";
  }
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

ModelConfig ModelConfig::from_json(const std::string& config_text,
                                   const std::string& generation_config_text) {
  nlohmann::json json = parse_json_object(config_text, "config.json");
  ModelConfig config;
  config.architecture = read_architecture(json);
  const Architecture& architecture = find_architecture(config.architecture);
  std::string hidden_act = optional_string(json, "hidden_act").value_or("silu");
  if (hidden_act != "silu") {
    throw std::invalid_argument("config.json: hidden_act '" + hidden_act +
                                "' is not supported (must be 'silu')");
  }
  read_sizes(json, config);
  read_rope(json, config);
  std::optional<std::string> dtype = optional_string(json, "dtype");
  if (!dtype) dtype = optional_string(json, "torch_dtype");
  config.torch_dtype = dtype.value_or(config.torch_dtype);
  architecture.read_config(json, config);
  validate(config);

  config.eos_token_ids = read_eos_ids(json, "config.json").value_or(std::vector<int>{});
  if (!generation_config_text.empty()) {
    nlohmann::json generation = parse_json_object(generation_config_text, "generation_config.json");
    if (auto ids = read_eos_ids(generation, "generation_config.json")) config.eos_token_ids = *ids;
  }
  return config;
}

ModelConfig ModelConfig::from_directory(const std::string& dir) {
  std::string config_text = read_file_or_empty(dir + "/config.json", true);
  std::string generation_text = read_file_or_empty(dir + "/generation_config.json", false);
  return from_json(config_text, generation_text);
}

std::optional<int> ModelConfig::layer_sliding_window(int layer) const {
  if (!sliding_window) return std::nullopt;
  if (sliding_window_layers.empty()) return sliding_window;
  if (layer < 0 || layer >= static_cast<int>(sliding_window_layers.size())) {
    throw std::out_of_range("layer " + std::to_string(layer) + " is not in [0, " +
                            std::to_string(sliding_window_layers.size()) + ")");
  }
  return sliding_window_layers[layer] ? sliding_window : std::nullopt;
}

}  // namespace engine
