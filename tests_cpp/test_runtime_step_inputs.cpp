// StepInputs (packed, page-locked step arrays) and the decode-graph bucket sizes, on the CPU
// backend.

#include "runtime/step_inputs.h"

#include <gtest/gtest.h>

#include "runtime/decode_graphs.h"

namespace engine {
namespace {

TEST(StepInputs, PacksTheArraysOfAStepBackToBack) {
  auto backend = make_cpu_backend(1);
  StepInputs inputs(*backend, /*max_tokens=*/16, /*max_seqs=*/4, /*max_width=*/3);
  const StepShape shape{5, 2, 2, 3};  // T, B, S, W
  HostStepArrays host = inputs.begin(shape);
  for (int t = 0; t < 5; ++t) {
    host.input_ids[t] = 100 + t;
    host.positions[t] = 200 + t;
    host.slot_mapping[t] = 300 + t;
  }
  host.logits_indices[0] = 2, host.logits_indices[1] = 4;
  for (int i = 0; i < 3; ++i) host.query_start_loc[i] = i * 2 + (i == 2);
  host.seq_lens[0] = 7, host.seq_lens[1] = 9;
  for (int i = 0; i < 6; ++i) host.block_table[i] = 10 + i;
  const DeviceStepArrays device = inputs.upload();

  EXPECT_EQ(device.input_ids.ptr<int32_t>()[4], 104);
  EXPECT_EQ(device.positions.ptr<int32_t>()[0], 200);
  EXPECT_EQ(device.slot_mapping.ptr<int32_t>()[2], 302);
  EXPECT_EQ(device.logits_indices.ptr<int32_t>()[1], 4);
  EXPECT_EQ(device.query_start_loc.ptr<int32_t>()[2], 5);
  EXPECT_EQ(device.seq_lens.ptr<int32_t>()[1], 9);
  EXPECT_EQ(device.block_table.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(device.block_table.ptr<int32_t>()[5], 15);
  // Packed in this order, with nothing between them.
  EXPECT_EQ(device.positions.ptr<int32_t>(), device.input_ids.ptr<int32_t>() + 5);
  EXPECT_EQ(device.slot_mapping.ptr<int32_t>(), device.positions.ptr<int32_t>() + 5);
  EXPECT_EQ(device.logits_indices.ptr<int32_t>(), device.slot_mapping.ptr<int32_t>() + 5);
  EXPECT_EQ(device.query_start_loc.ptr<int32_t>(), device.logits_indices.ptr<int32_t>() + 2);
  EXPECT_EQ(device.seq_lens.ptr<int32_t>(), device.query_start_loc.ptr<int32_t>() + 3);
  EXPECT_EQ(device.block_table.ptr<int32_t>(), device.seq_lens.ptr<int32_t>() + 2);
}

TEST(StepInputs, StepsOfOneShapeReuseTheSameAddresses) {
  auto backend = make_cpu_backend(1);
  StepInputs inputs(*backend, 16, 4, 3);
  const StepShape shape{4, 4, 4, 3};
  inputs.begin(shape);
  const DeviceStepArrays first = inputs.upload();
  inputs.begin({9, 2, 1, 2});
  inputs.upload();
  inputs.begin(shape);
  const DeviceStepArrays again = inputs.upload();
  EXPECT_EQ(first.input_ids.data, again.input_ids.data);
  EXPECT_EQ(first.block_table.data, again.block_table.data);
  EXPECT_EQ(first.seq_lens.data, again.seq_lens.data);
}

TEST(StepInputs, RejectsAStepLargerThanItsBuffers) {
  auto backend = make_cpu_backend(1);
  StepInputs inputs(*backend, 16, 4, 3);
  EXPECT_THROW(inputs.begin({17, 1, 1, 1}), std::logic_error);
  EXPECT_THROW(inputs.begin({4, 5, 1, 1}), std::logic_error);
  EXPECT_THROW(inputs.begin({4, 4, 5, 1}), std::logic_error);
  EXPECT_THROW(inputs.begin({4, 4, 4, 4}), std::logic_error);
  EXPECT_THROW(inputs.begin({4, 2, 2, 3, 3}), std::logic_error);  // more pending than sequences
}

// The pending-token pairs come last: a graph captured without them reads the same addresses.
TEST(StepInputs, PendingTokensComeLastAndMoveNothing) {
  auto backend = make_cpu_backend(1);
  StepInputs inputs(*backend, 16, 4, 3);
  inputs.begin({4, 4, 4, 3});
  const DeviceStepArrays without = inputs.upload();
  HostStepArrays host = inputs.begin({4, 4, 4, 3, 2});
  for (int i = 0; i < 4; ++i) host.pending_tokens[i] = 40 + i;
  const DeviceStepArrays with = inputs.upload();
  EXPECT_EQ(with.input_ids.data, without.input_ids.data);
  EXPECT_EQ(with.block_table.data, without.block_table.data);
  EXPECT_EQ(with.pending_tokens.shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(with.pending_tokens.ptr<int32_t>(), with.block_table.ptr<int32_t>() + 12);
  EXPECT_EQ(with.pending_tokens.ptr<int32_t>()[3], 43);
  EXPECT_EQ(without.pending_tokens.numel(), 0);
}

// The engine writes a step's arrays while the one before may still be uploading: consecutive
// steps get different host buffers, every other step the same one.
TEST(StepInputs, ConsecutiveStepsWriteDifferentHostBuffers) {
  auto backend = make_cpu_backend(1);
  StepInputs inputs(*backend, 16, 4, 3);
  const StepShape shape{4, 4, 4, 3};
  int32_t* first = inputs.begin(shape).input_ids;
  inputs.upload();
  int32_t* second = inputs.begin(shape).input_ids;
  inputs.upload();
  int32_t* third = inputs.begin(shape).input_ids;
  EXPECT_NE(first, second);
  EXPECT_EQ(first, third);
}

// A step that fails between begin() and upload() (its inputs could not be written) uploads
// nothing: the next step must still avoid the buffer of the last step uploaded, whose copy may
// be queued.
TEST(StepInputs, AStepNeverUploadedDoesNotTurnTheBuffers) {
  auto backend = make_cpu_backend(1);
  StepInputs inputs(*backend, 16, 4, 3);
  const StepShape shape{4, 4, 4, 3};
  int32_t* uploaded = inputs.begin(shape).input_ids;
  inputs.upload();
  int32_t* failed = inputs.begin(shape).input_ids;  // never uploaded
  int32_t* next = inputs.begin(shape).input_ids;
  EXPECT_NE(failed, uploaded);
  EXPECT_NE(next, uploaded);
  EXPECT_EQ(next, failed);
}

TEST(DecodeGraphs, BatchSizesAreOneTwoFourThenMultiplesOfEight) {
  EXPECT_EQ(decode_graph_batch_sizes(1), (std::vector<int>{1}));
  EXPECT_EQ(decode_graph_batch_sizes(3), (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(decode_graph_batch_sizes(8), (std::vector<int>{1, 2, 4, 8}));
  EXPECT_EQ(decode_graph_batch_sizes(20), (std::vector<int>{1, 2, 4, 8, 16, 20}));
  EXPECT_EQ(decode_graph_batch_sizes(32), (std::vector<int>{1, 2, 4, 8, 16, 24, 32}));
}

// A stand-in graph that counts its replays.
class CountingGraph final : public CapturedGraph {
 public:
  explicit CountingGraph(int* count) : count_(count) {}
  void replay() override { ++*count_; }

 private:
  int* count_;
};

TEST(DecodeGraphs, ReplaysTheSmallestBucketThatHoldsTheBatch) {
  DecodeGraphs graphs;
  int replays[3] = {};
  int inputs = 0;
  graphs.add(1, std::make_unique<CountingGraph>(&replays[0]), &inputs);
  graphs.add(4, std::make_unique<CountingGraph>(&replays[1]), &inputs);
  graphs.add(8, std::make_unique<CountingGraph>(&replays[2]), &inputs);
  EXPECT_EQ(graphs.bucket_for(1), 1);
  EXPECT_EQ(graphs.bucket_for(2), 4);
  EXPECT_EQ(graphs.bucket_for(8), 8);
  EXPECT_EQ(graphs.bucket_for(9), std::nullopt);
  graphs.replay(4, &inputs);
  EXPECT_EQ(replays[1], 1);
  int elsewhere = 0;
  EXPECT_THROW(graphs.replay(4, &elsewhere), std::logic_error);
  EXPECT_THROW(graphs.replay(2, &inputs), std::logic_error);
}

}  // namespace
}  // namespace engine
