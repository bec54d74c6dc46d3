#pragma once
// DecodeGraphs: the CUDA graphs of pure decode steps, one per batch-size bucket, captured at
// start. A decode step of B sequences replays the smallest bucket >= B with the batch padded by
// dummy rows (token 0 at position 0, written to the null block), so a handful of graphs cover
// every batch size up to the largest bucket.

#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "backend/backend.h"

namespace engine {

// 1, 2, 4, then every multiple of 8 up to max_batch (vLLM's default capture sizes), and
// max_batch itself.
std::vector<int> decode_graph_batch_sizes(int max_batch);

class DecodeGraphs {
 public:
  // inputs: where the step's pending-token pairs start on the device, after every array the
  // graph reads (StepInputs packs them last); replay checks it is unchanged, so the arrays
  // before it have the sizes and addresses the graph recorded.
  void add(int batch_size, std::unique_ptr<CapturedGraph> graph, const void* inputs);
  // The smallest captured batch size >= num_seqs, if any.
  std::optional<int> bucket_for(int num_seqs) const;
  void replay(int batch_size, const void* inputs);
  std::vector<int> batch_sizes() const;
  bool empty() const { return graphs_.empty(); }

 private:
  struct Entry {
    std::unique_ptr<CapturedGraph> graph;
    const void* inputs;
  };
  std::map<int, Entry> graphs_;
};

}  // namespace engine
