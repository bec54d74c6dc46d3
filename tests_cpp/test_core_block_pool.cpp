#include "core/block_pool.h"

#include <gtest/gtest.h>

#include <stdexcept>
#include <vector>

namespace engine {
namespace {

using Ids = std::vector<int>;

TEST(BlockPool, StartsWithAllButNullBlockFreeInOrder) {
  BlockPool pool(5, true);
  EXPECT_EQ(pool.num_blocks(), 5);
  EXPECT_EQ(pool.num_free_blocks(), 4);
  EXPECT_EQ(pool.free_list(), (Ids{1, 2, 3, 4}));
  EXPECT_DOUBLE_EQ(pool.usage(), 0.0);
}

TEST(BlockPool, RejectsPoolWithoutAllocatableBlocks) {
  EXPECT_THROW(BlockPool(1, true), std::invalid_argument);
}

TEST(BlockPool, HandsOutFromHeadWithRefCountOne) {
  BlockPool pool(6, true);
  EXPECT_EQ(pool.get_new_blocks(2), (Ids{1, 2}));
  EXPECT_EQ(pool.get_new_blocks(1), (Ids{3}));
  EXPECT_EQ(pool.ref_count(1), 1);
  EXPECT_EQ(pool.ref_count(3), 1);
  EXPECT_EQ(pool.ref_count(4), 0);
  EXPECT_EQ(pool.free_list(), (Ids{4, 5}));
  EXPECT_DOUBLE_EQ(pool.usage(), 3.0 / 5.0);
}

TEST(BlockPool, NullBlockIsNeverHandedOut) {
  BlockPool pool(4, true);
  Ids all = pool.get_new_blocks(3);
  EXPECT_EQ(all, (Ids{1, 2, 3}));
  EXPECT_EQ(pool.num_free_blocks(), 0);
  EXPECT_DOUBLE_EQ(pool.usage(), 1.0);
  EXPECT_THROW(pool.get_new_blocks(1), std::invalid_argument);
  pool.free_blocks(all);
  EXPECT_EQ(pool.free_list(), (Ids{1, 2, 3}));
  EXPECT_THROW(pool.touch({BlockPool::kNullBlockId}), std::out_of_range);
}

TEST(BlockPool, FreeAppendsToTailInGivenOrder) {
  BlockPool pool(6, true);
  Ids ids = pool.get_new_blocks(5);  // 1..5, free list empty
  pool.free_blocks({4, 2});
  pool.free_blocks({5, 1});
  EXPECT_EQ(pool.free_list(), (Ids{4, 2, 5, 1}));
  // The least recently freed block is handed out first.
  EXPECT_EQ(pool.get_new_blocks(3), (Ids{4, 2, 5}));
  EXPECT_EQ(pool.free_list(), (Ids{1}));
}

TEST(BlockPool, SharedBlockIsFreedOnlyAtRefCountZero) {
  BlockPool pool(4, true);
  pool.get_new_blocks(2);  // 1, 2
  pool.touch({1});
  EXPECT_EQ(pool.ref_count(1), 2);
  pool.free_blocks({1});
  EXPECT_EQ(pool.ref_count(1), 1);
  EXPECT_EQ(pool.free_list(), (Ids{3}));
  pool.free_blocks({1});
  EXPECT_EQ(pool.ref_count(1), 0);
  EXPECT_EQ(pool.free_list(), (Ids{3, 1}));
  EXPECT_THROW(pool.free_blocks({1}), std::logic_error);
}

TEST(BlockPool, TouchRevivesCachedFreeBlockFromMiddle) {
  BlockPool pool(6, true);
  Ids ids = pool.get_new_blocks(3);  // 1, 2, 3
  pool.cache_full_block(2, 0xabc);
  pool.free_blocks({3, 2, 1});
  EXPECT_EQ(pool.free_list(), (Ids{4, 5, 3, 2, 1}));
  // A free block keeps its hash and is still found.
  ASSERT_EQ(pool.get_cached_block(0xabc), 2);
  EXPECT_EQ(pool.block_hash(2), 0xabcu);
  pool.touch({2});
  EXPECT_EQ(pool.ref_count(2), 1);
  EXPECT_EQ(pool.free_list(), (Ids{4, 5, 3, 1}));
  EXPECT_EQ(pool.num_free_blocks(), 4);
  EXPECT_EQ(pool.get_cached_block(0xabc), 2);
  // Removing the tail and head works as well.
  pool.touch({1});
  pool.touch({4});
  EXPECT_EQ(pool.free_list(), (Ids{5, 3}));
  EXPECT_EQ(pool.get_new_blocks(2), (Ids{5, 3}));
  EXPECT_EQ(pool.free_list(), (Ids{}));
}

TEST(BlockPool, EvictionErasesTheHash) {
  BlockPool pool(3, true);
  pool.get_new_blocks(2);  // 1, 2
  pool.cache_full_block(1, 111);
  pool.cache_full_block(2, 222);
  pool.free_blocks({2, 1});  // free list: 2, 1
  EXPECT_EQ(pool.get_new_blocks(1), (Ids{2}));
  EXPECT_EQ(pool.get_cached_block(222), std::nullopt);
  EXPECT_EQ(pool.block_hash(2), std::nullopt);
  EXPECT_EQ(pool.get_cached_block(111), 1);
  EXPECT_EQ(pool.block_hash(1), 111u);
}

TEST(BlockPool, FirstBlockCachedUnderAHashWins) {
  BlockPool pool(4, true);
  pool.get_new_blocks(2);  // 1, 2
  pool.cache_full_block(1, 7);
  pool.cache_full_block(2, 7);
  EXPECT_EQ(pool.get_cached_block(7), 1);
  EXPECT_EQ(pool.block_hash(2), std::nullopt);
  // A registered block is not re-registered under another hash.
  pool.cache_full_block(1, 8);
  EXPECT_EQ(pool.get_cached_block(8), std::nullopt);
  EXPECT_EQ(pool.block_hash(1), 7u);
}

TEST(BlockPool, CachingDisabledRegistersNothing) {
  BlockPool pool(4, false);
  pool.get_new_blocks(1);
  pool.cache_full_block(1, 99);
  EXPECT_EQ(pool.get_cached_block(99), std::nullopt);
  EXPECT_EQ(pool.block_hash(1), std::nullopt);
}

TEST(BlockPool, ResetPrefixCacheOnlyWhenAllFree) {
  BlockPool pool(4, true);
  pool.get_new_blocks(1);
  pool.cache_full_block(1, 5);
  EXPECT_FALSE(pool.reset_prefix_cache());
  EXPECT_EQ(pool.get_cached_block(5), 1);
  pool.free_blocks({1});
  EXPECT_TRUE(pool.reset_prefix_cache());
  EXPECT_EQ(pool.get_cached_block(5), std::nullopt);
  EXPECT_EQ(pool.block_hash(1), std::nullopt);
  EXPECT_EQ(pool.free_list(), (Ids{2, 3, 1}));
}

}  // namespace
}  // namespace engine
