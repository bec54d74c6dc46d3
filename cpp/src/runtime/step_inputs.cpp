#include "runtime/step_inputs.h"

#include <stdexcept>
#include <string>

namespace engine {
namespace {

enum Array {
  kInputIds,
  kPositions,
  kSlotMapping,
  kLogitsIndices,
  kQueryStartLoc,
  kSeqLens,
  kBlockTable,
  kPendingTokens,
  kNumArrays
};

size_t total_elements(int tokens, int seqs, int logits, int width) {
  return 3 * size_t(tokens) + size_t(logits) + 2 * size_t(seqs) + 1 + size_t(seqs) * width +
         2 * size_t(seqs);
}

}  // namespace

StepInputs::StepInputs(Backend& backend, int max_tokens, int max_seqs, int max_width,
                       int max_logits)
    : backend_(backend),
      max_tokens_(max_tokens),
      max_seqs_(max_seqs),
      max_width_(max_width),
      max_logits_(max_logits > 0 ? max_logits : max_seqs) {
  const size_t bytes =
      total_elements(max_tokens, max_seqs, max_logits_, max_width) * sizeof(int32_t);
  host_[0] = backend.allocate_host(bytes);
  host_[1] = backend.allocate_host(bytes);
  device_ = backend.allocate(bytes);
}

HostStepArrays StepInputs::begin(const StepShape& shape) {
  if (shape.num_tokens > max_tokens_ || shape.num_seqs > max_seqs_ ||
      shape.num_logits > max_logits_ || shape.block_table_width > max_width_ ||
      shape.num_pending < 0 || shape.num_pending > shape.num_seqs) {
    throw std::logic_error(
        "step of " + std::to_string(shape.num_tokens) + " tokens, " +
        std::to_string(shape.num_seqs) + " sequences, " + std::to_string(shape.num_logits) +
        " logits rows, block tables " + std::to_string(shape.block_table_width) + " wide and " +
        std::to_string(shape.num_pending) + " pending tokens exceeds the step buffers");
  }
  shape_ = shape;
  writing_index_ = uploaded_index_ ^ 1;
  const size_t sizes[kNumArrays] = {size_t(shape.num_tokens),
                                    size_t(shape.num_tokens),
                                    size_t(shape.num_tokens),
                                    size_t(shape.num_logits),
                                    size_t(shape.num_seqs) + 1,
                                    size_t(shape.num_seqs),
                                    size_t(shape.num_seqs) * shape.block_table_width,
                                    2 * size_t(shape.num_pending)};
  offsets_[0] = 0;
  for (int a = 0; a < kNumArrays; ++a) offsets_[a + 1] = offsets_[a] + sizes[a];
  auto* base = static_cast<int32_t*>(host_[writing_index_].data());
  return HostStepArrays{base + offsets_[kInputIds],      base + offsets_[kPositions],
                        base + offsets_[kSlotMapping],   base + offsets_[kLogitsIndices],
                        base + offsets_[kQueryStartLoc], base + offsets_[kSeqLens],
                        base + offsets_[kBlockTable],    base + offsets_[kPendingTokens]};
}

DeviceStepArrays StepInputs::upload() {
  const int64_t total = static_cast<int64_t>(offsets_[kNumArrays]);
  const DeviceType device = backend_.device_type();
  auto* base = static_cast<int32_t*>(device_.data());
  backend_.copy_from_host_async(Tensor(base, DType::kI32, {total}, device),
                                host_[writing_index_].data());
  uploaded_index_ = writing_index_;
  auto array = [&](int a) {
    return Tensor(base + offsets_[a], DType::kI32,
                  {static_cast<int64_t>(offsets_[a + 1] - offsets_[a])}, device);
  };
  DeviceStepArrays out;
  out.input_ids = array(kInputIds);
  out.positions = array(kPositions);
  out.slot_mapping = array(kSlotMapping);
  out.logits_indices = array(kLogitsIndices);
  out.query_start_loc = array(kQueryStartLoc);
  out.seq_lens = array(kSeqLens);
  out.block_table = array(kBlockTable).view({shape_.num_seqs, shape_.block_table_width});
  out.pending_tokens = array(kPendingTokens).view({shape_.num_pending, 2});
  return out;
}

}  // namespace engine
