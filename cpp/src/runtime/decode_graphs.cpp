#include "runtime/decode_graphs.h"

#include <stdexcept>
#include <string>

namespace engine {

std::vector<int> decode_graph_batch_sizes(int max_batch) {
  std::vector<int> sizes;
  for (int size : {1, 2, 4}) {
    if (size <= max_batch) sizes.push_back(size);
  }
  for (int size = 8; size <= max_batch; size += 8) sizes.push_back(size);
  if (max_batch > 0 && sizes.back() != max_batch) sizes.push_back(max_batch);
  return sizes;
}

void DecodeGraphs::add(int batch_size, std::unique_ptr<CapturedGraph> graph, const void* inputs) {
  graphs_[batch_size] = Entry{std::move(graph), inputs};
}

std::optional<int> DecodeGraphs::bucket_for(int num_seqs) const {
  auto it = graphs_.lower_bound(num_seqs);
  if (it == graphs_.end()) return std::nullopt;
  return it->first;
}

void DecodeGraphs::replay(int batch_size, const void* inputs) {
  auto it = graphs_.find(batch_size);
  if (it == graphs_.end()) {
    throw std::logic_error("no decode graph for batch size " + std::to_string(batch_size));
  }
  if (it->second.inputs != inputs) {
    throw std::logic_error("decode graph for batch size " + std::to_string(batch_size) +
                           " was captured with its inputs at another address");
  }
  it->second.graph->replay();
}

std::vector<int> DecodeGraphs::batch_sizes() const {
  std::vector<int> sizes;
  for (const auto& [size, entry] : graphs_) sizes.push_back(size);
  return sizes;
}

}  // namespace engine
