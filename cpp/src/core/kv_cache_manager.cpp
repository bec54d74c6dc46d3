#include "core/kv_cache_manager.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "core/mix.h"

namespace engine {

namespace {

// Parent of a sequence's first block: any fixed value works, as long as it never changes
// between runs (hashes must be reproducible across processes and platforms).
constexpr BlockHash kRootParentHash = 0x6a09e667f3bcc908ULL;

int ceil_div(int a, int b) { return (a + b - 1) / b; }

}  // namespace

BlockHash hash_block(BlockHash parent, const int* token_ids, int num_tokens, uint64_t salt) {
  // std::hash is not specified across platforms or library versions; prefix-cache hashes
  // are instead a fixed multiply-xorshift over 32-bit token ids, chained and finalized.
  uint64_t h = mix64(parent ^ 0x9e3779b97f4a7c15ULL) ^ mix64(salt + 0x3c6ef372fe94f82bULL);
  for (int i = 0; i < num_tokens; ++i) {
    h ^= static_cast<uint32_t>(token_ids[i]);
    h *= 0x100000001b3ULL;  // the 64-bit FNV prime
    h ^= h >> 29;
  }
  return mix64(h ^ static_cast<uint64_t>(num_tokens));
}

KVCacheManager::KVCacheManager(int num_blocks, int block_size, bool enable_caching)
    : block_size_(block_size), enable_caching_(enable_caching), pool_(num_blocks, enable_caching) {
  if (block_size < 1) {
    throw std::invalid_argument("KVCacheManager needs block_size >= 1, got " +
                                std::to_string(block_size));
  }
}

int KVCacheManager::block_size() const { return block_size_; }

const BlockPool& KVCacheManager::block_pool() const { return pool_; }

BlockPool& KVCacheManager::block_pool() { return pool_; }

ComputedBlocks KVCacheManager::get_computed_blocks(const Request& request) {
  ComputedBlocks computed;
  if (!enable_caching_ || request.num_tokens() == 0) return computed;
  // Capping at num_tokens - 1 keeps at least one token to compute, so the step has logits.
  const int max_hit_blocks = (request.num_tokens() - 1) / block_size_;
  SeqBlocks& seq = seqs_[request.seq_id];
  extend_hashes(request, seq, max_hit_blocks);
  for (int i = 0; i < max_hit_blocks; ++i) {
    std::optional<int> block_id = pool_.get_cached_block(seq.hashes[i]);
    if (!block_id) break;
    computed.block_ids.push_back(*block_id);
  }
  computed.num_tokens = static_cast<int>(computed.block_ids.size()) * block_size_;
  return computed;
}

bool KVCacheManager::can_allocate(const Request& request, int num_new_tokens,
                                  const ComputedBlocks& computed) const {
  auto it = seqs_.find(request.seq_id);
  const int num_table_blocks =
      it == seqs_.end() ? 0 : static_cast<int>(it->second.block_ids.size());
  const int num_hit_blocks =
      num_table_blocks == 0 ? static_cast<int>(computed.block_ids.size()) : 0;
  const int num_needed =
      ceil_div(request.num_computed_tokens + computed.num_tokens + num_new_tokens, block_size_);
  const int num_new_blocks = std::max(0, num_needed - num_table_blocks - num_hit_blocks);
  // A hit block nobody references sits on the free list; reviving it takes it off, so it
  // competes with the new blocks for the same free slots.
  int num_revived = 0;
  if (num_hit_blocks > 0) {
    for (int id : computed.block_ids) num_revived += pool_.ref_count(id) == 0 ? 1 : 0;
  }
  return num_new_blocks + num_revived <= pool_.num_free_blocks();
}

std::optional<std::vector<int>> KVCacheManager::allocate_slots(Request& request, int num_new_tokens,
                                                               const ComputedBlocks& computed) {
  if (!can_allocate(request, num_new_tokens, computed)) return std::nullopt;
  SeqBlocks& seq = seqs_[request.seq_id];
  if (!computed.block_ids.empty()) {
    if (!seq.block_ids.empty()) {
      throw std::logic_error("allocate_slots: a prefix hit was passed for sequence " +
                             std::to_string(request.seq_id) +
                             " which already has blocks; pass it only at first scheduling");
    }
    // Touch before taking new blocks, so the hit blocks cannot be evicted by this allocation.
    pool_.touch(computed.block_ids);
    seq.block_ids = computed.block_ids;
    seq.num_cached_blocks = static_cast<int>(computed.block_ids.size());
  }
  const int num_needed =
      ceil_div(request.num_computed_tokens + computed.num_tokens + num_new_tokens, block_size_);
  const int num_new_blocks = std::max(0, num_needed - static_cast<int>(seq.block_ids.size()));
  std::vector<int> new_ids = pool_.get_new_blocks(num_new_blocks);
  seq.block_ids.insert(seq.block_ids.end(), new_ids.begin(), new_ids.end());
  return new_ids;
}

void KVCacheManager::cache_full_blocks(const Request& request, int num_computed_tokens) {
  if (!enable_caching_) return;
  auto it = seqs_.find(request.seq_id);
  if (it == seqs_.end()) return;
  SeqBlocks& seq = it->second;
  const int num_known = std::min(num_computed_tokens, request.num_tokens());
  const int num_full = std::min(num_known / block_size_, static_cast<int>(seq.block_ids.size()));
  if (num_full <= seq.num_cached_blocks) return;
  extend_hashes(request, seq, num_full);
  for (int i = seq.num_cached_blocks; i < num_full; ++i) {
    pool_.cache_full_block(seq.block_ids[i], seq.hashes[i]);
  }
  seq.num_cached_blocks = num_full;
}

void KVCacheManager::free(const Request& request) {
  auto it = seqs_.find(request.seq_id);
  if (it == seqs_.end()) return;
  std::vector<int> tail_first(it->second.block_ids.rbegin(), it->second.block_ids.rend());
  pool_.free_blocks(tail_first);
  seqs_.erase(it);
}

const std::vector<int>& KVCacheManager::block_ids(SeqId seq_id) const {
  static const std::vector<int> kNoBlocks;
  auto it = seqs_.find(seq_id);
  return it == seqs_.end() ? kNoBlocks : it->second.block_ids;
}

void KVCacheManager::extend_hashes(const Request& request, SeqBlocks& seq,
                                   int num_full_blocks) const {
  // Token ids only ever grow (prompt, then outputs), so a full block's hash never changes
  // and the chain computed so far stays valid.
  for (int i = static_cast<int>(seq.hashes.size()); i < num_full_blocks; ++i) {
    const BlockHash parent = i == 0 ? kRootParentHash : seq.hashes[i - 1];
    seq.hashes.push_back(hash_block(parent, request.token_ids.data() + i * block_size_, block_size_,
                                    request.cache_salt));
  }
}

}  // namespace engine
