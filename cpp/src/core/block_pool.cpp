#include "core/block_pool.h"

#include <stdexcept>
#include <string>

namespace engine {

BlockPool::BlockPool(int num_blocks, bool enable_caching)
    : blocks_(num_blocks > 0 ? num_blocks : 0), enable_caching_(enable_caching) {
  if (num_blocks < 2) {
    throw std::invalid_argument(
        "BlockPool needs num_blocks >= 2 (block 0 is the null block), got " +
        std::to_string(num_blocks));
  }
  for (int id = 1; id < num_blocks; ++id) push_free_tail(id);
}

int BlockPool::num_blocks() const { return static_cast<int>(blocks_.size()); }

int BlockPool::num_free_blocks() const { return num_free_; }

double BlockPool::usage() const {
  const int num_allocatable = num_blocks() - 1;
  return 1.0 - static_cast<double>(num_free_) / num_allocatable;
}

std::vector<int> BlockPool::get_new_blocks(int n) {
  if (n < 0 || n > num_free_) {
    throw std::invalid_argument("get_new_blocks: asked for " + std::to_string(n) +
                                " blocks but only " + std::to_string(num_free_) + " are free");
  }
  std::vector<int> ids;
  ids.reserve(n);
  for (int i = 0; i < n; ++i) {
    const int id = pop_free_head();
    Block& block = blocks_[id];
    // Lazy eviction: the block's old content is about to be overwritten, so its hash must no
    // longer lead prefix lookups to it.
    if (block.hash) {
      auto it = cached_.find(*block.hash);
      if (it != cached_.end() && it->second == id) cached_.erase(it);
      block.hash.reset();
    }
    block.ref_count = 1;
    ids.push_back(id);
  }
  return ids;
}

void BlockPool::touch(const std::vector<int>& block_ids) {
  for (int id : block_ids) {
    if (id <= kNullBlockId || id >= num_blocks()) {
      throw std::out_of_range("touch: block id " + std::to_string(id) + " is not in [1, " +
                              std::to_string(num_blocks()) + ")");
    }
    Block& block = blocks_[id];
    if (block.ref_count == 0) remove_free(id);
    ++block.ref_count;
  }
}

void BlockPool::free_blocks(const std::vector<int>& block_ids) {
  for (int id : block_ids) {
    if (id <= kNullBlockId || id >= num_blocks()) {
      throw std::out_of_range("free_blocks: block id " + std::to_string(id) + " is not in [1, " +
                              std::to_string(num_blocks()) + ")");
    }
    Block& block = blocks_[id];
    if (block.ref_count <= 0) {
      throw std::logic_error("free_blocks: block " + std::to_string(id) +
                             " is already free (reference count 0)");
    }
    if (--block.ref_count == 0) push_free_tail(id);
  }
}

std::optional<int> BlockPool::get_cached_block(BlockHash hash) const {
  if (!enable_caching_) return std::nullopt;
  auto it = cached_.find(hash);
  if (it == cached_.end()) return std::nullopt;
  return it->second;
}

void BlockPool::cache_full_block(int block_id, BlockHash hash) {
  if (!enable_caching_) return;
  if (block_id <= kNullBlockId || block_id >= num_blocks()) {
    throw std::out_of_range("cache_full_block: block id " + std::to_string(block_id) +
                            " is not in [1, " + std::to_string(num_blocks()) + ")");
  }
  Block& block = blocks_[block_id];
  if (block.hash) return;
  if (!cached_.emplace(hash, block_id).second) return;
  block.hash = hash;
}

bool BlockPool::reset_prefix_cache() {
  if (num_free_ != num_blocks() - 1) return false;
  cached_.clear();
  for (Block& block : blocks_) block.hash.reset();
  return true;
}

int BlockPool::ref_count(int block_id) const { return blocks_.at(block_id).ref_count; }

std::optional<BlockHash> BlockPool::block_hash(int block_id) const {
  return blocks_.at(block_id).hash;
}

std::vector<int> BlockPool::free_list() const {
  std::vector<int> ids;
  ids.reserve(num_free_);
  for (int id = free_head_; id != -1; id = blocks_[id].next_free) ids.push_back(id);
  return ids;
}

void BlockPool::push_free_tail(int block_id) {
  Block& block = blocks_[block_id];
  block.prev_free = free_tail_;
  block.next_free = -1;
  block.in_free_list = true;
  if (free_tail_ == -1) {
    free_head_ = block_id;
  } else {
    blocks_[free_tail_].next_free = block_id;
  }
  free_tail_ = block_id;
  ++num_free_;
}

void BlockPool::remove_free(int block_id) {
  Block& block = blocks_[block_id];
  if (!block.in_free_list) {
    throw std::logic_error("block " + std::to_string(block_id) +
                           " has reference count 0 but is not on the free list");
  }
  if (block.prev_free == -1) {
    free_head_ = block.next_free;
  } else {
    blocks_[block.prev_free].next_free = block.next_free;
  }
  if (block.next_free == -1) {
    free_tail_ = block.prev_free;
  } else {
    blocks_[block.next_free].prev_free = block.prev_free;
  }
  block.prev_free = -1;
  block.next_free = -1;
  block.in_free_list = false;
  --num_free_;
}

int BlockPool::pop_free_head() {
  const int id = free_head_;
  remove_free(id);
  return id;
}

}  // namespace engine
