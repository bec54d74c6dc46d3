// The dense GEMMs of a layer and the output head through engine::cuda::Gemm (cuBLASLt), and the
// two ceilings of the run: a device-to-device copy and a bf16 8192^3 GEMM.

#include <string>
#include <vector>

#include "cases.h"
#include "common/cuda_check.h"

namespace engine::bench {
namespace {

// One linear layer out = x @ weight^T at T tokens; out_dtype f32 for the logits, as the engine.
struct Linear {
  int64_t n, k;
  DType out_dtype = DType::kBF16;
};

// Times the group of linears as one region (the engine runs q, k and v as three GEMMs).
void gemm_case(Bench& bench, cuda::Gemm& gemm, const std::string& kernel,
               const std::vector<Linear>& linears, int64_t num_tokens) {
  int64_t sum_n = 0;
  for (const Linear& l : linears) sum_n += l.n;
  const int64_t k = linears.front().k;
  const std::string shape = "T " + std::to_string(num_tokens) + ", N " + std::to_string(sum_n) +
                            ", K " + std::to_string(k);
  if (!bench.selected(kernel, shape)) return;
  DeviceTensor x(DType::kBF16, {num_tokens, k});
  x.random();
  std::vector<DeviceTensor> weights, outs;
  double bytes = 2.0 * num_tokens * k, flops = 0;
  for (const Linear& l : linears) {
    weights.emplace_back(DType::kBF16, std::vector<int64_t>{l.n, l.k});
    weights.back().random(-0.05f, 0.05f);
    outs.emplace_back(l.out_dtype, std::vector<int64_t>{num_tokens, l.n});
    bytes += 2.0 * l.n * l.k + double(dtype_size(l.out_dtype)) * num_tokens * l.n;
    flops += 2.0 * num_tokens * l.n * l.k;
  }
  const double us = bench.time_device_us([&] {
    for (size_t i = 0; i < linears.size(); ++i)
      gemm.linear(outs[i].t(), x.t(), weights[i].t(), nullptr, nullptr);
  });
  const std::string note = linears.size() > 1 ? std::to_string(linears.size()) + " GEMMs" : "";
  bench.add(kernel, shape, us, bytes, flops,
            note + (linears.back().out_dtype == DType::kF32 ? "f32 logits" : ""));
}

}  // namespace

Ceilings bench_ceilings(Bench& bench, cuda::Gemm& gemm) {
  Ceilings c;
  {
    const int64_t elems = int64_t(1) << 30;  // 2 GiB of bf16
    DeviceTensor src(DType::kBF16, {elems}), dst(DType::kBF16, {elems});
    src.random();
    const double us = bench.time_device_us(
        [&] {
          EMBER_CUDA_CHECK(cudaMemcpyAsync(dst.t().data, src.t().data, src.t().nbytes(),
                                           cudaMemcpyDeviceToDevice, nullptr));
        },
        /*flush_l2=*/false);
    const double bytes = 2.0 * double(src.t().nbytes());
    c.copy_gbps = bytes / (us * 1e3);
    bench.add("ceiling: D2D cudaMemcpy", "2 GiB", us, bytes, 0, "reads + writes");
  }
  {
    const int64_t n = 8192;
    DeviceTensor a(DType::kBF16, {n, n}), b(DType::kBF16, {n, n}), out(DType::kBF16, {n, n});
    a.random();
    b.random();
    const double us = bench.time_device_us(
        [&] { gemm.linear(out.t(), a.t(), b.t(), nullptr, nullptr); }, /*flush_l2=*/false);
    const double flops = 2.0 * n * n * n;
    c.gemm_tflops = flops / (us * 1e6);
    bench.add("ceiling: cuBLASLt GEMM bf16", "8192x8192x8192", us, 0, flops, "");
  }
  bench.set_ceilings(c);
  return c;
}

void bench_gemm(Bench& bench, const ModelShape& m, cuda::Gemm& gemm) {
  const int64_t q_out = m.num_q_heads * m.head_dim, kv_out = m.num_kv_heads * m.head_dim;
  for (int64_t t : {1, 64, 4096}) {
    gemm_case(bench, gemm, "gemm qkv_proj",
              {{q_out, m.hidden}, {kv_out, m.hidden}, {kv_out, m.hidden}}, t);
    gemm_case(bench, gemm, "gemm o_proj", {{m.hidden, q_out}}, t);
    gemm_case(bench, gemm, "gemm gate_up_proj", {{2 * m.intermediate, m.hidden}}, t);
    gemm_case(bench, gemm, "gemm down_proj", {{m.hidden, m.intermediate}}, t);
    gemm_case(bench, gemm, "gemm lm_head", {{m.vocab, m.hidden, DType::kF32}}, t);
  }
}

}  // namespace engine::bench
