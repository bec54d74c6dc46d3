"""One table from the GPU benchmark's JSON reports: `engine_bench --json` (kernels, and the copy
and GEMM ceilings of the same run), `ember bench latency --json` and `ember bench throughput
--json`. Each figure stands next to its reference, the ratio and the performance target.

    python -m ember.bench_summary --engine-bench K.json --latency L.json --throughput T.json

A report that is missing or unreadable leaves its rows marked "missing" and the exit status 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys

# Output tokens/s the throughput run must reach, by GPU (matched in the device name).
THROUGHPUT_TARGETS = {"H200": 15_000, "H100": 12_000}
BATCH_1_FLOOR_TARGET = 0.85  # of weight bytes / copy bandwidth
DECODE_ATTENTION_TARGET = 0.80  # of the copy bandwidth, batch 64, context 4096
PREFILL_ATTENTION_TARGET = 0.45  # of the GEMM, causal, 4096 tokens, head dim 128
HF_RATIO_TARGET = 10.0


@dataclasses.dataclass
class Row:
    measure: str
    value: str
    reference: str = ""
    ratio: float | None = None
    target: float | None = None  # the least ratio that meets it
    times: bool = False  # ratio printed as "12.3x" rather than "0.64"

    def cells(self) -> list[str]:
        ratio = "" if self.ratio is None else self._ratio(self.ratio)
        target = "" if self.target is None else ">= " + self._ratio(self.target)
        met = "" if self.ratio is None or self.target is None else _met(self.ratio, self.target)
        return [self.measure, self.value, self.reference, ratio, target, met]

    def _ratio(self, value: float) -> str:
        return f"{value:.1f}x" if self.times else f"{value:.2f}"


def _met(ratio: float, target: float) -> str:
    return "yes" if ratio >= target else "NO"


def missing(measure: str, why: str) -> Row:
    return Row(measure, f"missing ({why})")


def find_kernel(report: dict, kernel_words: tuple[str, ...], shape_pattern: str) -> dict | None:
    """The engine_bench result whose kernel name holds every word and whose shape matches; an fp8
    cache's variant only when "fp8" is one of the words."""
    for result in report.get("results", []):
        kernel = result.get("kernel", "")
        if "fp8" in kernel and "fp8" not in kernel_words:
            continue
        if all(w in kernel for w in kernel_words) and re.search(shape_pattern, result["shape"]):
            return result
    return None


def kernel_rows(kernels: dict | None) -> list[Row]:
    decode = "decode attention, batch 64, context 4096 (GB/s of K+V)"
    prefill = "causal prefill attention, 4096 tokens, head dim 128 (TFLOP/s)"
    if kernels is None:
        return [missing(decode, "engine_bench"), missing(prefill, "engine_bench")]
    copy = kernels.get("ceilings", {}).get("copy_gbps")
    gemm = kernels.get("ceilings", {}).get("gemm_tflops")
    rows = []
    found = find_kernel(kernels, ("attention", "decode"), r"\bbatch 64\b.*\bcontext 4096\b")
    if copy is None:
        rows.append(missing(decode, "no copy ceiling"))
    elif found is None or found.get("gbps") is None:
        rows.append(missing(decode, "no such engine_bench case"))
    else:
        rows.append(
            Row(
                decode,
                f"{found['gbps']:,.0f}",
                f"copy {copy:,.0f}",
                found["gbps"] / copy,
                DECODE_ATTENTION_TARGET,
            )
        )
    found = find_kernel(kernels, ("attention", "prefill"), r"^1 x 4096\b")
    if gemm is None:
        rows.append(missing(prefill, "no GEMM ceiling"))
    elif found is None or found.get("tflops") is None:
        rows.append(missing(prefill, "no such engine_bench case"))
    else:
        rows.append(
            Row(
                prefill,
                f"{found['tflops']:,.1f}",
                f"GEMM {gemm:,.1f}",
                found["tflops"] / gemm,
                PREFILL_ATTENTION_TARGET,
            )
        )
    found = find_kernel(kernels, ("attention", "decode", "fp8"), r"\bbatch 64\b.*\bcontext 4096\b")
    if copy is not None and found is not None and found.get("gbps") is not None:
        # No target: what the fp8 cache's decode streams (half the bytes of the bf16 row's).
        rows.append(
            Row(
                "decode attention, fp8 cache, batch 64, context 4096 (GB/s of K+V)",
                f"{found['gbps']:,.0f}",
                f"copy {copy:,.0f}",
                found["gbps"] / copy,
            )
        )
    return rows


def latency_rows(latency: dict | None, copy_gbps: float | None) -> list[Row]:
    floor_measure = "batch-1 decode tok/s"
    if latency is None:
        return [missing(floor_measure, "latency report")]
    by_batch = {r["batch_size"]: r for r in latency["results"]}
    rows = [_floor_row(floor_measure, by_batch.get(1), latency, copy_gbps)]
    for batch, result in by_batch.items():
        if "hf" in result:
            rows.append(
                Row(
                    f"batch-{batch} output tok/s, ember vs HF",
                    f"{result['ember']['output_tokens_per_s']:,.1f}",
                    f"HF {result['hf']['output_tokens_per_s']:,.1f}",
                    result["ratio"],
                    times=True,
                )
            )
    for batch, result in by_batch.items():
        split = result["ember"].get("decode_steps")
        measure = f"host share of a decode step, batch {batch}"
        if split is None or split.get("host_share") is None:
            rows.append(missing(measure, "no step counters"))
            continue
        rows.append(
            Row(
                measure,
                f"{split['host_ms']:.3f} of {split['step_ms']:.3f} ms",
                f"loop wall {split['wall_ms']:.3f} ms/step, "
                f"{split.get('launched_ahead_share', 0.0):.0%} launched ahead",
                split["host_share"],
            )
        )
    return rows


def _floor_row(measure: str, result: dict | None, latency: dict, copy_gbps: float | None) -> Row:
    if result is None or result["ember"].get("decode_tokens_per_s") is None:
        return missing(measure, "no batch-1 decode in the latency report")
    measured = result["ember"]["decode_tokens_per_s"]
    weight_bytes = latency.get("decode_weight_bytes")
    if weight_bytes is None or copy_gbps is None:
        return Row(measure, f"{measured:,.1f}", "no floor (weight bytes or copy GB/s missing)")
    floor = copy_gbps * 1e9 / weight_bytes
    reference = f"floor {floor:,.1f} ({weight_bytes / 1e9:.2f} GB / {copy_gbps:,.0f} GB/s)"
    return Row(measure, f"{measured:,.1f}", reference, measured / floor, BATCH_1_FLOOR_TARGET)


def throughput_roofline(t: dict, copy_gbps: float, gemm_tflops: float) -> dict | None:
    """Seconds the throughput workload needs at the ceilings of the same run, for kernels that
    run one after another: every GEMM flop at the GEMM ceiling (prefill tokens through the body,
    the head for sampled rows only, and causal prefill attention), plus every K/V byte that
    decode attention reads at the copy bandwidth (each output after the first reads its whole
    context). Weight reads at small decode batches, launches and host time are left out, so no
    run can beat it. None when the report lacks the model's shape."""
    shape = t.get("model_shape")
    if not shape:
        return None
    n, i, o = t["num_prompts"], t["input_len"], t["output_len"]
    body, head = shape["body_params"], shape["output_head_params"]
    prefill_flops = n * (
        i * 2 * body + 2 * head + shape["attention_flops_per_key"] * i * (i + 1) / 2
    )
    decode_flops = n * (o - 1) * 2 * (body + head)
    # The output after the first at step j (1..o-1) attends to i + j cached tokens.
    kv_bytes = n * shape["kv_cache_bytes_per_token"] * ((o - 1) * i + (o - 1) * o / 2)
    gemm_s = (prefill_flops + decode_flops) / (gemm_tflops * 1e12)
    kv_s = kv_bytes / (copy_gbps * 1e9)
    return {"gemm_s": gemm_s, "kv_s": kv_s, "output_tokens_per_s": n * o / (gemm_s + kv_s)}


def roofline_row(measure: str, ember: float, t: dict, copy: float | None, gemm: float | None):
    measure = f"{measure}, of its roofline"
    if copy is None or gemm is None:
        return missing(measure, "no engine_bench ceilings")
    roofline = throughput_roofline(t, copy, gemm)
    if roofline is None:
        return missing(measure, "no model shape in the throughput report")
    return Row(
        measure,
        f"{ember:,.0f}",
        f"ceiling {roofline['output_tokens_per_s']:,.0f} ({roofline['gemm_s']:.1f} s of GEMM "
        f"flops + {roofline['kv_s']:.1f} s of K/V reads)",
        ember / roofline["output_tokens_per_s"],
    )


def throughput_rows(
    throughput: dict | None, device_name: str | None, copy: float | None, gemm: float | None
) -> list[Row]:
    measure = "throughput output tok/s"
    if throughput is None:
        return [missing(measure, "throughput report")]
    t = throughput
    measure = f"{measure}, {t['num_prompts']} x ({t['input_len']} in, {t['output_len']} out)"
    ember = t["ember"]["output_tokens_per_s"]
    rows = []
    if "hf" in t:
        hf = t["hf"]
        sample = f"{hf['num_prompts']} of {t['num_prompts']} prompts, batches of {hf['batch_size']}"
        rows.append(
            Row(
                f"{measure}, ember vs HF",
                f"{ember:,.0f}",
                f"HF {hf['output_tokens_per_s']:,.0f} ({sample})",
                t["ratio"],
                HF_RATIO_TARGET,
                times=True,
            )
        )
    else:
        rows.append(missing(f"{measure}, ember vs HF", "run without --compare-hf"))
    gpu = next((g for g in THROUGHPUT_TARGETS if g in (device_name or "")), None)
    if gpu is None:
        rows.append(Row(f"{measure}, absolute", f"{ember:,.0f}", f"no target for {device_name}"))
    else:
        goal = THROUGHPUT_TARGETS[gpu]
        rows.append(
            Row(
                f"{measure}, absolute",
                f"{ember:,.0f}",
                f"target {goal:,} ({gpu})",
                ember / goal,
                1.0,
            )
        )
    rows.append(roofline_row(measure, ember, t, copy, gemm))
    steps = t["ember"].get("steps")
    if steps is not None and steps["num_steps"] > 0:
        step_ms = 1e3 * steps["step_seconds"] / steps["num_steps"]
        host_ms = step_ms - 1e3 * steps["device_wait_seconds"] / steps["num_steps"]
        rows.append(
            Row(
                "host share of a step, throughput run",
                f"{host_ms:.3f} of {step_ms:.3f} ms",
                f"{steps['num_steps']} steps, "
                f"{steps.get('num_steps_launched_ahead', 0)} launched ahead",
                steps["host_share"],
            )
        )
    return rows


def render(rows: list[Row]) -> str:
    header = ["measure", "ember", "reference", "ratio", "target", "met"]
    table = [header] + [r.cells() for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = [
        _table_line(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in table
    ]
    lines.insert(1, _table_line("-" * w for w in widths))
    return "\n".join(lines)


def _table_line(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def load(path: str | None, problems: list[str]) -> dict | None:
    if path is None:
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        problems.append(f"cannot read {path}: {error}")
        return None


def summarize(kernels: dict | None, latency: dict | None, throughput: dict | None) -> str:
    ceilings = (kernels or {}).get("ceilings", {})
    copy, gemm = ceilings.get("copy_gbps"), ceilings.get("gemm_tflops")
    names = [r.get("device_name") or r.get("device") for r in (kernels, latency, throughput) if r]
    device_name = next((n for n in names if n), None)
    rows = (
        latency_rows(latency, copy)
        + kernel_rows(kernels)
        + throughput_rows(throughput, device_name, copy, gemm)
    )
    lines = [f"GPU benchmark summary: {device_name or 'unknown device'}"]
    if copy is not None and gemm is not None:
        lines.append(
            f"ceilings measured by engine_bench in this run: copy {copy:,.0f} GB/s (reads + "
            f"writes), cuBLASLt bf16 8192^3 GEMM {gemm:,.1f} TFLOP/s"
        )
    lines += ["", render(rows), ""]
    lines += notes(latency, throughput)
    return "\n".join(lines)


def notes(latency: dict | None, throughput: dict | None) -> list[str]:
    out = []
    if latency:
        out.append(
            f"- latency: {latency['input_len']} tokens in, {latency['output_len']} out, median "
            f"of {latency['num_iters']} after {latency['warmup']} warm-up; decode tok/s counts "
            "the steps after the first token. The floor reads every weight once per token "
            "(the embedding table excepted: one row); host share = (time in step() - time "
            "blocked on the device) / time in step()."
        )
    if throughput and "hf" in throughput:
        hf = throughput["hf"]
        if hf["num_prompts"] < throughput["num_prompts"]:
            out.append(
                f"- HF throughput was timed on {hf['num_prompts']} of the "
                f"{throughput['num_prompts']} prompts (static batches of {hf['batch_size']}, "
                "eager attention): its batches run one after another and independently, so this "
                "is its rate on whole batches of this shape, not a run over all prompts."
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ember.bench_summary", description=__doc__)
    parser.add_argument("--engine-bench", metavar="PATH", help="engine_bench --json output")
    parser.add_argument("--latency", metavar="PATH", help="ember bench latency --json output")
    parser.add_argument("--throughput", metavar="PATH", help="ember bench throughput --json output")
    args = parser.parse_args(argv)
    problems: list[str] = []
    reports = [load(p, problems) for p in (args.engine_bench, args.latency, args.throughput)]
    print(summarize(*reports))
    for problem in problems:
        print(f"bench_summary: {problem}", file=sys.stderr)
    return 1 if problems or None in reports else 0


if __name__ == "__main__":
    sys.exit(main())
