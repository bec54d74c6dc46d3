#include "core/kv_cache_manager.h"

#include <gtest/gtest.h>

#include <numeric>
#include <stdexcept>
#include <vector>

namespace engine {
namespace {

using Ids = std::vector<int>;
constexpr int kBlockSize = 4;

Request make_request(SeqId seq_id, std::vector<int> tokens, uint64_t salt = 0) {
  Request request;
  request.seq_id = seq_id;
  request.num_prompt_tokens = static_cast<int>(tokens.size());
  request.token_ids = std::move(tokens);
  request.cache_salt = salt;
  return request;
}

std::vector<int> iota_tokens(int n, int first = 0) {
  std::vector<int> tokens(n);
  std::iota(tokens.begin(), tokens.end(), first);
  return tokens;
}

// Schedules the whole request at once and marks it computed, as one prefill step would.
Ids prefill(KVCacheManager& kv, Request& request) {
  ComputedBlocks hit = kv.get_computed_blocks(request);
  auto new_ids = kv.allocate_slots(request, request.num_tokens() - hit.num_tokens, hit);
  EXPECT_TRUE(new_ids.has_value());
  request.num_computed_tokens = request.num_tokens();
  kv.cache_full_blocks(request, request.num_computed_tokens);
  return new_ids.value_or(Ids{});
}

TEST(HashBlock, IsDeterministicChainedAndSalted) {
  const std::vector<int> tokens = {1, 2, 3, 4};
  const BlockHash h = hash_block(0, tokens.data(), 4, 0);
  // Pinned: hashes must not change between runs, platforms or releases.
  EXPECT_EQ(h, 0x858d70af1c47e2cbULL);
  EXPECT_EQ(hash_block(0, tokens.data(), 4, 0), h);
  EXPECT_NE(hash_block(1, tokens.data(), 4, 0), h);
  EXPECT_NE(hash_block(0, tokens.data(), 4, 1), h);
  EXPECT_NE(hash_block(0, tokens.data(), 3, 0), h);
  const std::vector<int> swapped = {2, 1, 3, 4};
  EXPECT_NE(hash_block(0, swapped.data(), 4, 0), h);
}

TEST(KVCacheManager, AllocatesOnlyNewBlocksAsTheSequenceGrows) {
  KVCacheManager kv(8, kBlockSize, true);
  Request a = make_request(1, iota_tokens(10));
  EXPECT_EQ(kv.allocate_slots(a, 4), Ids{1});
  a.num_computed_tokens = 4;
  EXPECT_EQ(kv.allocate_slots(a, 3), Ids{2});
  a.num_computed_tokens = 7;
  EXPECT_EQ(kv.allocate_slots(a, 1), Ids{});  // token 7 still fits block 2
  a.num_computed_tokens = 8;
  EXPECT_EQ(kv.allocate_slots(a, 2), Ids{3});
  EXPECT_EQ(kv.block_ids(1), (Ids{1, 2, 3}));
  EXPECT_EQ(kv.block_pool().num_free_blocks(), 4);
}

TEST(KVCacheManager, FailedAllocationTakesNothing) {
  KVCacheManager kv(3, kBlockSize, true);  // blocks 1, 2
  Request a = make_request(1, iota_tokens(9));
  EXPECT_FALSE(kv.can_allocate(a, 9));
  EXPECT_EQ(kv.allocate_slots(a, 9), std::nullopt);
  EXPECT_EQ(kv.block_pool().num_free_blocks(), 2);
  EXPECT_EQ(kv.block_ids(1), Ids{});
  EXPECT_EQ(kv.allocate_slots(a, 8), (Ids{1, 2}));
}

TEST(KVCacheManager, PrefixHitAcrossTwoRequests) {
  KVCacheManager kv(10, kBlockSize, true);
  Request a = make_request(1, iota_tokens(10));
  EXPECT_EQ(prefill(kv, a), (Ids{1, 2, 3}));

  std::vector<int> b_tokens = iota_tokens(8);
  b_tokens.insert(b_tokens.end(), {100, 101, 102});
  Request b = make_request(2, b_tokens);
  ComputedBlocks hit = kv.get_computed_blocks(b);
  EXPECT_EQ(hit.block_ids, (Ids{1, 2}));
  EXPECT_EQ(hit.num_tokens, 8);
  // get_computed_blocks takes no references.
  EXPECT_EQ(kv.block_pool().ref_count(1), 1);

  EXPECT_EQ(kv.allocate_slots(b, 3, hit), Ids{4});
  EXPECT_EQ(kv.block_ids(2), (Ids{1, 2, 4}));
  EXPECT_EQ(kv.block_pool().ref_count(1), 2);
  EXPECT_EQ(kv.block_pool().ref_count(2), 2);
  EXPECT_EQ(kv.block_pool().ref_count(4), 1);

  // Shared blocks stay allocated while one user remains.
  kv.free(a);
  EXPECT_EQ(kv.block_pool().ref_count(1), 1);
  EXPECT_EQ(kv.block_pool().ref_count(3), 0);
  EXPECT_EQ(kv.block_pool().free_list(), (Ids{5, 6, 7, 8, 9, 3}));
}

TEST(KVCacheManager, PartialLastBlockIsNeverCached) {
  KVCacheManager kv(10, kBlockSize, true);
  Request a = make_request(1, iota_tokens(10));
  ASSERT_TRUE(kv.allocate_slots(a, 10));
  kv.cache_full_blocks(a, 6);  // only block 1 is full of computed tokens
  EXPECT_TRUE(kv.block_pool().block_hash(1).has_value());
  EXPECT_FALSE(kv.block_pool().block_hash(2).has_value());
  kv.cache_full_blocks(a, 10);
  EXPECT_TRUE(kv.block_pool().block_hash(2).has_value());
  EXPECT_FALSE(kv.block_pool().block_hash(3).has_value());

  Request b = make_request(2, iota_tokens(12));
  EXPECT_EQ(kv.get_computed_blocks(b).block_ids, (Ids{1, 2}));
}

TEST(KVCacheManager, FullHitKeepsOneTokenToCompute) {
  KVCacheManager kv(10, kBlockSize, true);
  Request a = make_request(1, iota_tokens(8));
  EXPECT_EQ(prefill(kv, a), (Ids{1, 2}));

  Request same = make_request(2, iota_tokens(8));
  ComputedBlocks hit = kv.get_computed_blocks(same);
  EXPECT_EQ(hit.block_ids, Ids{1});
  EXPECT_EQ(hit.num_tokens, 4);
  // Its last block is recomputed into a fresh block.
  EXPECT_EQ(kv.allocate_slots(same, 4, hit), Ids{3});
  EXPECT_EQ(kv.block_ids(2), (Ids{1, 3}));

  Request longer = make_request(3, iota_tokens(9));
  EXPECT_EQ(kv.get_computed_blocks(longer).block_ids, (Ids{1, 2}));
}

TEST(KVCacheManager, SaltIsolatesRequests) {
  KVCacheManager kv(10, kBlockSize, true);
  Request a = make_request(1, iota_tokens(9), 7);
  prefill(kv, a);
  Request other_salt = make_request(2, iota_tokens(9), 8);
  EXPECT_EQ(kv.get_computed_blocks(other_salt).num_tokens, 0);
  Request same_salt = make_request(3, iota_tokens(9), 7);
  EXPECT_EQ(kv.get_computed_blocks(same_salt).num_tokens, 8);
}

TEST(KVCacheManager, FreeReleasesTailFirstAndEvictsTailFirst) {
  KVCacheManager kv(5, kBlockSize, true);  // blocks 1..4
  Request a = make_request(1, iota_tokens(8));
  EXPECT_EQ(prefill(kv, a), (Ids{1, 2}));
  kv.free(a);
  EXPECT_EQ(kv.block_pool().free_list(), (Ids{3, 4, 2, 1}));
  EXPECT_EQ(kv.block_ids(1), Ids{});

  // A request with other tokens takes three blocks: the never-used ones, then A's last block.
  Request d = make_request(2, iota_tokens(12, 50));
  EXPECT_EQ(prefill(kv, d), (Ids{3, 4, 2}));
  EXPECT_EQ(kv.block_pool().free_list(), Ids{1});

  Request again = make_request(3, iota_tokens(9));
  ComputedBlocks hit = kv.get_computed_blocks(again);
  EXPECT_EQ(hit.block_ids, Ids{1});  // A's second block was evicted, its first survives
  EXPECT_EQ(hit.num_tokens, 4);
}

TEST(KVCacheManager, CanAllocateCountsRevivedFreeBlocks) {
  KVCacheManager kv(4, kBlockSize, true);  // blocks 1..3
  Request a = make_request(1, iota_tokens(8));
  prefill(kv, a);
  kv.free(a);
  EXPECT_EQ(kv.block_pool().free_list(), (Ids{3, 2, 1}));

  // 12 tokens: hit on blocks 1, 2 (both free) plus one new block = all three free blocks.
  Request fits = make_request(2, iota_tokens(12));
  ComputedBlocks hit = kv.get_computed_blocks(fits);
  ASSERT_EQ(hit.block_ids, (Ids{1, 2}));
  EXPECT_TRUE(kv.can_allocate(fits, 4, hit));
  // 13 tokens: two new blocks plus the two revived ones need four.
  Request too_big = make_request(3, iota_tokens(13));
  ComputedBlocks big_hit = kv.get_computed_blocks(too_big);
  ASSERT_EQ(big_hit.block_ids, (Ids{1, 2}));
  EXPECT_FALSE(kv.can_allocate(too_big, 5, big_hit));
  EXPECT_EQ(kv.allocate_slots(too_big, 5, big_hit), std::nullopt);
  EXPECT_EQ(kv.block_pool().free_list(), (Ids{3, 2, 1}));

  EXPECT_EQ(kv.allocate_slots(fits, 4, hit), Ids{3});
  EXPECT_EQ(kv.block_ids(2), (Ids{1, 2, 3}));
  EXPECT_EQ(kv.block_pool().ref_count(1), 1);
  EXPECT_EQ(kv.block_pool().ref_count(2), 1);
  EXPECT_EQ(kv.block_pool().num_free_blocks(), 0);
}

TEST(KVCacheManager, HitOnBlocksInUseConsumesNoFreeBlock) {
  KVCacheManager kv(4, kBlockSize, true);  // blocks 1..3
  Request a = make_request(1, iota_tokens(8));
  prefill(kv, a);  // holds 1, 2; only 3 free
  Request b = make_request(2, iota_tokens(12));
  ComputedBlocks hit = kv.get_computed_blocks(b);
  ASSERT_EQ(hit.block_ids, (Ids{1, 2}));
  EXPECT_TRUE(kv.can_allocate(b, 4, hit));
  EXPECT_EQ(kv.allocate_slots(b, 4, hit), Ids{3});
  EXPECT_EQ(kv.block_pool().ref_count(1), 2);
}

TEST(KVCacheManager, CachingDisabledFindsNothing) {
  KVCacheManager kv(10, kBlockSize, false);
  Request a = make_request(1, iota_tokens(9));
  prefill(kv, a);
  EXPECT_FALSE(kv.block_pool().block_hash(1).has_value());
  Request b = make_request(2, iota_tokens(9));
  EXPECT_EQ(kv.get_computed_blocks(b).num_tokens, 0);
  EXPECT_EQ(prefill(kv, b), (Ids{4, 5, 6}));
}

}  // namespace
}  // namespace engine
