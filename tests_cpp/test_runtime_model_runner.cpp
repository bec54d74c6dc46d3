// ModelRunner's decode-graph path on the CPU: a backend that "captures" by keeping the enqueue
// callable and "replays" by calling it again stands in for CUDA graphs, so padded buckets,
// full-width block tables and the staged-input addresses are checked where CI runs. The graph
// runner must give the eager runner's tokens.

#include "runtime/model_runner.h"

#include <gtest/gtest.h>

#include "engine_test_util.h"

#include <numeric>

namespace engine {
namespace {

// The CPU backend, plus graphs that re-run what was recorded.
class ReplayingBackend final : public Backend {
 public:
  ReplayingBackend() : cpu_(make_cpu_backend(1)) {}
  int num_replays = 0;

  DeviceType device_type() const override { return cpu_->device_type(); }
  const char* name() const override { return "cpu-replaying"; }
  DType compute_dtype() const override { return cpu_->compute_dtype(); }
  Buffer allocate(size_t nbytes) override { return cpu_->allocate(nbytes); }
  void copy_from_host(Tensor dst, const void* src) override { cpu_->copy_from_host(dst, src); }
  void copy_to_host(void* dst, Tensor src) override { cpu_->copy_to_host(dst, src); }
  bool supports_graphs() const override { return true; }
  std::unique_ptr<CapturedGraph> capture(const std::function<void()>& enqueue) override {
    return std::make_unique<Replay>(enqueue, &num_replays);
  }
  void embedding(Tensor out, Tensor table, Tensor ids) override {
    cpu_->embedding(out, table, ids);
  }
  void rms_norm(Tensor out, Tensor x, Tensor weight, float eps) override {
    cpu_->rms_norm(out, x, weight, eps);
  }
  void add_rms_norm(Tensor x, Tensor residual, Tensor weight, float eps) override {
    cpu_->add_rms_norm(x, residual, weight, eps);
  }
  void linear(Tensor out, Tensor x, Tensor weight, const Tensor* bias) override {
    cpu_->linear(out, x, weight, bias);
  }
  void rope_and_cache(Tensor q_out, Tensor qkv, const QKNorm* qk_norm, Tensor cos_sin,
                      const AttentionMetadata& meta, KVCacheLayer cache) override {
    cpu_->rope_and_cache(q_out, qkv, qk_norm, cos_sin, meta, cache);
  }
  void attention(Tensor out, Tensor q, KVCacheLayer cache, const AttentionMetadata& meta,
                 float scale, std::optional<int> sliding_window) override {
    cpu_->attention(out, q, cache, meta, scale, sliding_window);
  }
  void silu_and_mul(Tensor out, Tensor x) override { cpu_->silu_and_mul(out, x); }
  void gather_rows(Tensor out, Tensor x, Tensor indices) override {
    cpu_->gather_rows(out, x, indices);
  }

 private:
  class Replay final : public CapturedGraph {
   public:
    Replay(std::function<void()> work, int* count) : work_(std::move(work)), count_(count) {}
    void replay() override {
      ++*count_;
      work_();
    }

   private:
    std::function<void()> work_;
    int* count_;
  };
  std::unique_ptr<Backend> cpu_;
};

struct Runner {
  Runner(Backend& backend, const std::string& dir, bool graphs)
      : model(load_model(ModelConfig::from_directory(dir), {dir, "auto", "dummy", 5}, backend)),
        runner(backend, *model, RunnerConfig{16, 64, 8, 128, {2}, graphs}) {
    runner.allocate_kv_cache(32);
    runner.capture_decode_graphs();
  }
  std::unique_ptr<Model> model;
  ModelRunner runner;
};

std::vector<int> tokens_of(const ModelRunnerOutput& output) {
  std::vector<int> tokens;
  for (const SampledToken& sampled : output.sampled) tokens.push_back(sampled.token_id);
  return tokens;
}

TEST(ModelRunnerGraphs, PaddedDecodeReplaysGiveTheEagerTokens) {
  const std::string dir = test::write_tiny_llama_config("runner-test");
  ReplayingBackend replaying;
  auto cpu = make_cpu_backend(1);
  Runner graphs(replaying, dir, /*graphs=*/true);
  Runner eager(*cpu, dir, /*graphs=*/false);
  EXPECT_EQ(graphs.runner.decode_graph_batch_sizes(), (std::vector<int>{1, 2, 4, 8}));
  EXPECT_TRUE(eager.runner.decode_graph_batch_sizes().empty());
  const int num_replays_at_start = replaying.num_replays;
  EXPECT_EQ(num_replays_at_start, 0);

  SamplingParams greedy;
  greedy.temperature = 0.0f;
  // Three prompts (5, 17 and 9 tokens) in blocks {1}, {2, 3} and {4}: a batch of 3 replays
  // the graph of 4 with one padding row.
  const std::vector<int> lengths{5, 17, 9};
  const std::vector<std::vector<int>> blocks{{1}, {2, 3}, {4}};
  SchedulerOutput prefill;
  std::vector<int> num_tokens(3);
  for (int i = 0; i < 3; ++i) {
    std::vector<int> prompt(lengths[i]);
    std::iota(prompt.begin(), prompt.end(), 3 + 11 * i);
    prefill.new_sequences.push_back({SeqId(i + 1), prompt, lengths[i], greedy, 0, blocks[i]});
    prefill.scheduled.push_back({SeqId(i + 1), 0, lengths[i], {}, true});
    num_tokens[i] = lengths[i];
  }
  std::vector<int> got = tokens_of(graphs.runner.execute(prefill));
  ASSERT_EQ(got, tokens_of(eager.runner.execute(prefill)));
  for (int step = 0; step < 6; ++step) {
    SchedulerOutput decode;
    for (int i = 0; i < 3; ++i) {
      decode.scheduled.push_back({SeqId(i + 1), num_tokens[i], 1, {}, true});
      ++num_tokens[i];
    }
    got = tokens_of(graphs.runner.execute(decode));
    ASSERT_EQ(got, tokens_of(eager.runner.execute(decode))) << "decode step " << step;
  }
  EXPECT_EQ(replaying.num_replays, 6);  // every decode step, no prefill

  // A batch of one replays the graph of 1, without padding.
  SchedulerOutput finish_two;
  finish_two.finished_seq_ids = {2, 3};
  finish_two.scheduled.push_back({1, num_tokens[0], 1, {}, true});
  EXPECT_EQ(tokens_of(graphs.runner.execute(finish_two)),
            tokens_of(eager.runner.execute(finish_two)));
  EXPECT_EQ(replaying.num_replays, 7);
}

}  // namespace
}  // namespace engine
