#pragma once
// What the whole-engine tests (test_runtime_*) share: a tiny Llama config.json that
// load_format "dummy" turns into random weights, prompts of known ids, greedy params.

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <numeric>
#include <string>
#include <vector>

#include "engine/sampling_params.h"

namespace engine::test {

constexpr int kTinyVocab = 128;

// A directory holding only config.json (2 layers, hidden 64, 4 q / 2 kv heads of 64, vocab
// 128, 256 positions, EOS 2), one per test binary and process.
inline std::string write_tiny_llama_config(const std::string& tag) {
  const auto dir =
      std::filesystem::temp_directory_path() / ("ember-" + tag + "-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "config.json") << R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128,
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
    "tie_word_embeddings": false, "torch_dtype": "float32", "eos_token_id": 2})";
  return dir.string();
}

// first, first + 1, ... modulo the vocabulary.
inline std::vector<int> prompt_of(int length, int first = 3) {
  std::vector<int> ids(length);
  std::iota(ids.begin(), ids.end(), first);
  for (int& id : ids) id %= kTinyVocab;
  return ids;
}

// Greedy, EOS ignored: exactly max_tokens tokens unless max_model_len stops it.
inline SamplingParams greedy(int max_tokens) {
  SamplingParams params;
  params.temperature = 0;
  params.max_tokens = max_tokens;
  params.ignore_eos = true;
  return params;
}

}  // namespace engine::test
