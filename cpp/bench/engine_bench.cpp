// engine_bench: times each CUDA kernel of a Llama-3-8B-shaped layer (bf16) and the CPU sampler,
// and prints achieved GB/s and TFLOP/s as ratios of two ceilings measured in the same run (a
// device-to-device copy and a cuBLASLt 8192^3 GEMM). See `engine_bench --help`.

#include <cstdio>
#include <exception>

#include "bench_util.h"
#include "cases.h"
#include "common/cuda_check.h"
#include "common/device.h"

int main(int argc, char** argv) {
  using namespace engine::bench;
  try {
    bool help = false;
    const Options options = parse_options(argc, argv, help);
    if (help) {
      std::fputs(usage(), stdout);
      return 0;
    }
    if (engine::cuda::cuda_device_count() == 0) {
      std::fprintf(stderr, "engine_bench: no usable CUDA device\n");
      return 1;
    }
    Bench bench(options);
    engine::cuda::Gemm gemm;
    const ModelShape model;
    bench_ceilings(bench, gemm);
    bench_attention(bench, model);
    bench_norm(bench, model);
    bench_rope(bench, model);
    bench_activation(bench, model);
    bench_gemm(bench, model, gemm);
    bench_sampler(bench, model);
    EMBER_CUDA_CHECK(cudaDeviceSynchronize());
    bench.print_table();
    if (options.json_path) bench.write_json(*options.json_path);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "engine_bench: %s\n", e.what());
    std::fputs(usage(), stderr);
    return 1;
  }
}
