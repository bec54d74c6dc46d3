#include "model/decoder_weights.h"

#include <stdexcept>

namespace engine {
namespace {

constexpr float kDummyNormWeight = 1.0f;

std::unique_ptr<LinearMethod> load_linear(WeightLoader& loader, const std::string& prefix,
                                          int64_t num_out, int64_t num_in, bool has_bias) {
  Tensor weight = loader.matrix(prefix + ".weight", {num_out, num_in});
  std::optional<Tensor> bias;
  if (has_bias) bias = loader.fp32_vector(prefix + ".bias", num_out, std::nullopt);
  return std::make_unique<DenseLinear>(weight, bias);
}

std::vector<StackedPart> with_suffix(std::vector<StackedPart> parts, const std::string& suffix) {
  for (StackedPart& part : parts) part.name += suffix;
  return parts;
}

// One GEMM for q, k and v; rope_and_cache then splits the [T, (Hq + 2 Hk) * D] result.
std::unique_ptr<LinearMethod> load_qkv(WeightLoader& loader, const ModelConfig& config,
                                       const DecoderWeightNames& names, const std::string& prefix) {
  const int64_t q_size = static_cast<int64_t>(config.num_attention_heads) * config.head_dim;
  const int64_t kv_size = static_cast<int64_t>(config.num_key_value_heads) * config.head_dim;
  const std::vector<StackedPart> parts = {{prefix + names.q_proj, q_size},
                                          {prefix + names.k_proj, kv_size},
                                          {prefix + names.v_proj, kv_size}};
  Tensor weight = loader.stacked_matrices(with_suffix(parts, ".weight"), config.hidden_size);
  std::optional<Tensor> bias;
  if (config.qkv_bias) bias = loader.stacked_fp32_vectors(with_suffix(parts, ".bias"));
  return std::make_unique<DenseLinear>(weight, bias);
}

QKNorm load_qk_norm(WeightLoader& loader, const ModelConfig& config,
                    const DecoderWeightNames& names, const std::string& prefix) {
  return {loader.fp32_vector(prefix + names.q_norm, config.head_dim, kDummyNormWeight),
          loader.fp32_vector(prefix + names.k_norm, config.head_dim, kDummyNormWeight),
          config.rms_norm_eps};
}

DecoderLayerWeights load_layer(WeightLoader& loader, const ModelConfig& config,
                               const DecoderWeightNames& names, int layer) {
  const std::string prefix = names.layer_prefix + std::to_string(layer) + ".";
  const int64_t hidden = config.hidden_size;
  const int64_t q_size = static_cast<int64_t>(config.num_attention_heads) * config.head_dim;
  const int64_t intermediate = config.intermediate_size;
  DecoderLayerWeights w;
  w.input_norm = loader.fp32_vector(prefix + names.input_norm, hidden, kDummyNormWeight);
  w.qkv_proj = load_qkv(loader, config, names, prefix);
  if (config.qk_norm) w.qk_norm = load_qk_norm(loader, config, names, prefix);
  w.o_proj = load_linear(loader, prefix + names.o_proj, hidden, q_size, config.o_proj_bias);
  w.post_attention_norm =
      loader.fp32_vector(prefix + names.post_attention_norm, hidden, kDummyNormWeight);
  // One GEMM for both MLP inputs; silu_and_mul then splits the [T, 2I] result.
  Tensor gate_up = loader.stacked_matrices({{prefix + names.gate_proj + ".weight", intermediate},
                                            {prefix + names.up_proj + ".weight", intermediate}},
                                           hidden);
  w.gate_up_proj = std::make_unique<DenseLinear>(gate_up, std::nullopt);
  w.down_proj = load_linear(loader, prefix + names.down_proj, hidden, intermediate, false);
  return w;
}

// The first of `names` (after prefix) the checkpoint holds, checked as a K/V cache scale.
std::optional<float> first_kv_cache_scale(WeightLoader& loader, const std::string& prefix,
                                          const std::vector<std::string>& names) {
  for (const std::string& name : names) {
    const std::optional<float> scale = loader.optional_scalar(prefix + name);
    if (!scale) continue;
    if (!is_valid_kv_cache_scale(*scale)) {
      throw std::runtime_error(
          invalid_kv_cache_scale_message("K/V cache scale '" + prefix + name + "'", *scale));
    }
    return scale;
  }
  return std::nullopt;
}

// One layer's calibrated K/V cache scales under any of the names quantizers write; nullopt
// when it has none. One of the two alone stands for both, as a single kv_scale does.
std::optional<KVCacheScales> load_kv_cache_scales(WeightLoader& loader,
                                                  const DecoderWeightNames& names,
                                                  const std::string& prefix) {
  const std::optional<float> k = first_kv_cache_scale(
      loader, prefix, {names.k_scale, names.k_proj + ".k_scale", names.kv_scale});
  const std::optional<float> v = first_kv_cache_scale(
      loader, prefix, {names.v_scale, names.v_proj + ".v_scale", names.kv_scale});
  if (!k && !v) return std::nullopt;
  return KVCacheScales{k ? *k : *v, v ? *v : *k};
}

std::vector<KVCacheScales> load_all_kv_cache_scales(WeightLoader& loader, const ModelConfig& config,
                                                    const DecoderWeightNames& names) {
  std::vector<KVCacheScales> scales;
  bool any = false;
  for (int layer = 0; layer < config.num_hidden_layers; ++layer) {
    const std::optional<KVCacheScales> layer_scales =
        load_kv_cache_scales(loader, names, names.layer_prefix + std::to_string(layer) + ".");
    any = any || layer_scales.has_value();
    scales.push_back(layer_scales.value_or(KVCacheScales{}));
  }
  if (!any) scales.clear();
  return scales;
}

}  // namespace

DecoderWeights load_decoder_weights(const ModelConfig& config, const DecoderWeightNames& names,
                                    const LoadOptions& options, Backend& backend) {
  WeightLoader loader(options, config.torch_dtype, backend);
  DecoderWeights weights;
  const int64_t vocab = config.vocab_size;
  const int64_t hidden = config.hidden_size;
  weights.embed_tokens = loader.matrix(names.embed_tokens, {vocab, hidden});
  for (int layer = 0; layer < config.num_hidden_layers; ++layer) {
    weights.layers.push_back(load_layer(loader, config, names, layer));
  }
  weights.final_norm = loader.fp32_vector(names.final_norm, hidden, kDummyNormWeight);
  Tensor lm_head = config.tie_word_embeddings ? weights.embed_tokens
                                              : loader.matrix(names.lm_head, {vocab, hidden});
  weights.lm_head = std::make_unique<DenseLinear>(lm_head, std::nullopt);
  weights.kv_cache_scales = load_all_kv_cache_scales(loader, config, names);
  weights.storage = loader.release();
  return weights;
}

}  // namespace engine
