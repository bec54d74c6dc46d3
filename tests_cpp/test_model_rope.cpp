// RoPE tables against the formula in double precision and against values printed by
// transformers 5.23's LlamaRotaryEmbedding (fp32) for Llama 3.1's rope scaling.
#include <gtest/gtest.h>

#include <cmath>

#include "model/rope.h"

namespace engine {
namespace {

ModelConfig rope_config(int head_dim, double theta) {
  ModelConfig c;
  c.head_dim = head_dim;
  c.rope_theta = theta;
  return c;
}

ModelConfig llama31_config() {
  ModelConfig c = rope_config(128, 500000.0);
  c.rope_scaling = RopeScaling{"llama3", 8.0, 1.0, 4.0, 8192};
  return c;
}

// The formulas of the RoPE and Llama 3.1 papers, in double.
double reference_inv_freq(const ModelConfig& c, int i) {
  double inv_freq = std::pow(c.rope_theta, -2.0 * i / c.head_dim);
  if (!c.rope_scaling) return inv_freq;
  const RopeScaling& s = *c.rope_scaling;
  double wavelen = 2 * M_PI / inv_freq;
  double low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
  double high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
  if (wavelen < high_freq_wavelen) return inv_freq;
  if (wavelen > low_freq_wavelen) return inv_freq / s.factor;
  double smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) /
                  (s.high_freq_factor - s.low_freq_factor);
  return (1 - smooth) * inv_freq / s.factor + smooth * inv_freq;
}

void expect_table_matches_formula(const ModelConfig& c, int max_positions) {
  std::vector<float> table = rope_cos_sin_table(c, max_positions);
  const int half = c.head_dim / 2;
  ASSERT_EQ(table.size(), static_cast<size_t>(max_positions) * c.head_dim);
  for (int p = 0; p < max_positions; p += 7) {
    for (int i = 0; i < half; ++i) {
      double angle = p * reference_inv_freq(c, i);
      // fp32 angles carry a relative error of ~1e-7, so the tolerance grows with the angle.
      double tolerance = 2e-6 + 3e-7 * angle;
      ASSERT_NEAR(table[p * c.head_dim + i], std::cos(angle), tolerance) << "p=" << p << " i=" << i;
      ASSERT_NEAR(table[p * c.head_dim + half + i], std::sin(angle), tolerance)
          << "p=" << p << " i=" << i;
    }
  }
}

TEST(Rope, DefaultInverseFrequencies) {
  ModelConfig c = rope_config(16, 10000.0);
  std::vector<float> inv_freq = rope_inverse_frequencies(c);
  // transformers: LlamaRotaryEmbedding(hidden_size=64, heads=4).inv_freq
  std::vector<float> expected = {1.0f,
                                 0.3162277638912201f,
                                 0.10000000149011612f,
                                 0.03162277862429619f,
                                 0.009999999776482582f,
                                 0.003162277862429619f,
                                 0.0010000000474974513f,
                                 0.0003162277862429619f};
  ASSERT_EQ(inv_freq.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) EXPECT_FLOAT_EQ(inv_freq[i], expected[i]) << i;
}

TEST(Rope, Llama3InverseFrequenciesMatchTransformers) {
  std::vector<float> inv_freq = rope_inverse_frequencies(llama31_config());
  ASSERT_EQ(inv_freq.size(), 64u);
  // Index -> transformers' value: high band kept (0, 20, 26, 28), the smoothed middle band
  // (30), low band divided by 8 (32 and up).
  const std::vector<std::pair<int, float>> expected = {
      {0, 1.0f},
      {20, 0.016560440883040428f},
      {26, 0.00483942124992609f},
      {28, 0.0032114461064338684f},
      {30, 0.0013718936825171113f},
      {32, 0.0005248460220173001f},
      {34, 0.0001785077911335975f},
      {40, 3.428102354519069e-05f},
      {45, 1.2297638932068367e-05f},
      {50, 4.411534519022098e-06f},
      {63, 3.068925877869333e-07f},
  };
  for (auto [i, value] : expected) EXPECT_FLOAT_EQ(inv_freq[i], value) << "index " << i;
}

TEST(Rope, Llama3InverseFrequenciesMatchFormula) {
  ModelConfig c = llama31_config();
  std::vector<float> inv_freq = rope_inverse_frequencies(c);
  for (int i = 0; i < 64; ++i) {
    EXPECT_NEAR(inv_freq[i], reference_inv_freq(c, i), 1e-6 * reference_inv_freq(c, i)) << i;
  }
}

TEST(Rope, DefaultTableMatchesFormula) {
  expect_table_matches_formula(rope_config(64, 10000.0), 4096);
}

TEST(Rope, Llama3TableMatchesFormula) { expect_table_matches_formula(llama31_config(), 9000); }

TEST(Rope, Llama3TableMatchesTransformers) {
  std::vector<float> table = rope_cos_sin_table(llama31_config(), 8192);
  auto cos_at = [&](int p, int i) { return table[p * 128 + i]; };
  auto sin_at = [&](int p, int i) { return table[p * 128 + 64 + i]; };
  EXPECT_FLOAT_EQ(cos_at(0, 0), 1.0f);
  EXPECT_FLOAT_EQ(sin_at(0, 50), 0.0f);
  EXPECT_NEAR(cos_at(1, 0), 0.5403023362159729f, 1e-7);
  EXPECT_NEAR(sin_at(1, 30), 0.001371893216855824f, 1e-9);
  EXPECT_NEAR(cos_at(1000, 0), 0.5623790621757507f, 1e-6);
  EXPECT_NEAR(cos_at(1000, 30), 0.19759376347064972f, 1e-6);
  EXPECT_NEAR(sin_at(1000, 30), 0.9802839756011963f, 1e-6);
  EXPECT_NEAR(sin_at(1000, 50), 0.004411519970744848f, 1e-8);
  EXPECT_NEAR(cos_at(8191, 0), -0.6463904976844788f, 1e-6);
  EXPECT_NEAR(cos_at(8191, 30), 0.23926270008087158f, 1e-6);
  EXPECT_NEAR(sin_at(8191, 30), -0.9709548950195312f, 1e-6);
  EXPECT_NEAR(sin_at(8191, 50), 0.03612701594829559f, 1e-7);
}

TEST(Rope, RejectsUnknownScaling) {
  ModelConfig c = rope_config(8, 10000.0);
  c.rope_scaling = RopeScaling{"yarn"};
  EXPECT_THROW(rope_inverse_frequencies(c), std::invalid_argument);
}

}  // namespace
}  // namespace engine
