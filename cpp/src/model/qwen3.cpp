// Qwen3: the shared decoder with an RMSNorm over each head of q and k before RoPE
// (self_attn.{q,k}_norm.weight, [head_dim]) and no q/k/v bias unless attention_bias says so.
#include <nlohmann/json.hpp>

#include "model/architecture.h"
#include "model/config_json.h"

namespace engine {
namespace {

void read_qwen3_config(const nlohmann::json& json, ModelConfig& config) {
  bool attention_bias = config_json::optional_bool(json, "attention_bias").value_or(false);
  config.qkv_bias = attention_bias;
  config.o_proj_bias = attention_bias;
  config.qk_norm = true;
  read_qwen_sliding_window(json, config);
}

}  // namespace

Architecture qwen3_architecture() { return {"Qwen3ForCausalLM", read_qwen3_config, {}}; }

}  // namespace engine
