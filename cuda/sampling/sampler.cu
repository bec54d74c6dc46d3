#include "sampling/sampler.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#include "common/cuda_check.h"
#include "common/tensor_checks.h"
#include "sampling/sampler.cuh"

namespace engine::cuda {
namespace {

using sampling::RowArgs;
using sampling::RowResult;

void check_token_ids(std::span<const int> ids, int vocab_size, size_t row, const char* what) {
  for (int id : ids) {
    if (id < 0 || id >= vocab_size) {
      throw std::out_of_range("GpuSampler row " + std::to_string(row) + ": " + what + " token id " +
                              std::to_string(id) + " is outside [0, " + std::to_string(vocab_size) +
                              ")");
    }
  }
}

bool has_penalties(const SamplingParams& p) {
  return p.repetition_penalty != 1.0f || p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f;
}

// Out-of-range ids would write outside the row on the device, so they are refused here, with
// the CPU sampler's checks.
void check_rows(const std::vector<SamplingRow>& rows, int vocab_size) {
  for (size_t r = 0; r < rows.size(); ++r) {
    const SamplingRow& row = rows[r];
    if (row.params == nullptr) {
      throw std::invalid_argument("GpuSampler row " + std::to_string(r) + " has no params");
    }
    const SamplingParams& p = *row.params;
    check_token_ids(row.masked_token_ids, vocab_size, r, "masked");
    for (const auto& entry : p.logit_bias) {
      check_token_ids(std::span(&entry.first, 1), vocab_size, r, "logit_bias");
    }
    if (p.repetition_penalty != 1.0f)
      check_token_ids(row.prompt_token_ids, vocab_size, r, "prompt");
    if (has_penalties(p)) {
      check_token_ids(row.output_token_ids, vocab_size, r, "output");
      if (row.num_pending_outputs > 0 && row.pending_row < 0) {
        throw std::logic_error("GpuSampler row " + std::to_string(r) +
                               " applies penalties but names no row for its pending output");
      }
    }
    if (p.logprobs.has_value() && (*p.logprobs < 0 || *p.logprobs > SamplingParams::kMaxLogprobs)) {
      throw std::invalid_argument("GpuSampler row " + std::to_string(r) + ": logprobs " +
                                  std::to_string(*p.logprobs) + " is outside [0, " +
                                  std::to_string(SamplingParams::kMaxLogprobs) + "]");
    }
  }
}

// The greedy fast path needs no uploads and no workspace.
bool all_plain_greedy(const std::vector<SamplingRow>& rows) {
  return std::all_of(rows.begin(), rows.end(), [](const SamplingRow& row) {
    const SamplingParams& p = *row.params;
    return p.is_greedy() && !has_penalties(p) && !p.logprobs.has_value() &&
           row.masked_token_ids.empty() && p.logit_bias.empty();
  });
}

// Appends the row's token ids (and its logit_bias as id, bias-bits pairs) to `tokens` and fills
// its RowArgs as the CPU sampler would decide: the same top_k_on, any_filter, 1 / temperature and
// uniform draw. A pending output the penalties need gets a slot at the end of the row's outputs
// and a (slot, row of the previous launch) pair in `pending`, filled on the device.
RowArgs make_row_args(const SamplingRow& row, int vocab_size, std::vector<int>& tokens,
                      std::vector<int>& pending, int& num_top) {
  const SamplingParams& p = *row.params;
  RowArgs a{};
  auto append = [&](std::span<const int> ids, int& begin, int& end) {
    begin = static_cast<int>(tokens.size());
    tokens.insert(tokens.end(), ids.begin(), ids.end());
    end = static_cast<int>(tokens.size());
  };
  append(row.masked_token_ids, a.masked_begin, a.masked_end);
  const bool repetition = p.repetition_penalty != 1.0f;
  append(repetition ? row.prompt_token_ids : std::span<const int>{}, a.prompt_begin, a.prompt_end);
  append(has_penalties(p) ? row.output_token_ids : std::span<const int>{}, a.output_begin,
         a.output_end);
  if (has_penalties(p) && row.num_pending_outputs > 0) {
    pending.push_back(a.output_end);
    pending.push_back(row.pending_row);
    tokens.push_back(0);
    a.output_end = static_cast<int>(tokens.size());
  }
  a.bias_begin = static_cast<int>(tokens.size());
  for (const auto& [id, bias] : p.logit_bias) {
    tokens.push_back(id);
    tokens.push_back(std::bit_cast<int>(bias));
  }
  a.bias_end = static_cast<int>(tokens.size());
  a.repetition_penalty = p.repetition_penalty;
  a.frequency_penalty = p.frequency_penalty;
  a.presence_penalty = p.presence_penalty;
  const bool top_k_on = p.top_k > 0 && p.top_k < vocab_size;
  a.top_k = top_k_on ? p.top_k : 0;
  a.top_p = p.top_p;
  a.min_floor = std::max(std::max(p.min_p, 0.0f), std::numeric_limits<float>::denorm_min());
  const bool any_filter = p.min_p > 0.0f || top_k_on || p.top_p < 1.0f;
  a.flags = (p.is_greedy() ? sampling::kGreedy : 0) | (any_filter ? sampling::kAnyFilter : 0) |
            (has_penalties(p) || !row.masked_token_ids.empty() || !p.logit_bias.empty()
                 ? sampling::kNeedsCopy
                 : 0);
  if (!p.is_greedy()) {
    a.inv_temperature = 1.0f / p.temperature;
    a.u = uniform_draw(row.seed, row.output_index());
  }
  a.num_logprobs = p.logprobs.has_value() ? std::min(*p.logprobs, vocab_size) : -1;
  a.top_offset = num_top;
  num_top += std::max(a.num_logprobs, 0);
  return a;
}

size_t align8(size_t n) { return (n + 7) / 8 * 8; }

// The vocabulary size of logits that must be [num_rows, vocab > 0] f32.
int checked_vocab_size(const char* name, const Tensor& logits, size_t num_rows,
                       const char* rows_name) {
  arg_check::rank(name, "logits", logits, 2);
  arg_check::dtype(name, "logits", logits, DType::kF32);
  arg_check::size(name, "logits", logits, 0, static_cast<int64_t>(num_rows), rows_name);
  const int vocab_size = static_cast<int>(logits.size(1));
  if (vocab_size <= 0) {
    throw std::invalid_argument(std::string(name) + ": vocab_size is " +
                                std::to_string(vocab_size) + " but must be positive");
  }
  return vocab_size;
}

// A device buffer and its pinned host mirror, regrown to `bytes` when smaller (contents
// dropped). A slot grows only when it is launched again, after its last launch was collected.
// A failed allocation leaves capacity 0, never a capacity over freed memory.
void grow_mirrored(char*& device, char*& host, size_t& capacity, size_t bytes) {
  if (bytes <= capacity) return;
  cudaFree(device);
  cudaFreeHost(host);
  device = nullptr;
  host = nullptr;
  capacity = 0;
  EMBER_CUDA_CHECK(cudaMalloc(&device, bytes));
  EMBER_CUDA_CHECK(cudaMallocHost(&host, bytes));
  capacity = bytes;
}

}  // namespace

GpuSampler::GpuSampler(int max_rows, int vocab_size, int max_score_rows) {
  if (max_rows < 0 || vocab_size < 0 || max_score_rows < 0) {
    throw std::invalid_argument("GpuSampler: max_rows " + std::to_string(max_rows) +
                                ", vocab_size " + std::to_string(vocab_size) +
                                " and max_score_rows " + std::to_string(max_score_rows) +
                                " must not be negative");
  }
  reserve(max_rows, vocab_size);
  reserve_scores(max_score_rows);
}

GpuSampler::~GpuSampler() { release(); }

void GpuSampler::release() {
  cudaFree(work_);
  cudaFree(marks_);
  cudaFree(keys_);
  for (Slot* slots : {slots_, score_slots_}) {
    for (int i = 0; i < kNumSlots; ++i) {
      cudaFree(slots[i].upload);
      cudaFree(slots[i].results);
      cudaFreeHost(slots[i].upload_host);
      cudaFreeHost(slots[i].results_host);
    }
  }
}

void GpuSampler::reserve(int num_rows, int vocab_size) {
  if (num_rows <= capacity_rows_ && vocab_size <= capacity_vocab_) return;
  if (num_launches_ != num_collects_) {
    // The outstanding launch's results would be freed before collect() reads them.
    throw std::logic_error(
        "GpuSampler: " + std::to_string(num_rows) + " rows of vocab " + std::to_string(vocab_size) +
        " exceed the " + std::to_string(capacity_rows_) + " x " + std::to_string(capacity_vocab_) +
        " it holds, and it cannot grow while a launch is outstanding");
  }
  const int rows = std::max(num_rows, capacity_rows_);
  const int vocab = std::max(vocab_size, capacity_vocab_);
  const size_t n = static_cast<size_t>(rows) * vocab;
  // NOTE: cudaFree waits for the device, so no launch still in flight reads a freed buffer.
  cudaFree(work_);
  cudaFree(marks_);
  cudaFree(keys_);
  work_ = nullptr;
  marks_ = nullptr;
  keys_ = nullptr;
  // Set again only once everything below is allocated: a failure leaves nothing counted.
  capacity_rows_ = 0;
  capacity_vocab_ = 0;
  EMBER_CUDA_CHECK(cudaMalloc(&work_, n * sizeof(float)));
  EMBER_CUDA_CHECK(cudaMalloc(&marks_, n * sizeof(int)));
  EMBER_CUDA_CHECK(cudaMalloc(&keys_, n * sizeof(unsigned long long)));
  EMBER_CUDA_CHECK(cudaMemset(marks_, 0, n * sizeof(int)));
  const size_t results = align8(rows * sizeof(RowResult)) +
                         static_cast<size_t>(rows) * SamplingParams::kMaxLogprobs * 8;
  for (Slot& slot : slots_) {
    grow_mirrored(slot.upload, slot.upload_host, slot.upload_capacity, rows * sizeof(RowArgs));
    grow_mirrored(slot.results, slot.results_host, slot.result_capacity, results);
  }
  capacity_rows_ = rows;
  capacity_vocab_ = vocab;
}

size_t GpuSampler::held_device_bytes() const {
  size_t bytes = static_cast<size_t>(capacity_rows_) * capacity_vocab_ *
                 (sizeof(float) + sizeof(int) + sizeof(unsigned long long));
  for (const Slot* slots : {slots_, score_slots_}) {
    for (int i = 0; i < kNumSlots; ++i)
      bytes += slots[i].upload_capacity + slots[i].result_capacity;
  }
  return bytes;
}

size_t GpuSampler::score_upload_bytes(int num_rows) {
  return static_cast<size_t>(num_rows) * sizeof(sampling::ScoreArgs);
}

// [num_rows] RowResult, then [total_top] ids, then as many logprobs.
size_t GpuSampler::score_result_bytes(int num_rows, int total_top) {
  return align8(num_rows * sizeof(RowResult)) + static_cast<size_t>(total_top) * sizeof(int) +
         static_cast<size_t>(total_top) * sizeof(float);
}

void GpuSampler::reserve_scores(int num_rows) {
  const size_t upload = score_upload_bytes(num_rows);
  const size_t results = score_result_bytes(num_rows, num_rows * SamplingParams::kMaxLogprobs);
  for (Slot& slot : score_slots_) {
    grow_mirrored(slot.upload, slot.upload_host, slot.upload_capacity, upload);
    grow_mirrored(slot.results, slot.results_host, slot.result_capacity, results);
  }
}

std::vector<SampleResult> GpuSampler::sample(const Tensor& logits,
                                             const std::vector<SamplingRow>& rows,
                                             cudaStream_t stream) {
  launch(logits, rows, stream);
  EMBER_CUDA_CHECK(cudaStreamSynchronize(stream));
  return collect();
}

void GpuSampler::launch(const Tensor& logits, const std::vector<SamplingRow>& rows,
                        cudaStream_t stream) {
  constexpr const char* kName = "GpuSampler::sample";
  if (num_launches_ - num_collects_ >= kNumSlots) {
    throw std::logic_error("GpuSampler::launch: " + std::to_string(kNumSlots) +
                           " launches are outstanding; collect() the oldest first");
  }
  const int num_rows = static_cast<int>(rows.size());
  const int vocab_size =
      checked_vocab_size(kName, logits, rows.size(), "the number of sampling rows");
  check_rows(rows, vocab_size);
  // Everything that can refuse the rows or fail to allocate comes before the launch is counted,
  // so a throw leaves the sampler as it was. (A CUDA error after that is sticky: the engine
  // stops.)
  if (num_rows > 0) reserve(num_rows, vocab_size);
  Slot& slot = slots_[num_launches_ % kNumSlots];
  const Slot* previous = num_launches_ > 0 ? &slots_[(num_launches_ - 1) % kNumSlots] : nullptr;
  const bool greedy = all_plain_greedy(rows);
  // The slot is free (its last launch was collected), so filling it before the launch counts
  // changes nothing that is read if a check below throws.
  slot.rows.assign(rows.size(), RowLogprobs{-1, 0});
  std::vector<RowArgs> args;
  std::vector<int> tokens, pending;
  int num_top = 0;
  if (!greedy) {
    args.resize(rows.size());
    for (int r = 0; r < num_rows; ++r) {
      args[r] = make_row_args(rows[r], vocab_size, tokens, pending, num_top);
      slot.rows[r] = RowLogprobs{args[r].num_logprobs, args[r].top_offset};
    }
    check_pending_rows(previous, pending);
  }
  // Uploads: [args] [tokens] [pending pairs].
  const size_t args_bytes = align8(args.size() * sizeof(RowArgs));
  const size_t tokens_bytes = tokens.size() * sizeof(int);
  const size_t pending_bytes = pending.size() * sizeof(int);
  const size_t upload_bytes = args_bytes + tokens_bytes + pending_bytes;
  if (upload_bytes > slot.upload_capacity) {  // doubled, so growing stays rare
    grow_mirrored(slot.upload, slot.upload_host, slot.upload_capacity,
                  std::max(upload_bytes, 2 * slot.upload_capacity));
  }
  // Results: [num_rows] RowResult, then [num_top] ids, then [num_top] logprobs.
  const size_t top_ids_offset = align8(num_rows * sizeof(RowResult));
  const size_t top_logprobs_offset = top_ids_offset + num_top * sizeof(int);
  const size_t result_bytes = top_logprobs_offset + num_top * sizeof(float);
  if (result_bytes > slot.result_capacity) {
    throw std::logic_error("GpuSampler::launch: " + std::to_string(result_bytes) +
                           " result bytes exceed the slot's " +
                           std::to_string(slot.result_capacity));
  }

  ++num_launches_;
  slot.top_ids_offset = top_ids_offset;
  slot.top_logprobs_offset = top_logprobs_offset;
  if (num_rows == 0) return;
  auto* results = reinterpret_cast<RowResult*>(slot.results);
  if (greedy) {
    sampling::argmax_rows_kernel<<<num_rows, sampling::kThreads, 0, stream>>>(logits.ptr<float>(),
                                                                              vocab_size, results);
    EMBER_CUDA_CHECK_LAUNCH();
    EMBER_CUDA_CHECK(cudaMemcpyAsync(slot.results_host, results, num_rows * sizeof(RowResult),
                                     cudaMemcpyDeviceToHost, stream));
    return;
  }
  std::memcpy(slot.upload_host, args.data(), args.size() * sizeof(RowArgs));
  if (!tokens.empty()) std::memcpy(slot.upload_host + args_bytes, tokens.data(), tokens_bytes);
  if (!pending.empty()) {
    std::memcpy(slot.upload_host + args_bytes + tokens_bytes, pending.data(), pending_bytes);
  }
  EMBER_CUDA_CHECK(
      cudaMemcpyAsync(slot.upload, slot.upload_host, upload_bytes, cudaMemcpyHostToDevice, stream));
  if (!pending.empty()) {
    fill_pending_outputs(*previous, slot, args_bytes, tokens_bytes, pending.size() / 2, stream);
  }
  // Fixed-point masses: vocab_size weights of at most 1 stay below 2^62.
  const int shift = 62 - std::bit_width(static_cast<unsigned>(vocab_size));
  const sampling::Workspace ws{work_, marks_, reinterpret_cast<uint64_t*>(keys_)};
  sampling::sample_rows_kernel<<<num_rows, sampling::kThreads, 0, stream>>>(
      logits.ptr<float>(), vocab_size, reinterpret_cast<const RowArgs*>(slot.upload),
      reinterpret_cast<const int*>(slot.upload + args_bytes), ws, std::ldexp(1.0, shift), results,
      reinterpret_cast<int*>(slot.results + slot.top_ids_offset),
      reinterpret_cast<float*>(slot.results + slot.top_logprobs_offset));
  EMBER_CUDA_CHECK_LAUNCH();
  EMBER_CUDA_CHECK(cudaMemcpyAsync(slot.results_host, slot.results, result_bytes,
                                   cudaMemcpyDeviceToHost, stream));
}

// Pending outputs (pairs: slot in tokens, row) are sampled by the previous launch: it must exist
// and have those rows.
void GpuSampler::check_pending_rows(const Slot* previous, const std::vector<int>& pending) {
  if (pending.empty()) return;
  if (previous == nullptr) {
    throw std::logic_error("GpuSampler: a row has a pending output but nothing was launched");
  }
  for (size_t p = 1; p < pending.size(); p += 2) {
    if (pending[p] >= static_cast<int>(previous->rows.size())) {
      throw std::out_of_range("GpuSampler: a pending output from row " +
                              std::to_string(pending[p]) + " of a launch of " +
                              std::to_string(previous->rows.size()));
    }
  }
}

// The outputs still being sampled by the previous launch, copied on the device from its
// results into this launch's uploaded tokens.
void GpuSampler::fill_pending_outputs(const Slot& previous, const Slot& slot, size_t args_bytes,
                                      size_t tokens_bytes, size_t num_pending,
                                      cudaStream_t stream) {
  constexpr int kBlock = 128;
  const int blocks = static_cast<int>((num_pending + kBlock - 1) / kBlock);
  sampling::write_sampled_ids_kernel<<<blocks, kBlock, 0, stream>>>(
      reinterpret_cast<const RowResult*>(previous.results), static_cast<int>(previous.rows.size()),
      reinterpret_cast<const int32_t*>(slot.upload + args_bytes + tokens_bytes),
      static_cast<int>(num_pending), reinterpret_cast<int32_t*>(slot.upload + args_bytes),
      static_cast<int>(tokens_bytes / sizeof(int32_t)));
  EMBER_CUDA_CHECK_LAUNCH();
}

void GpuSampler::write_sampled_ids(const Tensor& input_ids, const Tensor& pending,
                                   cudaStream_t stream) const {
  constexpr const char* kName = "GpuSampler::write_sampled_ids";
  arg_check::dtype(kName, "input_ids", input_ids, DType::kI32);
  arg_check::dtype(kName, "pending", pending, DType::kI32);
  arg_check::rank(kName, "pending", pending, 2);
  arg_check::size(kName, "pending", pending, 1, 2, "a token index and a row");
  const int num_pending = static_cast<int>(pending.size(0));
  if (num_pending == 0) return;
  if (num_launches_ == 0) {
    throw std::logic_error(std::string(kName) + ": no launch has sampled the pending ids");
  }
  const Slot& slot = slots_[(num_launches_ - 1) % kNumSlots];
  constexpr int kBlock = 128;
  sampling::write_sampled_ids_kernel<<<(num_pending + kBlock - 1) / kBlock, kBlock, 0, stream>>>(
      reinterpret_cast<const RowResult*>(slot.results), static_cast<int>(slot.rows.size()),
      pending.ptr<int32_t>(), num_pending, input_ids.ptr<int32_t>(),
      static_cast<int>(input_ids.numel()));
  EMBER_CUDA_CHECK_LAUNCH();
}

std::vector<SampleResult> GpuSampler::collect() {
  if (num_collects_ == num_launches_) {
    throw std::logic_error("GpuSampler::collect: every launch has been collected");
  }
  const Slot& slot = slots_[num_collects_ % kNumSlots];
  ++num_collects_;
  std::vector<SampleResult> out(slot.rows.size());
  const auto* results_host = reinterpret_cast<const RowResult*>(slot.results_host);
  for (size_t r = 0; r < slot.rows.size(); ++r) {
    out[r].token_id = results_host[r].token_id;
    if (slot.rows[r].num_logprobs >= 0) out[r].logprobs = read_logprobs(slot, r);
  }
  return out;
}

TokenLogprobs GpuSampler::read_logprobs(const Slot& slot, size_t r) {
  const RowResult& res = reinterpret_cast<const RowResult*>(slot.results_host)[r];
  const auto* top_ids = reinterpret_cast<const int*>(slot.results_host + slot.top_ids_offset);
  const auto* top_logprobs =
      reinterpret_cast<const float*>(slot.results_host + slot.top_logprobs_offset);
  TokenLogprobs lp;
  lp.token_id = res.token_id;
  lp.logprob = res.logprob;
  lp.rank = res.rank;
  const int offset = slot.rows[r].top_offset;
  for (int j = 0; j < res.num_top; ++j) {
    lp.top.emplace_back(top_ids[offset + j], top_logprobs[offset + j]);
  }
  return lp;
}

void GpuSampler::launch_scores(const Tensor& logits, std::span<const int> token_ids,
                               std::span<const int> num_top, cudaStream_t stream) {
  constexpr const char* kName = "GpuSampler::launch_scores";
  if (num_score_launches_ - num_score_collects_ >= kNumSlots) {
    throw std::logic_error(std::string(kName) + ": " + std::to_string(kNumSlots) +
                           " are outstanding; collect_scores() the oldest first");
  }
  const int vocab_size =
      checked_vocab_size(kName, logits, token_ids.size(), "the number of scored tokens");
  check_score_rows(kName, vocab_size, token_ids, num_top);
  const int num_rows = static_cast<int>(token_ids.size());
  std::vector<sampling::ScoreArgs> args(token_ids.size());
  std::vector<RowLogprobs> rows(token_ids.size());
  int total_top = 0;
  for (int r = 0; r < num_rows; ++r) {
    const int n = std::min(num_top[r], vocab_size);
    args[r] = {token_ids[r], n, total_top};
    rows[r] = RowLogprobs{n, total_top};
    total_top += n;
  }
  // Upload: [args]. Results: [num_rows] RowResult, then [total_top] ids, then as many logprobs.
  // The slot grows first (only past what the constructor reserved), so a failed allocation
  // leaves no launch counted.
  Slot& slot = score_slots_[num_score_launches_ % kNumSlots];
  const size_t upload_bytes = score_upload_bytes(num_rows);
  const size_t top_ids_offset = align8(num_rows * sizeof(RowResult));
  const size_t top_logprobs_offset = top_ids_offset + total_top * sizeof(int);
  const size_t result_bytes = score_result_bytes(num_rows, total_top);
  if (upload_bytes > slot.upload_capacity) {  // doubled, so a long prompt regrows rarely
    grow_mirrored(slot.upload, slot.upload_host, slot.upload_capacity,
                  std::max(upload_bytes, 2 * slot.upload_capacity));
  }
  if (result_bytes > slot.result_capacity) {
    grow_mirrored(slot.results, slot.results_host, slot.result_capacity,
                  std::max(result_bytes, 2 * slot.result_capacity));
  }
  ++num_score_launches_;
  slot.rows = std::move(rows);
  slot.top_ids_offset = top_ids_offset;
  slot.top_logprobs_offset = top_logprobs_offset;
  if (num_rows == 0) return;
  std::memcpy(slot.upload_host, args.data(), upload_bytes);
  EMBER_CUDA_CHECK(
      cudaMemcpyAsync(slot.upload, slot.upload_host, upload_bytes, cudaMemcpyHostToDevice, stream));
  sampling::score_rows_kernel<<<num_rows, sampling::kThreads, 0, stream>>>(
      logits.ptr<float>(), vocab_size, reinterpret_cast<const sampling::ScoreArgs*>(slot.upload),
      reinterpret_cast<RowResult*>(slot.results),
      reinterpret_cast<int*>(slot.results + slot.top_ids_offset),
      reinterpret_cast<float*>(slot.results + slot.top_logprobs_offset));
  EMBER_CUDA_CHECK_LAUNCH();
  EMBER_CUDA_CHECK(cudaMemcpyAsync(slot.results_host, slot.results, result_bytes,
                                   cudaMemcpyDeviceToHost, stream));
}

std::vector<TokenLogprobs> GpuSampler::collect_scores() {
  if (num_score_collects_ == num_score_launches_) {
    throw std::logic_error("GpuSampler::collect_scores: every launch_scores has been collected");
  }
  const Slot& slot = score_slots_[num_score_collects_ % kNumSlots];
  ++num_score_collects_;
  std::vector<TokenLogprobs> out;
  out.reserve(slot.rows.size());
  for (size_t r = 0; r < slot.rows.size(); ++r) out.push_back(read_logprobs(slot, r));
  return out;
}

}  // namespace engine::cuda
