#include "runtime/logits_sampler.h"

#include <algorithm>
#include <deque>
#include <stdexcept>
#include <string>

namespace engine {
namespace {

// Copies the logits to the host (a no-op copy on the CPU backend) and runs Sampler there.
class HostLogitsSampler final : public LogitsSampler {
 public:
  HostLogitsSampler(Backend& backend, int max_rows, int vocab_size)
      : backend_(backend), host_logits_(static_cast<size_t>(max_rows) * vocab_size) {}

  void launch(const Tensor& logits, const std::vector<SamplingRow>& rows) override {
    const auto num_values = static_cast<size_t>(logits.numel());
    if (host_logits_.size() < num_values) host_logits_.resize(num_values);
    backend_.copy_to_host(host_logits_.data(), logits);
    if (results_.size() >= 2) {
      throw std::logic_error("HostLogitsSampler::launch: two launches are outstanding; collect()");
    }
    const std::vector<SamplingRow>& complete = with_pending_outputs(rows);
    results_.push_back(
        sampler_.sample(host_logits_.data(), static_cast<int>(logits.size(1)), complete));
  }

  std::vector<SampleResult> collect() override {
    if (results_.empty()) throw std::logic_error("HostLogitsSampler::collect: nothing launched");
    std::vector<SampleResult> oldest = std::move(results_.front());
    results_.pop_front();
    return oldest;
  }

  // Rows whose penalties need an output the previous launch sampled get it appended (a copy of
  // the rows; `rows` itself when none does).
  const std::vector<SamplingRow>& with_pending_outputs(const std::vector<SamplingRow>& rows) {
    const auto needs = [](const SamplingRow& row) {
      return row.num_pending_outputs > 0 && row.has_penalties();
    };
    if (std::none_of(rows.begin(), rows.end(), needs)) return rows;
    if (results_.empty()) {
      throw std::logic_error("HostLogitsSampler: a row has a pending output but nothing launched");
    }
    const std::vector<SampleResult>& previous = results_.back();
    resolved_rows_ = rows;
    resolved_outputs_.resize(rows.size());
    for (size_t r = 0; r < rows.size(); ++r) {
      SamplingRow& row = resolved_rows_[r];
      if (!needs(row)) continue;
      if (row.pending_row < 0 || row.pending_row >= static_cast<int>(previous.size())) {
        throw std::out_of_range(
            "HostLogitsSampler: row " + std::to_string(r) + " takes its pending output from row " +
            std::to_string(row.pending_row) + " of a launch of " + std::to_string(previous.size()));
      }
      std::vector<int>& outputs = resolved_outputs_[r];
      outputs.assign(row.output_token_ids.begin(), row.output_token_ids.end());
      outputs.push_back(previous[static_cast<size_t>(row.pending_row)].token_id);
      row.output_token_ids = outputs;
      row.num_pending_outputs = 0;
    }
    return resolved_rows_;
  }

  // The ids are on the host already; each is copied to its place in input_ids.
  void write_sampled_ids(const Tensor& input_ids, const Tensor& pending) override {
    const int64_t num_pending = pending.numel() / 2;
    if (num_pending == 0) return;
    if (results_.empty()) {
      throw std::logic_error("HostLogitsSampler::write_sampled_ids: nothing launched");
    }
    pairs_.resize(static_cast<size_t>(pending.numel()));
    backend_.copy_to_host(pairs_.data(), pending);
    const std::vector<SampleResult>& latest = results_.back();
    for (int64_t p = 0; p < num_pending; ++p) {
      const int32_t t = pairs_[2 * p];
      if (t < 0 || t >= input_ids.numel()) {
        throw std::out_of_range("write_sampled_ids: token index " + std::to_string(t) +
                                " is outside the step's " + std::to_string(input_ids.numel()));
      }
      const int32_t id = latest.at(static_cast<size_t>(pairs_[2 * p + 1])).token_id;
      auto* dst = input_ids.ptr<int32_t>() + t;
      backend_.copy_from_host(Tensor(dst, DType::kI32, {1}, input_ids.device), &id);
    }
  }

  // Scored at once (score_tokens checks the rows): on the CPU backend in place, else from a
  // host copy.
  void launch_scores(const Tensor& logits, std::span<const int> token_ids,
                     std::span<const int> num_top) override {
    if (scores_.size() >= 2) {
      throw std::logic_error(
          "HostLogitsSampler::launch_scores: two are outstanding; collect_scores()");
    }
    if (logits.size(0) != static_cast<int64_t>(token_ids.size())) {
      throw std::invalid_argument(
          "HostLogitsSampler::launch_scores: " + std::to_string(logits.size(0)) +
          " rows of logits for " + std::to_string(token_ids.size()) + " token ids");
    }
    const float* values = logits.ptr<float>();
    if (logits.device != DeviceType::kCpu) {
      const auto num_values = static_cast<size_t>(logits.numel());
      if (host_logits_.size() < num_values) host_logits_.resize(num_values);
      backend_.copy_to_host(host_logits_.data(), logits);
      values = host_logits_.data();
    }
    scores_.push_back(score_tokens(values, static_cast<int>(logits.size(1)), token_ids, num_top));
  }

  std::vector<TokenLogprobs> collect_scores() override {
    if (scores_.empty()) {
      throw std::logic_error("HostLogitsSampler::collect_scores: nothing launched");
    }
    std::vector<TokenLogprobs> oldest = std::move(scores_.front());
    scores_.pop_front();
    return oldest;
  }

 private:
  Backend& backend_;
  std::vector<float> host_logits_;
  Sampler sampler_;
  std::deque<std::vector<SampleResult>> results_;  // one per launch not yet collected
  std::deque<std::vector<TokenLogprobs>> scores_;  // one per launch_scores not yet collected
  std::vector<int32_t> pairs_;
  std::vector<SamplingRow> resolved_rows_;
  std::vector<std::vector<int>> resolved_outputs_;
};

}  // namespace

std::unique_ptr<LogitsSampler> make_logits_sampler(Backend& backend, int max_rows,
                                                   int max_score_rows, int vocab_size) {
#ifdef EMBER_WITH_CUDA
  if (backend.device_type() == DeviceType::kCuda) {
    return make_cuda_logits_sampler(backend, max_rows, max_score_rows, vocab_size);
  }
#endif
  return std::make_unique<HostLogitsSampler>(backend, max_rows, vocab_size);
}

}  // namespace engine
