#pragma once
// engine_bench's cases, one function per kernel family. Each skips the shapes that --only
// filters out, allocates its inputs (random, never zeros), times and records.

#include "bench_util.h"
#include "gemm/gemm.h"

namespace engine::bench {

// Llama-3-8B, bf16: the shapes every case is sized by.
struct ModelShape {
  int64_t hidden = 4096;
  int64_t num_q_heads = 32;
  int64_t num_kv_heads = 8;
  int64_t head_dim = 128;
  int64_t intermediate = 14336;
  int64_t vocab = 128256;
  int64_t block_size = 16;
  double rope_theta = 500000.0;
};

// Measures and records the copy and GEMM ceilings; every ratio of the run is taken against them.
Ceilings bench_ceilings(Bench& bench, cuda::Gemm& gemm);
void bench_attention(Bench& bench, const ModelShape& m);
void bench_norm(Bench& bench, const ModelShape& m);
void bench_rope(Bench& bench, const ModelShape& m);
void bench_activation(Bench& bench, const ModelShape& m);
void bench_gemm(Bench& bench, const ModelShape& m, cuda::Gemm& gemm);
void bench_sampler(Bench& bench, const ModelShape& m);

}  // namespace engine::bench
