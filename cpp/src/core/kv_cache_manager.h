#pragma once
// KVCacheManager keeps each sequence's block table and does automatic prefix caching: every
// full block of a sequence is hashed, chained to its parent block's hash (and the sequence's
// cache salt), so equal prefixes map to equal hash chains and share blocks.

#include <unordered_map>
#include <vector>

#include "core/block_pool.h"
#include "core/request.h"

namespace engine {

struct ComputedBlocks {
  std::vector<int> block_ids;  // cached blocks that hold the request's prefix, in order
  int num_tokens = 0;          // tokens they cover (block_ids.size() * block_size)
};

class KVCacheManager {
 public:
  KVCacheManager(int num_blocks, int block_size, bool enable_caching);

  int block_size() const;
  const BlockPool& block_pool() const;
  BlockPool& block_pool();

  // The longest cached prefix of a waiting request, in whole blocks. At least one token is
  // always left to compute (a fully cached prompt recomputes its last block), so that the
  // step produces logits. Does not take references.
  ComputedBlocks get_computed_blocks(const Request& request);

  // Can the request get blocks for num_new_tokens more tokens beyond num_computed_tokens
  // (plus the given prefix hit, for a request not yet running)?
  bool can_allocate(const Request& request, int num_new_tokens,
                    const ComputedBlocks& computed = {}) const;
  // Takes references on the prefix hit (first scheduling only) and allocates new blocks so
  // that tokens [0, num_computed + num_new) have slots. Returns the newly allocated block
  // ids (not those of the prefix hit), or nothing if there are not enough free blocks.
  std::optional<std::vector<int>> allocate_slots(Request& request, int num_new_tokens,
                                                 const ComputedBlocks& computed = {});
  // Registers the hashes of the request's blocks that became full once num_computed_tokens
  // tokens have their KV (call after a step).
  void cache_full_blocks(const Request& request, int num_computed_tokens);
  // Releases the request's blocks (tail first) and forgets its table.
  void free(const Request& request);

  const std::vector<int>& block_ids(SeqId seq_id) const;

 private:
  struct SeqBlocks {
    std::vector<int> block_ids;
    std::vector<BlockHash> hashes;   // of its full blocks, in order (computed lazily)
    int num_cached_blocks = 0;       // leading blocks already registered in the pool
  };
  void extend_hashes(const Request& request, SeqBlocks& seq, int num_full_blocks) const;

  int block_size_;
  bool enable_caching_;
  BlockPool pool_;
  std::unordered_map<SeqId, SeqBlocks> seqs_;
};

// Hash of one full block: its token ids chained to the parent block's hash and the salt.
BlockHash hash_block(BlockHash parent, const int* token_ids, int num_tokens, uint64_t salt);

}  // namespace engine
