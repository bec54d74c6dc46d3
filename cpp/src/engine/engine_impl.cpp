#include "engine/engine_impl.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>

#include "core/mix.h"

#ifdef EMBER_WITH_CUDA
#include "common/device.h"
#endif

namespace engine {
namespace {

// NOTE: vLLM's CPU backend reserves 4 GiB for the KV cache by default; ember does the same and
// caps it at what max_num_seqs requests of max_model_len tokens could ever use.
constexpr int64_t kDefaultCpuKvCacheBytes = int64_t{4} << 30;
// Left free on a GPU beside gpu_memory_utilization's share for what start-up allocates after
// the KV cache: the decode graphs (a few MiB each) and their executables.
constexpr int64_t kGraphReserveBytes = int64_t{256} << 20;

std::string gib(double bytes) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.2f GiB", bytes / double(int64_t{1} << 30));
  return text;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int resolve_max_model_len(const EngineConfig& config, const ModelConfig& model) {
  const int limit = model.max_position_embeddings;
  const int max_model_len = config.max_model_len.value_or(limit);
  if (max_model_len > limit) {
    throw std::invalid_argument("max_model_len " + std::to_string(max_model_len) +
                                " is larger than the model's max_position_embeddings " +
                                std::to_string(limit));
  }
  return max_model_len;
}

// The KV-cache budget on a GPU: what gpu_memory_utilization of the device leaves after what is
// in use now (weights, activation buffers after the profiling forward, other processes).
int64_t gpu_kv_cache_budget(const EngineConfig& config, const DeviceMemory& memory,
                            int64_t min_bytes) {
  const double total = static_cast<double>(memory.total_bytes);
  const double in_use = total - static_cast<double>(memory.free_bytes);
  const double reserve = config.enforce_eager ? 0.0 : static_cast<double>(kGraphReserveBytes);
  const double budget = total * config.gpu_memory_utilization - in_use - reserve;
  if (budget < static_cast<double>(min_bytes)) {
    throw std::invalid_argument(
        "gpu_memory_utilization " + std::to_string(config.gpu_memory_utilization) + " allows " +
        gib(total * config.gpu_memory_utilization) + " of the device's " + gib(total) + ", but " +
        gib(in_use) + " is already in use (weights, activations for max_num_batched_tokens " +
        std::to_string(config.max_num_batched_tokens) + ", other processes), which leaves " +
        gib(std::max(budget, 0.0)) + " for the KV cache where one request of max_model_len needs " +
        gib(static_cast<double>(min_bytes)) +
        "; raise gpu_memory_utilization, or lower max_model_len, max_num_batched_tokens or "
        "max_num_seqs");
  }
  return static_cast<int64_t>(budget);
}

int64_t resolve_num_kv_blocks(const EngineConfig& config, int max_model_len,
                              int64_t bytes_per_block, std::optional<DeviceMemory> memory) {
  // One full-length request must fit, or the scheduler could never run it; +1: null block.
  const int64_t blocks_per_seq = ceil_div(max_model_len, config.block_size);
  const int64_t min_blocks = blocks_per_seq + 1;
  const std::string needs = "one request of max_model_len " + std::to_string(max_model_len) +
                            " needs " + std::to_string(min_blocks) + " blocks of " +
                            std::to_string(config.block_size) + " tokens";
  if (config.num_kv_blocks) {
    if (*config.num_kv_blocks < min_blocks) {
      throw std::invalid_argument("num_kv_blocks is " + std::to_string(*config.num_kv_blocks) +
                                  " but " + needs + "; raise num_kv_blocks or lower max_model_len");
    }
    return *config.num_kv_blocks;
  }
  const int64_t budget =
      config.kv_cache_memory_bytes
          ? *config.kv_cache_memory_bytes
          : (memory ? gpu_kv_cache_budget(config, *memory, min_blocks * bytes_per_block)
                    : kDefaultCpuKvCacheBytes);
  const int64_t num_blocks =
      std::min(budget / bytes_per_block, blocks_per_seq * config.max_num_seqs + 1);
  if (num_blocks < min_blocks) {
    throw std::invalid_argument("kv_cache_memory_bytes " + std::to_string(budget) + " holds " +
                                std::to_string(num_blocks) + " blocks but " + needs +
                                "; raise kv_cache_memory_bytes or lower max_model_len");
  }
  return num_blocks;
}

#ifdef EMBER_WITH_CUDA
// bf16 unless the checkpoint is fp16 (as vLLM's "auto", but fp32 checkpoints also run in bf16:
// the CUDA kernels compute in 16-bit types with fp32 accumulation).
DType cuda_compute_dtype(const std::string& dtype, const ModelConfig& model) {
  if (dtype == "float32") {
    throw std::invalid_argument(
        "dtype float32 is not supported on the GPU; use auto, bfloat16 or float16 (or "
        "device 'cpu')");
  }
  if (dtype == "float16" || (dtype == "auto" && model.torch_dtype == "float16")) {
    return DType::kF16;
  }
  return DType::kBF16;
}

int cuda_device_index(const std::string& device, int num_devices) {
  int index = 0;
  if (device.rfind("cuda:", 0) == 0) {
    const std::string digits = device.substr(5);
    if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos) {
      throw std::invalid_argument("device must be auto, cpu, cuda or cuda:N, got '" + device + "'");
    }
    index = std::stoi(digits);
  }
  if (index >= num_devices) {
    throw std::invalid_argument("device '" + device + "' is not available: " +
                                std::to_string(num_devices) + " CUDA device(s) visible");
  }
  return index;
}
#endif

// The backend for config.device, and the dtype the weights are loaded in for it.
std::pair<std::unique_ptr<Backend>, std::string> make_backend(const EngineConfig& config,
                                                              const ModelConfig& model) {
  const bool wants_cuda = config.device.rfind("cuda", 0) == 0;
#ifdef EMBER_WITH_CUDA
  const int num_devices = cuda::cuda_device_count();
  if (wants_cuda || (config.device == "auto" && num_devices > 0)) {
    const int index = cuda_device_index(config.device, num_devices);
    const DType dtype = cuda_compute_dtype(config.dtype, model);
    return {make_cuda_backend(index, dtype), dtype_name(dtype)};
  }
#else
  if (wants_cuda) {
    throw std::invalid_argument("device '" + config.device +
                                "' is not available: this build has no CUDA backend (nvcc or "
                                "cuBLAS was missing at build time); use device 'cpu' or 'auto'");
  }
#endif
  return {make_cpu_backend(config.num_threads), config.dtype};
}

// Scored prompt tokens per step: the config's, else as many logits rows as 256 MiB of fp32
// hold (the buffer is reserved at start), within the token budget.
int resolve_max_num_prompt_logprob_tokens(const EngineConfig& config, int vocab_size) {
  if (config.max_num_prompt_logprob_tokens) return *config.max_num_prompt_logprob_tokens;
  constexpr int64_t kPromptLogitsBytes = int64_t{256} << 20;
  const int64_t rows = kPromptLogitsBytes / (int64_t{vocab_size} * int64_t{sizeof(float)});
  return static_cast<int>(std::clamp<int64_t>(rows, 1, config.max_num_batched_tokens));
}

}  // namespace

Engine::Impl::Impl(const EngineConfig& config) : config_(config) {
  config_.validate();
  if (!std::filesystem::is_directory(config_.model)) {
    throw std::invalid_argument("model directory '" + config_.model + "' does not exist");
  }
  const ModelConfig model_config = ModelConfig::from_directory(config_.model);
  const int max_model_len = resolve_max_model_len(config_, model_config);
  std::string weight_dtype;
  std::tie(backend_, weight_dtype) = make_backend(config_, model_config);
  LoadOptions load{config_.model, weight_dtype, config_.load_format == "dummy" ? "dummy" : "auto",
                   config_.seed};
  model_ = load_model(model_config, load, *backend_);

  const DType kv_cache_dtype =
      config_.kv_cache_dtype == "auto" ? backend_->compute_dtype() : DType::kFP8E4M3;
  const int prompt_logprob_tokens =
      resolve_max_num_prompt_logprob_tokens(config_, model_config.vocab_size);
  RunnerConfig runner_config{
      config_.block_size, config_.max_num_batched_tokens, config_.max_num_seqs,
      max_model_len,      model_config.eos_token_ids,     !config_.enforce_eager,
      kv_cache_dtype,     prompt_logprob_tokens};
  runner_ = std::make_unique<ModelRunner>(*backend_, *model_, runner_config);
  // NOTE: on a GPU a forward at the full token budget runs before the KV cache is sized, so the
  // cache gets only what that step leaves (vLLM's profiling run); the CPU's is sized by config.
  if (backend_->memory_info()) runner_->profile_run();
  const int64_t bytes_per_block =
      kv_cache_bytes_per_block(model_config, config_.block_size, kv_cache_dtype);
  const int64_t num_blocks =
      resolve_num_kv_blocks(config_, max_model_len, bytes_per_block, backend_->memory_info());
  runner_->allocate_kv_cache(num_blocks);
  // Block hashing is always on: with prefix caching off, each request gets its own cache salt,
  // so only the n samples of one request share (their prompt's) blocks.
  kv_cache_ = std::make_unique<KVCacheManager>(static_cast<int>(num_blocks), config_.block_size,
                                               /*enable_caching=*/true);
  SchedulerConfig scheduler_config{
      config_.max_num_seqs, config_.max_num_batched_tokens, max_model_len,
      config_.policy,       model_config.eos_token_ids,     prompt_logprob_tokens};
  scheduler_ = std::make_unique<Scheduler>(scheduler_config, *kv_cache_);
  runner_->capture_decode_graphs();
  async_scheduling_ =
      config_.async_scheduling.value_or(backend_->device_type() != DeviceType::kCpu);

  info_ = ModelInfo{model_config.architecture,
                    model_config.vocab_size,
                    max_model_len,
                    model_config.eos_token_ids,
                    backend_->name(),
                    num_blocks,
                    config_.block_size,
                    runner_->decode_graph_batch_sizes(),
                    dtype_name(kv_cache_dtype),
                    runner_->uses_calibrated_kv_cache_scales()};
}

void Engine::Impl::validate_request(const std::vector<int>& prompt,
                                    const SamplingParams& params) const {
  params.validate();
  if (prompt.empty()) throw std::invalid_argument("prompt is empty: give at least one token");
  if (static_cast<int>(prompt.size()) > info_.max_model_len) {
    throw std::invalid_argument("prompt has " + std::to_string(prompt.size()) +
                                " tokens but max_model_len is " +
                                std::to_string(info_.max_model_len));
  }
  const std::string vocab = "[0, " + std::to_string(info_.vocab_size) + ")";
  for (size_t i = 0; i < prompt.size(); ++i) {
    if (prompt[i] < 0 || prompt[i] >= info_.vocab_size) {
      throw std::invalid_argument("prompt token id " + std::to_string(prompt[i]) + " at position " +
                                  std::to_string(i) + " is outside the vocabulary " + vocab);
    }
  }
  for (int token_id : params.stop_token_ids) {
    if (token_id >= info_.vocab_size) {
      throw std::invalid_argument("stop_token_ids entry " + std::to_string(token_id) +
                                  " is outside the vocabulary " + vocab);
    }
  }
  for (const auto& entry : params.logit_bias) {
    if (entry.first >= info_.vocab_size) {
      throw std::invalid_argument("logit_bias token id " + std::to_string(entry.first) +
                                  " is outside the vocabulary " + vocab);
    }
  }
}

std::vector<std::unique_ptr<Request>> Engine::Impl::make_samples(const std::string& request_id,
                                                                 const std::vector<int>& prompt,
                                                                 const SamplingParams& params) {
  const uint64_t salt = config_.enable_prefix_caching ? 0 : next_salt_++;
  std::vector<std::unique_ptr<Request>> samples;
  for (int index = 0; index < params.n; ++index) {
    auto request = std::make_unique<Request>();
    request->seq_id = next_seq_id_++;
    request->request_id = request_id;
    request->sample_index = index;
    request->params = params;
    // A seeded request draws the same tokens whatever else runs; an unseeded one derives its
    // key from the engine seed and its arrival, so a whole run is reproducible too.
    request->sampling_seed = params.seed ? splitmix64(*params.seed ^ splitmix64(index + 1))
                                         : splitmix64(config_.seed ^ splitmix64(request->seq_id));
    request->cache_salt = salt;
    request->arrival = request->seq_id;
    request->token_ids = prompt;
    request->num_prompt_tokens = static_cast<int>(prompt.size());
    samples.push_back(std::move(request));
  }
  return samples;
}

void Engine::Impl::add_request(const std::string& request_id, const std::vector<int>& prompt,
                               const SamplingParams& params) {
  validate_request(prompt, params);
  auto group = std::make_unique<RequestGroup>();
  group->request_id = request_id;
  group->params = params;
  group->finished.assign(params.n, false);
  group->num_prompt_tokens = static_cast<int>(prompt.size());
  std::lock_guard<std::mutex> lock(inbox_mutex_);
  if (live_ids_.count(request_id)) {
    throw std::invalid_argument("request id '" + request_id + "' is already in use");
  }
  group->held = make_samples(request_id, prompt, params);
  for (const auto& sample : group->held) group->seq_ids.push_back(sample->seq_id);
  live_ids_[request_id] = true;
  ++num_unfinished_;
  inbox_adds_.push_back(std::move(group));
}

void Engine::Impl::abort(const std::string& request_id, std::optional<int> sample_index) {
  std::lock_guard<std::mutex> lock(inbox_mutex_);
  inbox_aborts_.push_back({request_id, sample_index});
}

}  // namespace engine
