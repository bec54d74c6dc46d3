#include "model/decoder.h"

#include <cmath>
#include <stdexcept>

#include "model/decoder_weights.h"
#include "model/rope.h"

namespace engine {
namespace {

// Activation buffers, allocated once for the largest step (rows beyond T are unused).
struct Workspace {
  int max_num_tokens = 0;
  int max_num_logits = 0;
  std::vector<Buffer> buffers;
  Tensor hidden;    // [max_T, H]: normed input of each block, then its output
  Tensor residual;  // [max_T, H]
  Tensor qkv;       // [max_T, (Hq + 2 Hk) * D]: the fused q/k/v projection
  Tensor q;         // [max_T, Hq * D]: normed and rotated q, attention's input
  Tensor attn_out;  // [max_T, Hq * D]
  Tensor gate_up;   // [max_T, 2I]
  Tensor mlp_act;   // [max_T, I]
  Tensor gathered;  // [max_S, H]
};

class DecoderModel final : public Model {
 public:
  DecoderModel(const ModelConfig& config, DecoderWeights weights, Backend& backend)
      : config_(config), weights_(std::move(weights)), backend_(backend) {
    upload_rope_table();
  }

  const ModelConfig& config() const override { return config_; }
  const std::vector<KVCacheScales>& kv_cache_scales() const override {
    return weights_.kv_cache_scales;
  }
  void allocate_workspace(int max_num_tokens, int max_num_logits) override;
  void forward(const ForwardInputs& inputs, const std::vector<KVCacheLayer>& kv_cache,
               Tensor logits) override;

 private:
  Tensor allocate(DType dtype, std::vector<int64_t> shape, std::vector<Buffer>& owner);
  void upload_rope_table();
  void check_inputs(const ForwardInputs& inputs, const std::vector<KVCacheLayer>& kv_cache,
                    const Tensor& logits) const;
  // hidden [T, H]: normed input in, attention output (before the residual add) out.
  void attention_block(int layer, int64_t num_tokens, const AttentionMetadata& meta,
                       const KVCacheLayer& cache);
  // hidden [T, H]: normed input in, MLP output out.
  void mlp_block(int layer, int64_t num_tokens);

  ModelConfig config_;
  DecoderWeights weights_;
  Backend& backend_;
  std::vector<Buffer> rope_buffers_;
  Tensor cos_sin_;  // [max_position_embeddings, D] f32
  Workspace ws_;
};

Tensor DecoderModel::allocate(DType dtype, std::vector<int64_t> shape, std::vector<Buffer>& owner) {
  Tensor tensor(nullptr, dtype, std::move(shape), backend_.device_type());
  owner.push_back(backend_.allocate(tensor.nbytes()));
  tensor.data = owner.back().data();
  return tensor;
}

void DecoderModel::upload_rope_table() {
  std::vector<float> table = rope_cos_sin_table(config_, config_.max_position_embeddings);
  cos_sin_ =
      allocate(DType::kF32, {config_.max_position_embeddings, config_.head_dim}, rope_buffers_);
  backend_.copy_from_host(cos_sin_, table.data());
}

void DecoderModel::allocate_workspace(int max_num_tokens, int max_num_logits) {
  if (max_num_tokens <= 0 || max_num_logits <= 0) {
    throw std::invalid_argument("allocate_workspace: max_num_tokens " +
                                std::to_string(max_num_tokens) + " and max_num_logits " +
                                std::to_string(max_num_logits) + " must be positive");
  }
  const DType dtype = backend_.compute_dtype();
  const int64_t t = max_num_tokens;
  const int64_t q_size = static_cast<int64_t>(config_.num_attention_heads) * config_.head_dim;
  const int64_t kv_size = static_cast<int64_t>(config_.num_key_value_heads) * config_.head_dim;
  Workspace ws;
  ws.max_num_tokens = max_num_tokens;
  ws.max_num_logits = max_num_logits;
  ws.hidden = allocate(dtype, {t, config_.hidden_size}, ws.buffers);
  ws.residual = allocate(dtype, {t, config_.hidden_size}, ws.buffers);
  ws.qkv = allocate(dtype, {t, q_size + 2 * kv_size}, ws.buffers);
  ws.q = allocate(dtype, {t, q_size}, ws.buffers);
  ws.attn_out = allocate(dtype, {t, q_size}, ws.buffers);
  ws.gate_up =
      allocate(dtype, {t, 2 * static_cast<int64_t>(config_.intermediate_size)}, ws.buffers);
  ws.mlp_act = allocate(dtype, {t, config_.intermediate_size}, ws.buffers);
  ws.gathered = allocate(dtype, {max_num_logits, config_.hidden_size}, ws.buffers);
  ws_ = std::move(ws);
}

void DecoderModel::check_inputs(const ForwardInputs& inputs,
                                const std::vector<KVCacheLayer>& kv_cache,
                                const Tensor& logits) const {
  if (ws_.max_num_tokens == 0) {
    throw std::logic_error("forward called before allocate_workspace");
  }
  if (inputs.attention == nullptr)
    throw std::invalid_argument("forward: attention metadata is null");
  int64_t num_tokens = inputs.input_ids.size(0);
  if (num_tokens > ws_.max_num_tokens) {
    throw std::invalid_argument("forward: step has " + std::to_string(num_tokens) +
                                " tokens but the workspace holds " +
                                std::to_string(ws_.max_num_tokens));
  }
  int64_t num_logits = inputs.logits_indices.size(0);
  if (num_logits > ws_.max_num_logits) {
    throw std::invalid_argument("forward: " + std::to_string(num_logits) +
                                " logits rows requested but the workspace holds " +
                                std::to_string(ws_.max_num_logits));
  }
  if (logits.dim() != 2 || logits.size(0) != num_logits || logits.size(1) != config_.vocab_size) {
    throw std::invalid_argument("forward: logits has shape " + logits.shape_string() +
                                " but must be [" + std::to_string(num_logits) + ", " +
                                std::to_string(config_.vocab_size) + "]");
  }
  if (static_cast<int>(kv_cache.size()) != config_.num_hidden_layers) {
    throw std::invalid_argument("forward: kv_cache has " + std::to_string(kv_cache.size()) +
                                " layers but the model has " +
                                std::to_string(config_.num_hidden_layers));
  }
}

void DecoderModel::attention_block(int layer, int64_t num_tokens, const AttentionMetadata& meta,
                                   const KVCacheLayer& cache) {
  const DecoderLayerWeights& w = weights_.layers[layer];
  const int64_t t = num_tokens;
  const int64_t num_heads = config_.num_attention_heads;
  const int64_t head_dim = config_.head_dim;
  Tensor hidden = ws_.hidden.slice_rows(0, t);
  Tensor qkv = ws_.qkv.slice_rows(0, t);
  w.qkv_proj->apply(backend_, qkv, hidden);
  // Splits qkv, norms the q/k heads (Qwen3), rotates them, writes k/v to the cache, q to q_heads.
  Tensor q_heads = ws_.q.slice_rows(0, t).view({t, num_heads, head_dim});
  backend_.rope_and_cache(q_heads, qkv, w.qk_norm ? &*w.qk_norm : nullptr, cos_sin_, meta, cache);
  Tensor attn_out = ws_.attn_out.slice_rows(0, t);
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  backend_.attention(attn_out.view({t, num_heads, head_dim}), q_heads, cache, meta, scale,
                     config_.layer_sliding_window(layer));
  w.o_proj->apply(backend_, hidden, attn_out);
}

void DecoderModel::mlp_block(int layer, int64_t num_tokens) {
  const DecoderLayerWeights& w = weights_.layers[layer];
  Tensor hidden = ws_.hidden.slice_rows(0, num_tokens);
  Tensor gate_up = ws_.gate_up.slice_rows(0, num_tokens);
  Tensor act = ws_.mlp_act.slice_rows(0, num_tokens);
  w.gate_up_proj->apply(backend_, gate_up, hidden);
  backend_.silu_and_mul(act, gate_up);
  w.down_proj->apply(backend_, hidden, act);
}

void DecoderModel::forward(const ForwardInputs& inputs, const std::vector<KVCacheLayer>& kv_cache,
                           Tensor logits) {
  check_inputs(inputs, kv_cache, logits);
  const int64_t t = inputs.input_ids.size(0);
  const float eps = config_.rms_norm_eps;
  Tensor hidden = ws_.hidden.slice_rows(0, t);
  Tensor residual = ws_.residual.slice_rows(0, t);
  backend_.embedding(residual, weights_.embed_tokens, inputs.input_ids);
  for (int layer = 0; layer < config_.num_hidden_layers; ++layer) {
    const DecoderLayerWeights& w = weights_.layers[layer];
    // The residual stream starts as the embedding; afterwards each block's output is added to
    // it by the fused add_rms_norm that also normalises the next block's input.
    if (layer == 0) {
      backend_.rms_norm(hidden, residual, w.input_norm, eps);
    } else {
      backend_.add_rms_norm(hidden, residual, w.input_norm, eps);
    }
    attention_block(layer, t, *inputs.attention, kv_cache[layer]);
    backend_.add_rms_norm(hidden, residual, w.post_attention_norm, eps);
    mlp_block(layer, t);
  }
  backend_.add_rms_norm(hidden, residual, weights_.final_norm, eps);
  Tensor gathered = ws_.gathered.slice_rows(0, inputs.logits_indices.size(0));
  backend_.gather_rows(gathered, hidden, inputs.logits_indices);
  weights_.lm_head->apply(backend_, logits, gathered);
}

}  // namespace

std::unique_ptr<Model> make_decoder_model(const ModelConfig& config,
                                          const DecoderWeightNames& names,
                                          const LoadOptions& options, Backend& backend) {
  DecoderWeights weights = load_decoder_weights(config, names, options, backend);
  return std::make_unique<DecoderModel>(config, std::move(weights), backend);
}

}  // namespace engine
