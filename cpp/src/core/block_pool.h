#pragma once
// BlockPool owns the KV-cache blocks' bookkeeping: reference counts, the free list in LRU
// order (O(1) removal from the middle, so a prefix hit can revive a free cached block), and
// the hash -> block map of full blocks for prefix caching. It knows nothing of requests.
//
// Block 0 is the reserved null block: never handed out, usable as padding by the runner.
// A free block keeps its hash (and stays findable) until it is handed out again: eviction
// happens lazily, in LRU order, when get_new_blocks() takes it from the free list's head.

#include <cstdint>
#include <optional>
#include <unordered_map>
#include <vector>

namespace engine {

using BlockHash = uint64_t;

class BlockPool {
 public:
  static constexpr int kNullBlockId = 0;

  BlockPool(int num_blocks, bool enable_caching);

  int num_blocks() const;        // including the null block
  int num_free_blocks() const;   // blocks with reference count 0 (cached or not)
  double usage() const;          // fraction of allocatable blocks in use

  // Pops n blocks from the free list's head (least recently freed first), evicting any
  // cached hash they carry, and sets their reference count to 1. Requires n <= free blocks.
  std::vector<int> get_new_blocks(int n);
  // Increments reference counts; a block at 0 is taken off the free list (a prefix hit).
  void touch(const std::vector<int>& block_ids);
  // Decrements reference counts in the given order; blocks reaching 0 are appended to the
  // free list's tail in that order (so callers pass a request's blocks tail first, and its
  // last blocks are evicted before the prefix shared by others).
  void free_blocks(const std::vector<int>& block_ids);

  std::optional<int> get_cached_block(BlockHash hash) const;
  // Registers a full block under its hash. The first block cached under a hash wins; a later
  // duplicate is left unregistered (it is freed and reused as an ordinary block).
  void cache_full_block(int block_id, BlockHash hash);
  // Drops every hash; fails (returns false) while any block is in use.
  bool reset_prefix_cache();

  int ref_count(int block_id) const;
  std::optional<BlockHash> block_hash(int block_id) const;
  std::vector<int> free_list() const;  // head (next to evict) first; for tests

 private:
  struct Block {
    int ref_count = 0;
    std::optional<BlockHash> hash;
    int prev_free = -1;  // intrusive doubly linked free list
    int next_free = -1;
    bool in_free_list = false;
  };
  void push_free_tail(int block_id);
  void remove_free(int block_id);
  int pop_free_head();

  std::vector<Block> blocks_;
  int free_head_ = -1;
  int free_tail_ = -1;
  int num_free_ = 0;
  bool enable_caching_;
  std::unordered_map<BlockHash, int> cached_;
};

}  // namespace engine
