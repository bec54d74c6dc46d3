#include "runtime/logits_sampler.h"

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
    results_ = sampler_.sample(host_logits_.data(), static_cast<int>(logits.size(1)), rows);
  }

  std::vector<SampleResult> collect() override { return std::move(results_); }

 private:
  Backend& backend_;
  std::vector<float> host_logits_;
  Sampler sampler_;
  std::vector<SampleResult> results_;
};

}  // namespace

std::unique_ptr<LogitsSampler> make_logits_sampler(Backend& backend, int max_rows, int vocab_size) {
#ifdef EMBER_WITH_CUDA
  if (backend.device_type() == DeviceType::kCuda) {
    return make_cuda_logits_sampler(backend, max_rows, vocab_size);
  }
#endif
  return std::make_unique<HostLogitsSampler>(backend, max_rows, vocab_size);
}

}  // namespace engine
