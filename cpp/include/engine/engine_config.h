#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace engine {

enum class SchedulingPolicy { kFcfs, kPriority };

struct EngineConfig {
  std::string model;                  // a directory with config.json and *.safetensors
  std::string dtype = "auto";         // weights: auto (as stored), float32, bfloat16, float16
  std::string load_format = "auto";   // auto: safetensors; dummy: random weights from config.json
  std::string device = "auto";        // auto (the GPU when there is one), cpu, cuda, cuda:N
  std::optional<int> max_model_len;   // default: the model's max_position_embeddings
  int block_size = 16;                // tokens per KV-cache block
  int max_num_seqs = 256;             // running requests per step
  int max_num_batched_tokens = 2048;  // tokens computed per step (the token budget)
  bool enable_prefix_caching = true;
  SchedulingPolicy policy = SchedulingPolicy::kFcfs;
  uint64_t seed = 0;  // seeds requests that carry no seed of their own
  // Prompt tokens of requests that ask for prompt_logprobs computed per step: their logits
  // rows live in a buffer reserved at start, before the KV cache takes its share, so scoring a
  // prompt never allocates. Default: the rows 256 MiB of fp32 logits hold (523 with Llama-3's
  // vocabulary of 128,256), at most max_num_batched_tokens; longer prompts are scored in chunks.
  std::optional<int> max_num_prompt_logprob_tokens;
  // The KV cache's element type. auto: the compute dtype; fp8 (= fp8_e4m3): float8 e4m3, half
  // the bytes of bf16 (twice the blocks, half the bytes each decode step reads), with the
  // checkpoint's calibrated K/V scales where it has them, else 1 (vLLM's default): values past
  // +-448 times the scale saturate.
  std::string kv_cache_dtype = "auto";
  // KV-cache size: num_kv_blocks when set, else kv_cache_memory_bytes (default 4 GiB on the
  // CPU, as vLLM's CPU backend), capped at what max_num_seqs full-length requests can use.
  std::optional<int64_t> num_kv_blocks;
  std::optional<int64_t> kv_cache_memory_bytes;
  // On a GPU, without num_kv_blocks or kv_cache_memory_bytes: the KV cache takes what is left
  // of this fraction of the device's memory after the weights and a profiling forward.
  double gpu_memory_utilization = 0.9;
  // On a GPU, decode steps replay CUDA graphs captured at start; true runs every step eagerly.
  bool enforce_eager = false;
  // Async scheduling: step N + 1 is scheduled and enqueued while the device runs step N, its
  // sequences taking the tokens N samples on the device, so the device never waits for the
  // host between steps. A sequence that stops on EOS or a stop token computes one token more,
  // which is dropped. A step that scores prompt logprobs is waited for before the next is
  // scheduled. Default (unset): on with a GPU; off on the CPU, whose steps run synchronously.
  std::optional<bool> async_scheduling;
  int num_threads = 0;  // CPU threads for the kernels; 0: OpenMP's default

  // Throws std::invalid_argument naming the field, its value and what is allowed.
  void validate() const;
};

}  // namespace engine
