"""The GPU benchmark's summary table (ember.bench_summary) on hand-made reports: each ratio is
the measured figure over its reference from the same run, and missing reports are marked."""

import json

import pytest

from ember import bench_summary

COPY_GBPS = 4000.0
GEMM_TFLOPS = 800.0


def kernels_report():
    return {
        "device": "NVIDIA H100 80GB HBM3",
        "ceilings": {"copy_gbps": COPY_GBPS, "gemm_tflops": GEMM_TFLOPS},
        "results": [
            {"kernel": "attention decode", "shape": "batch 64, context 512, 32/8 heads", "gbps": 1},
            {"kernel": "attention decode", "shape": "batch 64, context 4096", "gbps": 3400.0},
            {"kernel": "attention prefill (causal)", "shape": "8 x 512 tokens", "tflops": 1},
            {"kernel": "attention prefill (causal)", "shape": "1 x 4096 tokens", "tflops": 400.0},
        ],
    }


def latency_report(decode_tokens_per_s=200.0, weight_bytes=16e9):
    step = {"step_ms": 5.0, "host_ms": 0.5, "wall_ms": 5.2, "host_share": 0.1}
    return {
        "device": "cuda:0",
        "device_name": "NVIDIA H100 80GB HBM3",
        "decode_weight_bytes": weight_bytes,
        "input_len": 128,
        "output_len": 64,
        "num_iters": 3,
        "warmup": 1,
        "results": [
            {
                "batch_size": 1,
                "ember": {
                    "output_tokens_per_s": 150.0,
                    "decode_tokens_per_s": decode_tokens_per_s,
                    "decode_steps": step,
                },
                "hf": {"output_tokens_per_s": 25.0},
                "ratio": 6.0,
            }
        ],
    }


def throughput_report(ember_tokens_per_s=13000.0):
    return {
        "device": "cuda:0",
        "device_name": "NVIDIA H100 80GB HBM3",
        "num_prompts": 1000,
        "input_len": 1024,
        "output_len": 1024,
        "ember": {"output_tokens_per_s": ember_tokens_per_s},
        "hf": {"num_prompts": 64, "batch_size": 64, "output_tokens_per_s": 1000.0},
        "ratio": ember_tokens_per_s / 1000.0,
    }


def rows_by_measure(text):
    """{measure: [ember, reference, ratio, target, met]} from the printed markdown table."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 6 and not set(cells[0]) <= {"-"}:
            rows[cells[0]] = cells[1:]
    return rows


def test_ratios_against_the_ceilings_of_the_same_run():
    text = bench_summary.summarize(kernels_report(), latency_report(), throughput_report())
    rows = rows_by_measure(text)
    floor = COPY_GBPS * 1e9 / 16e9  # 250 tokens/s
    assert rows["batch-1 decode tok/s"][2:] == [f"{200.0 / floor:.2f}", ">= 0.85", "NO"]
    assert "floor 250.0" in rows["batch-1 decode tok/s"][1]
    decode = rows["decode attention, batch 64, context 4096 (GB/s of K+V)"]
    assert decode[2:] == [f"{3400 / COPY_GBPS:.2f}", ">= 0.80", "yes"]
    prefill = rows["causal prefill attention, 4096 tokens, head dim 128 (TFLOP/s)"]
    assert prefill[2:] == [f"{400 / GEMM_TFLOPS:.2f}", ">= 0.45", "yes"]
    shape = "1000 x (1024 in, 1024 out)"
    assert rows[f"throughput output tok/s, {shape}, ember vs HF"][2:] == [
        "13.0x",
        ">= 10.0x",
        "yes",
    ]
    # An H100 is held to 12,000 output tokens/s.
    absolute = rows[f"throughput output tok/s, {shape}, absolute"]
    assert absolute[1] == "target 12,000 (H100)"
    assert absolute[2:] == [f"{13000 / 12000:.2f}", ">= 1.00", "yes"]
    roofline = rows[f"throughput output tok/s, {shape}, of its roofline"]
    assert roofline[0].startswith("missing (no model shape")
    assert rows["host share of a decode step, batch 1"][2] == "0.10"
    assert "timed on 64 of the 1000 prompts" in text


def test_missing_reports_are_marked_and_fail_the_run(tmp_path, capsys):
    kernels = tmp_path / "kernels.json"
    kernels.write_text(json.dumps(kernels_report()))
    status = bench_summary.main(
        ["--engine-bench", str(kernels), "--latency", str(tmp_path / "absent.json")]
    )
    assert status == 1
    rows = rows_by_measure(capsys.readouterr().out)
    assert rows["batch-1 decode tok/s"][0].startswith("missing")
    assert rows["throughput output tok/s"][0].startswith("missing")
    assert rows["decode attention, batch 64, context 4096 (GB/s of K+V)"][2] == "0.85"


@pytest.mark.parametrize("name", ["NVIDIA H200", "NVIDIA H100 PCIe", "NVIDIA A100"])
def test_throughput_target_follows_the_gpu(name):
    rows = bench_summary.throughput_rows(throughput_report(), name, COPY_GBPS, GEMM_TFLOPS)
    absolute = next(r for r in rows if r.measure.endswith("absolute"))
    want = {"NVIDIA H200": 15_000, "NVIDIA H100 PCIe": 12_000}.get(name)
    assert absolute.ratio == (None if want is None else pytest.approx(13000 / want))


def test_throughput_roofline_adds_the_gemm_flops_and_the_kv_reads():
    report = throughput_report(ember_tokens_per_s=100.0)
    report.update(num_prompts=2, input_len=4, output_len=3)
    report["model_shape"] = {
        "body_params": 10**9,
        "output_head_params": 10**8,
        "kv_cache_bytes_per_token": 10**9,
        "attention_flops_per_key": 10**7,
    }
    # Per prompt: prefill 4 tokens through the body, the head once, 4 * 5 / 2 causal pairs;
    # two decode tokens through body and head, attending to 5 and 6 cached tokens.
    gemm_s = 2 * (4 * 2e9 + 2e8 + 10 * 1e7 + 2 * 2 * 1.1e9) / 1e12
    kv_s = 2 * (5 + 6) * 1e9 / 1e12
    roofline = bench_summary.throughput_roofline(report, copy_gbps=1000.0, gemm_tflops=1.0)
    assert roofline["gemm_s"] == pytest.approx(gemm_s)
    assert roofline["kv_s"] == pytest.approx(kv_s)
    assert roofline["output_tokens_per_s"] == pytest.approx(6 / (gemm_s + kv_s))
    rows = bench_summary.throughput_rows(report, "NVIDIA H200", 1000.0, 1.0)
    row = next(r for r in rows if r.measure.endswith("of its roofline"))
    assert row.ratio == pytest.approx(100.0 * (gemm_s + kv_s) / 6)
    assert "s of GEMM flops" in row.reference


def test_fp8_cache_cases_get_their_own_row_and_never_stand_for_bf16_ones():
    report = kernels_report()
    # engine_bench may list the fp8 cache's cases first: they must not answer the bf16 targets.
    report["results"][:0] = [
        {
            "kernel": "attention decode, fp8 cache",
            "shape": "batch 64, context 4096, 32/8 heads",
            "gbps": 2000.0,
        },
        {
            "kernel": "attention prefill (causal), fp8 cache",
            "shape": "1 x 4096 tokens",
            "tflops": 1,
        },
    ]
    rows = {row.measure: row for row in bench_summary.kernel_rows(report)}
    assert rows["decode attention, batch 64, context 4096 (GB/s of K+V)"].ratio == pytest.approx(
        3400.0 / COPY_GBPS
    )
    prefill = rows["causal prefill attention, 4096 tokens, head dim 128 (TFLOP/s)"]
    assert prefill.ratio == pytest.approx(400.0 / GEMM_TFLOPS)
    fp8 = rows["decode attention, fp8 cache, batch 64, context 4096 (GB/s of K+V)"]
    assert fp8.ratio == pytest.approx(2000.0 / COPY_GBPS)
    assert fp8.target is None
