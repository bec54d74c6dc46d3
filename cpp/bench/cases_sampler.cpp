// The CPU sampler (runtime/sampler.h) on host fp32 logits; it samples rows in parallel over the
// OpenMP threads (one row: one thread). NOTE: a GPU sampler is being written; until it lands the
// engine samples on the CPU, so this is the number that counts.

#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cases.h"
#include "runtime/sampler.h"

namespace engine::bench {
namespace {

void sampler_case(Bench& bench, const ModelShape& m, int batch, const SamplingParams& params,
                  const std::string& mode) {
  const std::string kernel = "sampler (CPU)";
  const std::string shape =
      "batch " + std::to_string(batch) + ", vocab " + std::to_string(m.vocab) + ", " + mode;
  if (!bench.selected(kernel, shape)) return;
  const size_t num_logits = static_cast<size_t>(batch) * m.vocab;
  std::vector<float> pristine(num_logits), logits(num_logits);
  std::mt19937 rng(2024);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (float& x : pristine) x = normal(rng);
  std::vector<SamplingRow> rows(batch);
  for (int r = 0; r < batch; ++r) {
    rows[r].params = &params;
    rows[r].seed = 1000 + r;
  }
  const Sampler sampler;
  // The sampler rewrites the logits in place: restore them before each call, untimed.
  const double us = bench.time_host_us(
      [&] { std::memcpy(logits.data(), pristine.data(), num_logits * sizeof(float)); },
      [&] { sampler.sample(logits.data(), static_cast<int>(m.vocab), rows); });
  const int num_threads = std::min(batch, omp_get_max_threads());
  char note[96];
  std::snprintf(note, sizeof(note), "host, %d OpenMP thread%s: %.1f us per row", num_threads,
                num_threads == 1 ? "" : "s", us / batch);
  bench.add(kernel, shape, us, 0, 0, note);
}

}  // namespace

void bench_sampler(Bench& bench, const ModelShape& m) {
  SamplingParams greedy;
  greedy.temperature = 0.0f;
  SamplingParams top_p;
  top_p.temperature = 0.7f;
  top_p.top_p = 0.9f;
  for (int batch : {1, 64}) {
    sampler_case(bench, m, batch, greedy, "greedy");
    sampler_case(bench, m, batch, top_p, "temp 0.7, top_p 0.9");
  }
}

}  // namespace engine::bench
