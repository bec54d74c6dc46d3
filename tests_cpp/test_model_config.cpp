// ModelConfig against config.json files as transformers 4 and 5 write them.
#include <gtest/gtest.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

#include "model/model_config.h"

namespace engine {
namespace {

// Llama 3.1 8B as transformers 4.43 saved it: rope_scaling + torch_dtype, GQA, untied,
// no head_dim (so hidden_size / num_attention_heads).
const char* kLlama31V4 = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu",
  "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
  "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
  "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
  "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "transformers_version": "4.43.0.dev0", "use_cache": true, "vocab_size": 128256})";

// A tiny tied Llama as transformers 5.23 saves it: rope_parameters + dtype.
const char* kLlamaV5Tied = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 1, "dtype": "float32", "eos_token_id": 2, "head_dim": 16,
  "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.02, "intermediate_size": 128,
  "max_position_embeddings": 2048, "mlp_bias": false, "model_type": "llama",
  "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
  "pad_token_id": null, "pretraining_tp": 1, "rms_norm_eps": 1e-06,
  "rope_parameters": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                      "original_max_position_embeddings": 1024, "rope_theta": 500000.0,
                      "rope_type": "llama3"},
  "tie_word_embeddings": true, "transformers_version": "5.23.0", "use_cache": true,
  "vocab_size": 256})";

const char* kMistralV4 = R"({
  "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
  "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
  "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
  "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096,
  "tie_word_embeddings": false, "torch_dtype": "bfloat16", "transformers_version": "4.34.0.dev0",
  "use_cache": true, "vocab_size": 32000})";

const char* kMistralV5NoWindow = R"({
  "architectures": ["MistralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1,
  "dtype": "bfloat16", "eos_token_id": 2, "head_dim": 16, "hidden_act": "silu",
  "hidden_size": 64, "initializer_range": 0.02, "intermediate_size": 128,
  "max_position_embeddings": 131072, "model_type": "mistral", "num_attention_heads": 4,
  "num_hidden_layers": 2, "num_key_value_heads": 2, "pad_token_id": null, "rms_norm_eps": 1e-06,
  "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
  "sliding_window": null, "tie_word_embeddings": false, "transformers_version": "5.23.0",
  "use_cache": true, "vocab_size": 256})";

// Qwen2.5-0.5B-Instruct as transformers 4 saved it: window configured but not used.
const char* kQwen2V4 = R"({
  "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
  "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
  "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 21,
  "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24,
  "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
  "sliding_window": 32768, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
  "transformers_version": "4.43.1", "use_cache": true, "use_sliding_window": false,
  "vocab_size": 151936})";

const char* kQwen2V5Sliding = R"({
  "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": null,
  "dtype": "float32", "eos_token_id": null, "hidden_act": "silu", "hidden_size": 64,
  "initializer_range": 0.02, "intermediate_size": 128,
  "layer_types": ["full_attention", "sliding_attention", "sliding_attention"],
  "max_position_embeddings": 32768, "max_window_layers": 1, "model_type": "qwen2",
  "num_attention_heads": 4, "num_hidden_layers": 3, "num_key_value_heads": 2,
  "pad_token_id": null, "rms_norm_eps": 1e-06,
  "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
  "sliding_window": 8, "tie_word_embeddings": false, "transformers_version": "5.23.0",
  "use_cache": true, "use_sliding_window": true, "vocab_size": 256})";

const char* kQwen3V5 = R"({
  "architectures": ["Qwen3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": null, "dtype": "bfloat16", "eos_token_id": null, "head_dim": 32,
  "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.02, "intermediate_size": 128,
  "layer_types": ["full_attention", "full_attention"], "max_position_embeddings": 32768,
  "max_window_layers": 28, "model_type": "qwen3", "num_attention_heads": 4,
  "num_hidden_layers": 2, "num_key_value_heads": 2, "pad_token_id": null,
  "rms_norm_eps": 1e-06, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
  "sliding_window": null, "tie_word_embeddings": false, "transformers_version": "5.23.0",
  "use_cache": true, "use_sliding_window": false, "vocab_size": 256})";

// Qwen3-0.6B as transformers 4.51 saved it.
const char* kQwen3V4 = R"({
  "architectures": ["Qwen3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
  "hidden_size": 1024, "initializer_range": 0.02, "intermediate_size": 3072,
  "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
  "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8,
  "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 1000000, "sliding_window": null,
  "tie_word_embeddings": true, "torch_dtype": "bfloat16", "transformers_version": "4.51.0",
  "use_cache": true, "use_sliding_window": false, "vocab_size": 151936})";

std::string with(const char* base, const std::string& key, const nlohmann::json& value) {
  nlohmann::json json = nlohmann::json::parse(base);
  json[key] = value;
  return json.dump();
}

std::string without(const char* base, const std::string& key) {
  nlohmann::json json = nlohmann::json::parse(base);
  json.erase(key);
  return json.dump();
}

// The message of the std::invalid_argument that parsing throws ("" if none).
std::string parse_error(const std::string& config_json, const std::string& generation = "") {
  try {
    ModelConfig::from_json(config_json, generation);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

TEST(ModelConfig, Llama31TransformersV4) {
  ModelConfig c = ModelConfig::from_json(kLlama31V4);
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.vocab_size, 128256);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.intermediate_size, 14336);
  EXPECT_EQ(c.num_hidden_layers, 32);
  EXPECT_EQ(c.num_attention_heads, 32);
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-5f);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  ASSERT_TRUE(c.rope_scaling.has_value());
  EXPECT_EQ(c.rope_scaling->rope_type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope_scaling->factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling->low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling->high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_scaling->original_max_position_embeddings, 8192);
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_FALSE(c.o_proj_bias);
  EXPECT_FALSE(c.qk_norm);
  EXPECT_FALSE(c.sliding_window.has_value());
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  EXPECT_EQ(c.eos_token_ids, (std::vector<int>{128001, 128008, 128009}));
}

TEST(ModelConfig, LlamaTiedTransformersV5) {
  ModelConfig c = ModelConfig::from_json(kLlamaV5Tied);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  ASSERT_TRUE(c.rope_scaling.has_value());
  EXPECT_DOUBLE_EQ(c.rope_scaling->factor, 32.0);
  EXPECT_EQ(c.rope_scaling->original_max_position_embeddings, 1024);
  EXPECT_EQ(c.torch_dtype, "float32");
  EXPECT_EQ(c.eos_token_ids, (std::vector<int>{2}));
}

TEST(ModelConfig, LlamaAttentionBiasAppliesToAllProjections) {
  ModelConfig c = ModelConfig::from_json(with(kLlamaV5Tied, "attention_bias", true));
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_TRUE(c.o_proj_bias);
}

TEST(ModelConfig, LlamaRopeTypeUnderOldKeyType) {
  nlohmann::json json = nlohmann::json::parse(kLlama31V4);
  json["rope_scaling"].erase("rope_type");
  json["rope_scaling"]["type"] = "llama3";
  ModelConfig c = ModelConfig::from_json(json.dump());
  ASSERT_TRUE(c.rope_scaling.has_value());
  EXPECT_EQ(c.rope_scaling->rope_type, "llama3");
}

TEST(ModelConfig, MistralWindow) {
  ModelConfig c = ModelConfig::from_json(kMistralV4);
  EXPECT_EQ(c.architecture, "MistralForCausalLM");
  ASSERT_TRUE(c.sliding_window.has_value());
  EXPECT_EQ(*c.sliding_window, 4096);
  EXPECT_EQ(c.layer_sliding_window(0), 4096);
  EXPECT_EQ(c.layer_sliding_window(31), 4096);
  EXPECT_FALSE(c.rope_scaling.has_value());
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.head_dim, 128);
}

TEST(ModelConfig, MistralNullWindowTransformersV5) {
  ModelConfig c = ModelConfig::from_json(kMistralV5NoWindow);
  EXPECT_FALSE(c.sliding_window.has_value());
  EXPECT_FALSE(c.layer_sliding_window(1).has_value());
  EXPECT_DOUBLE_EQ(c.rope_theta, 1000000.0);
  EXPECT_FALSE(c.rope_scaling.has_value());
  EXPECT_EQ(c.torch_dtype, "bfloat16");
}

TEST(ModelConfig, Qwen2AlwaysHasQkvBiasAndIgnoresUnusedWindow) {
  ModelConfig c = ModelConfig::from_json(kQwen2V4);
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_FALSE(c.o_proj_bias);
  EXPECT_FALSE(c.qk_norm);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FALSE(c.sliding_window.has_value());
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1000000.0);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int>{151645}));
}

TEST(ModelConfig, Qwen2WindowFromMaxWindowLayers) {
  nlohmann::json json = nlohmann::json::parse(kQwen2V4);
  json["use_sliding_window"] = true;
  json["sliding_window"] = 4096;
  json["max_window_layers"] = 21;
  ModelConfig c = ModelConfig::from_json(json.dump());
  ASSERT_TRUE(c.sliding_window.has_value());
  EXPECT_FALSE(c.layer_sliding_window(0).has_value());
  EXPECT_FALSE(c.layer_sliding_window(20).has_value());
  EXPECT_EQ(c.layer_sliding_window(21), 4096);
  EXPECT_EQ(c.layer_sliding_window(23), 4096);
}

TEST(ModelConfig, Qwen2WindowFromLayerTypesTransformersV5) {
  ModelConfig c = ModelConfig::from_json(kQwen2V5Sliding);
  EXPECT_FALSE(c.layer_sliding_window(0).has_value());
  EXPECT_EQ(c.layer_sliding_window(1), 8);
  EXPECT_EQ(c.layer_sliding_window(2), 8);
  EXPECT_TRUE(c.eos_token_ids.empty());
}

TEST(ModelConfig, Qwen2WindowOffWhenNoLayerSlides) {
  // max_window_layers at or past the layer count leaves every layer on full attention.
  ModelConfig c = ModelConfig::from_json(
      with(without(kQwen2V5Sliding, "layer_types").c_str(), "max_window_layers", 3));
  EXPECT_FALSE(c.sliding_window.has_value());
}

TEST(ModelConfig, Qwen3TransformersV5) {
  ModelConfig c = ModelConfig::from_json(kQwen3V5);
  EXPECT_EQ(c.architecture, "Qwen3ForCausalLM");
  EXPECT_TRUE(c.qk_norm);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_EQ(c.head_dim, 32);  // explicit, not hidden_size / num_attention_heads = 16
  EXPECT_FALSE(c.sliding_window.has_value());
  EXPECT_EQ(c.torch_dtype, "bfloat16");
}

TEST(ModelConfig, Qwen3TransformersV4WithAttentionBias) {
  ModelConfig plain = ModelConfig::from_json(kQwen3V4);
  EXPECT_EQ(plain.head_dim, 128);
  EXPECT_TRUE(plain.tie_word_embeddings);
  EXPECT_DOUBLE_EQ(plain.rope_theta, 1000000.0);  // an integer in the file
  EXPECT_FALSE(plain.rope_scaling.has_value());
  ModelConfig biased = ModelConfig::from_json(with(kQwen3V4, "attention_bias", true));
  EXPECT_TRUE(biased.qkv_bias);
  EXPECT_TRUE(biased.o_proj_bias);
  EXPECT_TRUE(biased.qk_norm);
}

TEST(ModelConfig, GenerationConfigEosWins) {
  ModelConfig c = ModelConfig::from_json(kQwen2V4, R"({"eos_token_id": [151645, 151643]})");
  EXPECT_EQ(c.eos_token_ids, (std::vector<int>{151645, 151643}));
  ModelConfig single = ModelConfig::from_json(kLlama31V4, R"({"eos_token_id": 7})");
  EXPECT_EQ(single.eos_token_ids, (std::vector<int>{7}));
  ModelConfig absent = ModelConfig::from_json(kLlama31V4, R"({"bos_token_id": 1})");
  EXPECT_EQ(absent.eos_token_ids, (std::vector<int>{128001, 128008, 128009}));
}

TEST(ModelConfig, DefaultsWhenOptionalFieldsAreAbsent) {
  std::string json =
      without(without(without(kMistralV4, "num_key_value_heads").c_str(), "rope_theta").c_str(),
              "torch_dtype");
  ModelConfig c = ModelConfig::from_json(json);
  EXPECT_EQ(c.num_key_value_heads, 32);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.torch_dtype, "float32");
}

class MissingField : public testing::TestWithParam<std::string> {};

TEST_P(MissingField, NamesTheField) {
  EXPECT_EQ(parse_error(without(kLlama31V4, GetParam())),
            "config.json: missing required field '" + GetParam() + "'");
  EXPECT_EQ(parse_error(with(kLlama31V4, GetParam(), nullptr)),
            "config.json: missing required field '" + GetParam() + "'");
}

INSTANTIATE_TEST_SUITE_P(ModelConfig, MissingField,
                         testing::Values("architectures", "vocab_size", "hidden_size",
                                         "intermediate_size", "num_hidden_layers",
                                         "num_attention_heads"));

class WrongType : public testing::TestWithParam<std::string> {};

TEST_P(WrongType, NamesTheFieldAndTheType) {
  std::string message = parse_error(with(kLlama31V4, GetParam(), "64"));
  EXPECT_NE(message.find("config.json: field '" + GetParam() + "' must be"), std::string::npos)
      << message;
  EXPECT_NE(message.find("string"), std::string::npos) << message;
}

INSTANTIATE_TEST_SUITE_P(ModelConfig, WrongType,
                         testing::Values("vocab_size", "hidden_size", "intermediate_size",
                                         "num_hidden_layers", "num_attention_heads",
                                         "num_key_value_heads", "head_dim", "rms_norm_eps",
                                         "rope_theta", "max_position_embeddings",
                                         "tie_word_embeddings", "attention_bias"));

TEST(ModelConfigErrors, FloatWhereIntegerExpected) {
  EXPECT_NE(
      parse_error(with(kLlama31V4, "hidden_size", 4096.5)).find("'hidden_size' must be an integer"),
      std::string::npos);
}

TEST(ModelConfigErrors, UnknownArchitectureListsSupported) {
  std::string message =
      parse_error(with(kLlama31V4, "architectures", nlohmann::json::array({"GPT2LMHeadModel"})));
  EXPECT_NE(message.find("'GPT2LMHeadModel'"), std::string::npos) << message;
  for (const std::string& name : supported_architectures()) {
    EXPECT_NE(message.find(name), std::string::npos) << message;
  }
  EXPECT_EQ(supported_architectures(),
            (std::vector<std::string>{"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                                      "Qwen3ForCausalLM"}));
}

TEST(ModelConfigErrors, ArchitecturesNotAList) {
  EXPECT_NE(parse_error(with(kLlama31V4, "architectures", "LlamaForCausalLM"))
                .find("'architectures' must be a non-empty list"),
            std::string::npos);
  EXPECT_NE(parse_error(with(kLlama31V4, "architectures", nlohmann::json::array()))
                .find("'architectures' must be a non-empty list"),
            std::string::npos);
}

TEST(ModelConfigErrors, UnsupportedRopeTypeIsNamed) {
  nlohmann::json json = nlohmann::json::parse(kLlama31V4);
  json["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  EXPECT_NE(parse_error(json.dump()).find("unsupported rope type 'yarn'"), std::string::npos);
  nlohmann::json v5 = nlohmann::json::parse(kQwen3V5);
  v5["rope_parameters"]["rope_type"] = "dynamic";
  EXPECT_NE(parse_error(v5.dump()).find("unsupported rope type 'dynamic'"), std::string::npos);
}

TEST(ModelConfigErrors, Llama3RopeMissingFactor) {
  nlohmann::json json = nlohmann::json::parse(kLlama31V4);
  json["rope_scaling"].erase("factor");
  EXPECT_EQ(parse_error(json.dump()), "config.json: rope_scaling: missing required field 'factor'");
}

TEST(ModelConfigErrors, HiddenActMustBeSilu) {
  EXPECT_EQ(parse_error(with(kLlama31V4, "hidden_act", "gelu")),
            "config.json: hidden_act 'gelu' is not supported (must be 'silu')");
}

TEST(ModelConfigErrors, InvalidJson) {
  EXPECT_NE(parse_error("{\"architectures\": [").find("config.json: invalid JSON"),
            std::string::npos);
  EXPECT_NE(parse_error("[1, 2]").find("config.json: expected a JSON object"), std::string::npos);
  EXPECT_NE(parse_error(kLlama31V4, "{oops").find("generation_config.json: invalid JSON"),
            std::string::npos);
}

TEST(ModelConfigErrors, InconsistentHeads) {
  EXPECT_NE(parse_error(with(kLlama31V4, "num_key_value_heads", 5))
                .find("num_attention_heads 32 must be a multiple of num_key_value_heads 5"),
            std::string::npos);
  EXPECT_NE(parse_error(with(kLlama31V4, "num_attention_heads", 30))
                .find("hidden_size 4096 is not a multiple of num_attention_heads 30"),
            std::string::npos);
  EXPECT_NE(parse_error(with(kLlama31V4, "hidden_size", 0)).find("'hidden_size' must be positive"),
            std::string::npos);
}

TEST(ModelConfigErrors, EosOfWrongType) {
  EXPECT_NE(parse_error(with(kLlama31V4, "eos_token_id", "2"))
                .find("config.json: field 'eos_token_id' must be an integer or a list"),
            std::string::npos);
  EXPECT_NE(parse_error(kLlama31V4, R"({"eos_token_id": [1, "x"]})")
                .find("generation_config.json: field 'eos_token_id'"),
            std::string::npos);
}

TEST(ModelConfigErrors, BadLayerTypes) {
  EXPECT_NE(
      parse_error(with(kQwen2V5Sliding, "layer_types", nlohmann::json::array({"full_attention"})))
          .find("'layer_types' must be a list of 3 strings"),
      std::string::npos);
}

TEST(ModelConfigErrors, MissingDirectory) {
  EXPECT_THROW(ModelConfig::from_directory("/nonexistent/model"), std::invalid_argument);
}

}  // namespace
}  // namespace engine
