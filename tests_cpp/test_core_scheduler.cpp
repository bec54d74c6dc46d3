#include "core/scheduler.h"

#include <gtest/gtest.h>

#include <memory>
#include <numeric>
#include <tuple>
#include <vector>

namespace engine {
namespace {

using Ids = std::vector<int>;
using SeqIds = std::vector<SeqId>;
constexpr int kBlockSize = 4;

// One scheduler over its own KV cache, driven by a fake model that samples a fixed token.
struct Harness {
  Harness(int num_blocks, SchedulerConfig config, bool enable_caching = true)
      : kv(num_blocks, kBlockSize, enable_caching), scheduler(config, kv) {}

  // Prompt tokens start at first_token so that requests share no prefix unless asked to.
  void add(SeqId seq_id, int num_prompt_tokens, SamplingParams params = {}, int first_token = -1) {
    auto request = std::make_unique<Request>();
    request->seq_id = seq_id;
    request->params = params;
    request->arrival = seq_id;
    request->token_ids.resize(num_prompt_tokens);
    std::iota(request->token_ids.begin(), request->token_ids.end(),
              first_token >= 0 ? first_token : static_cast<int>(seq_id) * 1000);
    request->num_prompt_tokens = num_prompt_tokens;
    scheduler.add_request(std::move(request));
  }

  // What the runner would answer: the token for every sequence that samples this step.
  static ModelRunnerOutput sample_all(const SchedulerOutput& out, int token) {
    ModelRunnerOutput output;
    for (const ScheduledSequence& s : out.scheduled) {
      if (s.sample) output.sampled.push_back({s.seq_id, token, std::nullopt});
    }
    return output;
  }

  SchedulerOutput step(int token = 7) {
    SchedulerOutput out = scheduler.schedule();
    last_updates = scheduler.update_from_output(out, sample_all(out, token));
    return out;
  }

  const Request& request(SeqId seq_id) const {
    const Request* r = scheduler.find(seq_id);
    EXPECT_NE(r, nullptr) << "sequence " << seq_id << " is unknown";
    return *r;
  }

  KVCacheManager kv;
  Scheduler scheduler;
  std::vector<SequenceUpdate> last_updates;
};

SchedulerConfig config(int max_num_batched_tokens, int max_num_seqs = 16,
                       SchedulingPolicy policy = SchedulingPolicy::kFcfs) {
  SchedulerConfig c;
  c.max_num_batched_tokens = max_num_batched_tokens;
  c.max_num_seqs = max_num_seqs;
  c.max_model_len = 1024;
  c.policy = policy;
  return c;
}

SamplingParams max_tokens(int n) {
  SamplingParams p;
  p.max_tokens = n;
  return p;
}

// Each scheduled sequence as (seq id, num computed, num scheduled, new blocks, sample).
void expect_scheduled(const SchedulerOutput& out, const std::vector<ScheduledSequence>& expected) {
  ASSERT_EQ(out.scheduled.size(), expected.size());
  int total = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    const ScheduledSequence& got = out.scheduled[i];
    SCOPED_TRACE("scheduled[" + std::to_string(i) + "]");
    EXPECT_EQ(got.seq_id, expected[i].seq_id);
    EXPECT_EQ(got.num_computed_tokens, expected[i].num_computed_tokens);
    EXPECT_EQ(got.num_scheduled_tokens, expected[i].num_scheduled_tokens);
    EXPECT_EQ(got.new_block_ids, expected[i].new_block_ids);
    EXPECT_EQ(got.sample, expected[i].sample);
    total += expected[i].num_scheduled_tokens;
  }
  EXPECT_EQ(out.total_num_scheduled_tokens, total);
}

SeqIds new_seq_ids(const SchedulerOutput& out) {
  SeqIds ids;
  for (const NewSequenceData& n : out.new_sequences) ids.push_back(n.seq_id);
  return ids;
}

TEST(Scheduler, SplitsTokenBudgetAcrossRequests) {
  Harness h(64, config(10));
  h.add(1, 6);
  h.add(2, 6);
  SchedulerOutput out = h.step(7);
  expect_scheduled(out, {{1, 0, 6, {}, true}, {2, 0, 4, {}, false}});
  ASSERT_EQ(out.new_sequences.size(), 2u);
  EXPECT_EQ(out.new_sequences[0].block_ids, (Ids{1, 2}));
  EXPECT_EQ(out.new_sequences[0].token_ids, (Ids{1000, 1001, 1002, 1003, 1004, 1005}));
  EXPECT_EQ(out.new_sequences[0].num_prompt_tokens, 6);
  EXPECT_EQ(out.new_sequences[1].block_ids, (Ids{3}));
  ASSERT_EQ(h.last_updates.size(), 1u);
  EXPECT_EQ(h.last_updates[0].seq_id, 1u);
  EXPECT_EQ(h.last_updates[0].new_token_ids, Ids{7});
  EXPECT_FALSE(h.last_updates[0].finish_reason.has_value());

  out = h.step(8);
  expect_scheduled(out, {{1, 6, 1, {}, true}, {2, 4, 2, {4}, true}});
  EXPECT_TRUE(out.new_sequences.empty());
  EXPECT_EQ(h.request(1).token_ids.back(), 8);
  EXPECT_EQ(h.request(2).num_computed_tokens, 6);
  EXPECT_EQ(h.request(2).num_output_tokens(), 1);
}

TEST(Scheduler, ChunksLongPromptOverSeveralSteps) {
  Harness h(64, config(4));
  h.add(1, 10);
  SchedulerOutput out = h.step();
  expect_scheduled(out, {{1, 0, 4, {}, false}});
  EXPECT_EQ(out.new_sequences[0].block_ids, Ids{1});
  EXPECT_EQ(out.new_sequences[0].token_ids.size(), 10u);
  EXPECT_TRUE(h.last_updates.empty());
  expect_scheduled(h.step(), {{1, 4, 4, {2}, false}});
  EXPECT_TRUE(h.last_updates.empty());
  expect_scheduled(h.step(), {{1, 8, 2, {3}, true}});
  ASSERT_EQ(h.last_updates.size(), 1u);
  expect_scheduled(h.step(), {{1, 10, 1, {}, true}});
  EXPECT_EQ(h.request(1).num_output_tokens(), 2);
}

TEST(Scheduler, MixesDecodeAndPrefillInOneStep) {
  Harness h(64, config(8));
  h.add(1, 3);
  h.step();
  h.add(2, 10);
  SchedulerOutput out = h.step();
  expect_scheduled(out, {{1, 3, 1, {}, true}, {2, 0, 7, {}, false}});
  EXPECT_EQ(new_seq_ids(out), SeqIds{2});
  EXPECT_EQ(out.new_sequences[0].block_ids, (Ids{2, 3}));
  expect_scheduled(h.step(), {{1, 4, 1, {4}, true}, {2, 7, 3, {5}, true}});
}

TEST(Scheduler, PreemptsLatestArrivalAndResumesItAsNewSequence) {
  Harness h(5, config(64));  // blocks 1..4
  h.add(1, 7, max_tokens(3));
  h.add(2, 7, max_tokens(10));
  expect_scheduled(h.step(), {{1, 0, 7, {}, true}, {2, 0, 7, {}, true}});
  expect_scheduled(h.step(), {{1, 7, 1, {}, true}, {2, 7, 1, {}, true}});

  // Both now need a third block and none is free: sequence 2 (the later arrival) yields its
  // blocks to sequence 1, and nothing waiting is admitted in that step.
  SchedulerOutput out = h.step();
  expect_scheduled(out, {{1, 8, 1, {4}, true}});
  EXPECT_EQ(out.finished_seq_ids, SeqIds{2});
  const Request& victim = h.request(2);
  EXPECT_EQ(victim.status, RequestStatus::kPreempted);
  EXPECT_EQ(victim.num_computed_tokens, 0);
  EXPECT_EQ(victim.num_preemptions, 1);
  EXPECT_EQ(victim.num_tokens(), 9);  // its outputs are kept and recomputed
  EXPECT_EQ(h.scheduler.stats().num_preemptions, 1);
  EXPECT_EQ(h.scheduler.stats().num_waiting, 1);
  // Sequence 1 reached max_tokens and released its blocks, tail first.
  ASSERT_EQ(h.last_updates.size(), 1u);
  EXPECT_EQ(h.last_updates[0].finish_reason, FinishReason::kLength);
  EXPECT_EQ(h.kv.block_pool().free_list(), (Ids{3, 4, 2, 1}));

  // Sequence 2 comes back with all its tokens; its first block (3) is still cached.
  out = h.step();
  EXPECT_EQ(out.finished_seq_ids, SeqIds{1});
  ASSERT_EQ(new_seq_ids(out), SeqIds{2});
  EXPECT_EQ(out.new_sequences[0].token_ids.size(), 9u);
  EXPECT_EQ(out.new_sequences[0].num_prompt_tokens, 7);
  EXPECT_EQ(out.new_sequences[0].block_ids, (Ids{3, 4, 2}));
  expect_scheduled(out, {{2, 4, 5, {}, true}});
  EXPECT_EQ(h.request(2).num_output_tokens(), 3);
  // Prefix-cache stats count the first scheduling only.
  EXPECT_EQ(h.request(2).num_cached_tokens, 0);
  EXPECT_EQ(h.scheduler.stats().num_prefix_cache_queries, 14);
  EXPECT_EQ(h.scheduler.stats().num_prefix_cache_hits, 0);
}

// (seq id, num computed, num scheduled) of each scheduled sequence.
std::vector<std::tuple<SeqId, int, int>> chunks(const SchedulerOutput& out) {
  std::vector<std::tuple<SeqId, int, int>> result;
  for (const ScheduledSequence& s : out.scheduled) {
    result.emplace_back(s.seq_id, s.num_computed_tokens, s.num_scheduled_tokens);
  }
  return result;
}

// At most 5 prompt tokens a step of sequences that score their prompt; the rest of the token
// budget goes to the others, and a scored prompt waiting behind the cap is not skipped.
TEST(Scheduler, CapsScoredPromptTokensPerStep) {
  SchedulerConfig c = config(16);
  c.max_num_prompt_logprob_tokens = 5;
  Harness h(64, c);
  SamplingParams scored = max_tokens(4);
  scored.prompt_logprobs = 0;
  h.add(1, 12, scored);
  h.add(2, 4, max_tokens(4));
  h.add(3, 6, scored);
  h.add(4, 3, max_tokens(4));
  using Chunks = std::vector<std::tuple<SeqId, int, int>>;
  EXPECT_EQ(chunks(h.step()), (Chunks{{1, 0, 5}, {2, 0, 4}}));  // 3 waits at the cap, 4 behind
  EXPECT_EQ(chunks(h.step()), (Chunks{{1, 5, 5}, {2, 4, 1}}));
  EXPECT_EQ(chunks(h.step()), (Chunks{{1, 10, 2}, {2, 5, 1}, {3, 0, 3}, {4, 0, 3}}));
  // Sequence 1 decodes now: its tokens are no longer scored prompt tokens.
  EXPECT_EQ(chunks(h.step()), (Chunks{{1, 12, 1}, {2, 6, 1}, {3, 3, 3}, {4, 3, 1}}));
}

TEST(Scheduler, SequenceThatIsItsOwnVictimStopsRunningLoop) {
  Harness h(6, config(64));  // blocks 1..5
  h.add(1, 7);
  h.add(2, 7);
  h.step();
  h.step();
  SchedulerOutput out = h.step();
  expect_scheduled(out, {{1, 8, 1, {5}, true}});
  EXPECT_EQ(out.finished_seq_ids, SeqIds{2});
  EXPECT_EQ(h.request(2).status, RequestStatus::kPreempted);
  EXPECT_EQ(h.kv.block_pool().free_list(), (Ids{4, 3}));
}

TEST(Scheduler, PriorityPolicyAdmitsByPriorityThenArrival) {
  Harness h(64, config(64, 2, SchedulingPolicy::kPriority));
  SamplingParams low, high;
  low.priority = 2;
  high.priority = 0;
  h.add(1, 4, low);
  h.add(2, 4, low);
  h.add(3, 4, high);
  SchedulerOutput out = h.step();
  EXPECT_EQ(new_seq_ids(out), (SeqIds{3, 1}));
  EXPECT_EQ(h.scheduler.stats().num_waiting, 1);
}

TEST(Scheduler, PriorityPolicyPreemptsLowestPriorityEvenIfAlreadyScheduled) {
  Harness h(5, config(64, 16, SchedulingPolicy::kPriority));  // blocks 1..4
  SamplingParams low;
  low.priority = 5;
  h.add(1, 4, low);
  h.step();  // 1 holds block 1
  h.add(2, 8);
  SchedulerOutput out = h.step();
  expect_scheduled(out, {{1, 4, 1, {2}, true}, {2, 0, 8, {}, true}});
  EXPECT_EQ(out.new_sequences[0].block_ids, (Ids{3, 4}));

  // Sequence 1 is scheduled first, then sequence 2 needs a block: sequence 1 has the lower
  // priority, so it is un-scheduled and its blocks go to sequence 2.
  out = h.step();
  expect_scheduled(out, {{2, 8, 1, {2}, true}});
  EXPECT_EQ(out.finished_seq_ids, SeqIds{1});
  EXPECT_EQ(h.request(1).status, RequestStatus::kPreempted);
  EXPECT_EQ(h.request(1).num_output_tokens(), 2);
  ASSERT_EQ(h.last_updates.size(), 1u);
  EXPECT_EQ(h.last_updates[0].seq_id, 2u);
  EXPECT_EQ(h.kv.block_ids(2), (Ids{3, 4, 2}));
  EXPECT_EQ(h.kv.block_pool().free_list(), Ids{1});
}

TEST(Scheduler, RespectsMaxNumSeqs) {
  Harness h(64, config(64, 2));
  h.add(1, 4, max_tokens(1));
  h.add(2, 4);
  h.add(3, 4);
  SchedulerOutput out = h.step();
  EXPECT_EQ(new_seq_ids(out), (SeqIds{1, 2}));
  EXPECT_EQ(h.scheduler.stats().num_running, 1);  // 1 finished after one token
  out = h.step();
  EXPECT_EQ(out.finished_seq_ids, SeqIds{1});
  EXPECT_EQ(new_seq_ids(out), SeqIds{3});
  expect_scheduled(out, {{2, 4, 1, {3}, true}, {3, 0, 4, {}, true}});
  EXPECT_EQ(out.new_sequences[0].block_ids, Ids{4});
  EXPECT_EQ(h.scheduler.find(1), nullptr);
}

TEST(Scheduler, AbortsWaitingAndRunningSequences) {
  Harness h(16, config(64, 1));
  h.add(1, 5);
  h.add(2, 5);
  h.step();
  ASSERT_EQ(h.request(2).status, RequestStatus::kWaiting);
  ASSERT_EQ(h.kv.block_pool().num_free_blocks(), 13);

  std::vector<SequenceUpdate> updates = h.scheduler.abort({2, 99});
  ASSERT_EQ(updates.size(), 1u);
  EXPECT_EQ(updates[0].seq_id, 2u);
  EXPECT_EQ(updates[0].finish_reason, FinishReason::kAbort);
  updates = h.scheduler.abort({1});
  ASSERT_EQ(updates.size(), 1u);
  EXPECT_EQ(h.request(1).finish_reason, FinishReason::kAbort);
  EXPECT_EQ(h.kv.block_pool().num_free_blocks(), 15);
  EXPECT_TRUE(h.scheduler.abort({1}).empty());
  EXPECT_FALSE(h.scheduler.has_unfinished());

  SchedulerOutput out = h.scheduler.schedule();
  EXPECT_EQ(out.finished_seq_ids, (SeqIds{2, 1}));
  EXPECT_TRUE(out.scheduled.empty());
  EXPECT_EQ(h.scheduler.find(1), nullptr);
  EXPECT_TRUE(h.scheduler.schedule().finished_seq_ids.empty());
}

TEST(Scheduler, SkipsSequenceAbortedBetweenScheduleAndUpdate) {
  Harness h(16, config(64));
  h.add(1, 5);
  h.add(2, 5);
  SchedulerOutput out = h.scheduler.schedule();
  h.scheduler.abort({1});
  std::vector<SequenceUpdate> updates =
      h.scheduler.update_from_output(out, Harness::sample_all(out, 7));
  ASSERT_EQ(updates.size(), 1u);
  EXPECT_EQ(updates[0].seq_id, 2u);
  EXPECT_EQ(h.request(1).num_tokens(), 5);
  EXPECT_EQ(h.kv.block_pool().num_free_blocks(), 13);
}

std::vector<SequenceUpdate> run_to_finish(Harness& h, SeqId seq_id, int token, int max_steps) {
  std::vector<SequenceUpdate> updates;
  for (int i = 0; i < max_steps && h.scheduler.has_unfinished(); ++i) {
    h.step(token);
    for (const SequenceUpdate& u : h.last_updates) {
      if (u.seq_id == seq_id) updates.push_back(u);
    }
  }
  return updates;
}

TEST(Scheduler, FinishesOnEosKeepingTheToken) {
  SchedulerConfig c = config(64);
  c.eos_token_ids = {99};
  Harness h(16, c);
  h.add(1, 4);
  auto updates = run_to_finish(h, 1, 99, 10);
  ASSERT_EQ(updates.size(), 1u);
  EXPECT_EQ(updates[0].new_token_ids, Ids{99});
  EXPECT_EQ(updates[0].finish_reason, FinishReason::kStop);
  EXPECT_EQ(updates[0].stop_token_id, std::nullopt);
  EXPECT_EQ(h.request(1).token_ids.back(), 99);
  EXPECT_EQ(h.request(1).stop_token_id, std::nullopt);
  EXPECT_EQ(h.kv.block_pool().num_free_blocks(), 15);
}

TEST(Scheduler, IgnoreEosRunsToMaxTokens) {
  SchedulerConfig c = config(64);
  c.eos_token_ids = {99};
  Harness h(16, c);
  SamplingParams p = max_tokens(3);
  p.ignore_eos = true;
  h.add(1, 4, p);
  auto updates = run_to_finish(h, 1, 99, 10);
  ASSERT_EQ(updates.size(), 3u);
  EXPECT_EQ(updates[2].finish_reason, FinishReason::kLength);
  EXPECT_EQ(h.request(1).num_output_tokens(), 3);
}

TEST(Scheduler, FinishesOnStopTokenAndReportsIt) {
  Harness h(16, config(64));
  SamplingParams p;
  p.stop_token_ids = {5, 42};
  h.add(1, 4, p);
  auto updates = run_to_finish(h, 1, 42, 10);
  ASSERT_EQ(updates.size(), 1u);
  EXPECT_EQ(updates[0].finish_reason, FinishReason::kStop);
  EXPECT_EQ(updates[0].stop_token_id, 42);
  EXPECT_EQ(h.request(1).stop_token_id, 42);
}

TEST(Scheduler, MinTokensDefersEosAndStopTokens) {
  SchedulerConfig c = config(64);
  c.eos_token_ids = {99};
  Harness h(16, c);
  SamplingParams p;
  p.min_tokens = 3;
  h.add(1, 4, p);
  auto updates = run_to_finish(h, 1, 99, 10);
  ASSERT_EQ(updates.size(), 3u);
  EXPECT_FALSE(updates[1].finish_reason.has_value());
  EXPECT_EQ(updates[2].finish_reason, FinishReason::kStop);
  EXPECT_EQ(h.request(1).num_output_tokens(), 3);
}

TEST(Scheduler, FinishesAtMaxTokens) {
  Harness h(16, config(64));
  h.add(1, 4, max_tokens(2));
  auto updates = run_to_finish(h, 1, 7, 10);
  ASSERT_EQ(updates.size(), 2u);
  EXPECT_EQ(updates[1].finish_reason, FinishReason::kLength);
  EXPECT_EQ(h.request(1).token_ids.size(), 6u);
}

TEST(Scheduler, FinishesAtMaxModelLen) {
  SchedulerConfig c = config(64);
  c.max_model_len = 6;
  Harness h(16, c);
  h.add(1, 4, max_tokens(100));
  auto updates = run_to_finish(h, 1, 7, 10);
  ASSERT_EQ(updates.size(), 2u);
  EXPECT_EQ(updates[1].finish_reason, FinishReason::kLength);
  EXPECT_EQ(h.request(1).num_tokens(), 6);
}

TEST(Scheduler, CountsPrefixCacheQueriesAndHits) {
  Harness h(16, config(64));
  h.add(1, 9, {}, 0);
  h.step();
  h.add(2, 9, {}, 0);  // same prompt
  SchedulerOutput out = h.step();
  ASSERT_EQ(new_seq_ids(out), SeqIds{2});
  EXPECT_EQ(out.new_sequences[0].block_ids, (Ids{1, 2, 4}));
  expect_scheduled(out, {{1, 9, 1, {}, true}, {2, 8, 1, {}, true}});
  EXPECT_EQ(h.request(1).num_cached_tokens, 0);
  EXPECT_EQ(h.request(2).num_cached_tokens, 8);
  SchedulerStats stats = h.scheduler.stats();
  EXPECT_EQ(stats.num_prefix_cache_queries, 18);
  EXPECT_EQ(stats.num_prefix_cache_hits, 8);
}

TEST(Scheduler, DrainsManyRequestsUnderBlockPressure) {
  SchedulerConfig c = config(8, 4);
  c.max_model_len = 40;
  Harness h(12, c);  // 11 blocks: one max_model_len sequence fits, four do not
  for (SeqId id = 1; id <= 8; ++id) h.add(id, 3 + static_cast<int>(id), max_tokens(10));
  std::vector<int> num_outputs(9, 0);
  int num_finished = 0;
  for (int i = 0; i < 500 && h.scheduler.has_unfinished(); ++i) {
    h.step();
    for (const SequenceUpdate& u : h.last_updates) {
      num_outputs[u.seq_id] += static_cast<int>(u.new_token_ids.size());
      if (u.finish_reason) {
        EXPECT_EQ(u.finish_reason, FinishReason::kLength);
        ++num_finished;
      }
    }
  }
  EXPECT_FALSE(h.scheduler.has_unfinished());
  EXPECT_EQ(num_finished, 8);
  for (SeqId id = 1; id <= 8; ++id) EXPECT_EQ(num_outputs[id], 10) << "sequence " << id;
  EXPECT_GT(h.scheduler.stats().num_preemptions, 0);
  EXPECT_EQ(h.kv.block_pool().num_free_blocks(), 11);
}

// Async scheduling: schedule() runs again before the step in flight is applied.
TEST(Scheduler, SchedulesOneStepAheadOfItsPendingToken) {
  Harness h(16, config(64));
  h.add(1, 5, max_tokens(3));
  const SchedulerOutput first = h.scheduler.schedule();
  expect_scheduled(first, {{1, 0, 5, {}, true}});
  // Position 5 holds the token `first` samples: computed now, its id supplied by the runner.
  const SchedulerOutput ahead = h.scheduler.schedule();
  expect_scheduled(ahead, {{1, 5, 1, {}, true}});
  EXPECT_EQ(h.request(1).num_pending_tokens, 2);
  EXPECT_TRUE(h.scheduler.schedule().scheduled.empty());  // never two steps ahead

  auto updates = h.scheduler.update_from_output(first, Harness::sample_all(first, 7));
  ASSERT_EQ(updates.size(), 1u);
  EXPECT_EQ(updates[0].new_token_ids, Ids{7});
  updates = h.scheduler.update_from_output(ahead, Harness::sample_all(ahead, 8));
  EXPECT_EQ(updates[0].new_token_ids, Ids{8});
  EXPECT_EQ(h.request(1).token_ids, (Ids{1000, 1001, 1002, 1003, 1004, 7, 8}));
  EXPECT_EQ(h.request(1).num_pending_tokens, 0);
  EXPECT_THROW(h.scheduler.update_from_output(ahead, Harness::sample_all(ahead, 8)),
               std::logic_error);

  const SchedulerOutput last = h.scheduler.schedule();
  expect_scheduled(last, {{1, 6, 1, {}, true}});
  // Its pending token is the third of max_tokens 3: nothing is scheduled past it.
  EXPECT_TRUE(h.scheduler.schedule().scheduled.empty());
  updates = h.scheduler.update_from_output(last, Harness::sample_all(last, 9));
  EXPECT_EQ(updates[0].finish_reason, FinishReason::kLength);
  EXPECT_EQ(h.kv.block_pool().num_free_blocks(), 15);
}

TEST(Scheduler, StepAheadOfAStopTokenIsDropped) {
  SchedulerConfig c = config(64);
  c.eos_token_ids = {99};
  Harness h(16, c);
  h.add(1, 4);
  const SchedulerOutput first = h.scheduler.schedule();
  const SchedulerOutput ahead = h.scheduler.schedule();
  expect_scheduled(ahead, {{1, 4, 1, {2}, true}});
  auto updates = h.scheduler.update_from_output(first, Harness::sample_all(first, 99));
  ASSERT_EQ(updates.size(), 1u);
  EXPECT_EQ(updates[0].finish_reason, FinishReason::kStop);
  EXPECT_EQ(h.kv.block_pool().num_free_blocks(), 15);
  EXPECT_TRUE(h.scheduler.update_from_output(ahead, Harness::sample_all(ahead, 7)).empty());
  EXPECT_EQ(h.request(1).token_ids, (Ids{1000, 1001, 1002, 1003, 99}));
  EXPECT_FALSE(h.scheduler.has_unfinished());
}

TEST(Scheduler, SequencePreemptedWithAPendingTokenKeepsIt) {
  Harness h(4, config(64));  // 3 blocks of 4 tokens
  h.add(1, 4, max_tokens(2));
  h.add(2, 4, max_tokens(3));
  const SchedulerOutput first = h.scheduler.schedule();
  expect_scheduled(first, {{1, 0, 4, {}, true}, {2, 0, 4, {}, true}});
  // Position 4 needs a block each; one is free, so the later arrival is preempted.
  const SchedulerOutput ahead = h.scheduler.schedule();
  expect_scheduled(ahead, {{1, 4, 1, {3}, true}});
  EXPECT_EQ(ahead.finished_seq_ids, SeqIds{2});
  EXPECT_EQ(h.request(2).status, RequestStatus::kPreempted);
  EXPECT_EQ(h.request(2).num_pending_tokens, 1);
  // It is not readmitted before its token is back.
  EXPECT_TRUE(h.scheduler.schedule().new_sequences.empty());

  auto updates = h.scheduler.update_from_output(first, Harness::sample_all(first, 7));
  ASSERT_EQ(updates.size(), 2u);
  EXPECT_EQ(updates[1].seq_id, 2u);
  EXPECT_EQ(updates[1].new_token_ids, Ids{7});
  updates = h.scheduler.update_from_output(ahead, Harness::sample_all(ahead, 8));
  EXPECT_EQ(updates[0].finish_reason, FinishReason::kLength);  // sequence 1: max_tokens 2

  const SchedulerOutput resumed = h.scheduler.schedule();
  ASSERT_EQ(new_seq_ids(resumed), SeqIds{2});
  EXPECT_EQ(resumed.new_sequences[0].token_ids, (Ids{2000, 2001, 2002, 2003, 7}));
  expect_scheduled(resumed, {{2, 0, 5, {}, true}});
  h.scheduler.update_from_output(resumed, Harness::sample_all(resumed, 9));
  const auto rest = run_to_finish(h, 2, 9, 10);
  ASSERT_EQ(rest.size(), 1u);
  EXPECT_EQ(rest[0].finish_reason, FinishReason::kLength);
  EXPECT_EQ(h.request(2).token_ids, (Ids{2000, 2001, 2002, 2003, 7, 9, 9}));
}

TEST(Scheduler, RejectsDuplicateSequenceIds) {
  Harness h(16, config(64));
  h.add(1, 4);
  EXPECT_THROW(h.add(1, 4), std::invalid_argument);
}

}  // namespace
}  // namespace engine
