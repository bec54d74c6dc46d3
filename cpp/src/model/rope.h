#pragma once
// Rotary position embeddings: the inverse frequencies and the cos/sin table the backend's
// rope_and_cache reads. Computed in fp32 in the same order of operations as transformers
// (_compute_default_rope_parameters / _compute_llama3_parameters and LlamaRotaryEmbedding), so
// that logits match Hugging Face's to the last bits that matter.

#include <vector>

#include "model/model_config.h"

namespace engine {

// [head_dim / 2] inverse frequencies, rope scaling applied.
std::vector<float> rope_inverse_frequencies(const ModelConfig& config);

// [max_positions, head_dim] row-major: row p holds cos(p * inv_freq) in [:, :D/2] and
// sin(p * inv_freq) in [:, D/2:].
std::vector<float> rope_cos_sin_table(const ModelConfig& config, int max_positions);

}  // namespace engine
