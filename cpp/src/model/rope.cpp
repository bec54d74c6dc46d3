#include "model/rope.h"

#include <cmath>
#include <stdexcept>

namespace engine {
namespace {

// transformers: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), all in fp32.
std::vector<float> default_inverse_frequencies(double theta, int head_dim) {
  std::vector<float> inv_freq(head_dim / 2);
  for (int i = 0; i < head_dim / 2; ++i) {
    float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    float power = static_cast<float>(
        std::pow(static_cast<double>(static_cast<float>(theta)), static_cast<double>(exponent)));
    inv_freq[i] = 1.0f / power;
  }
  return inv_freq;
}

// Llama 3.1's frequency-dependent scaling: long wavelengths are divided by `factor`, short
// ones kept, and the band between them interpolated. Mirrors transformers'
// _compute_llama3_parameters, whose scalar / tensor divisions are reciprocal-then-multiply.
void apply_llama3_scaling(std::vector<float>& inv_freq, const RopeScaling& scaling) {
  const float factor = static_cast<float>(scaling.factor);
  const float low_freq_factor = static_cast<float>(scaling.low_freq_factor);
  // Python-float arithmetic happens in double; torch then compares/combines in fp32.
  const float factor_span = static_cast<float>(scaling.high_freq_factor - scaling.low_freq_factor);
  const double old_context_len = scaling.original_max_position_embeddings;
  const float low_freq_wavelen = static_cast<float>(old_context_len / scaling.low_freq_factor);
  const float high_freq_wavelen = static_cast<float>(old_context_len / scaling.high_freq_factor);
  const float two_pi = static_cast<float>(2 * M_PI);
  for (float& f : inv_freq) {
    float wavelen = (1.0f / f) * two_pi;
    float scaled = wavelen > low_freq_wavelen ? f / factor : f;
    bool is_medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
    if (is_medium) {
      float smooth =
          ((1.0f / wavelen) * static_cast<float>(old_context_len) - low_freq_factor) / factor_span;
      scaled = (1.0f - smooth) * scaled / factor + smooth * scaled;
    }
    f = scaled;
  }
}

}  // namespace

std::vector<float> rope_inverse_frequencies(const ModelConfig& config) {
  std::vector<float> inv_freq = default_inverse_frequencies(config.rope_theta, config.head_dim);
  if (config.rope_scaling) {
    if (config.rope_scaling->rope_type != "llama3") {
      throw std::invalid_argument("unsupported rope type '" + config.rope_scaling->rope_type +
                                  "' (supported: default, llama3)");
    }
    apply_llama3_scaling(inv_freq, *config.rope_scaling);
  }
  return inv_freq;
}

std::vector<float> rope_cos_sin_table(const ModelConfig& config, int max_positions) {
  const std::vector<float> inv_freq = rope_inverse_frequencies(config);
  const int half = config.head_dim / 2;
  std::vector<float> table(static_cast<size_t>(max_positions) * config.head_dim);
  for (int p = 0; p < max_positions; ++p) {
    float* row = table.data() + static_cast<size_t>(p) * config.head_dim;
    for (int i = 0; i < half; ++i) {
      // The angle is rounded to fp32 as transformers' fp32 matmul rounds it; cos/sin of that
      // angle are then exact to fp32 rounding.
      double angle = static_cast<float>(p) * inv_freq[i];
      row[i] = static_cast<float>(std::cos(angle));
      row[half + i] = static_cast<float>(std::sin(angle));
    }
  }
  return table;
}

}  // namespace engine
