"""`ember bench latency`: batch latency and throughput of the engine, optionally against
Hugging Face transformers running model.generate on the same token ids.

Both sides are timed on token ids (no detokenization), greedy, with EOS ignored so every
request produces exactly --output-len tokens. The engine's step counters split each decode
step into host time and time blocked waiting for the device.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time

DEFAULT_PROMPT = "The history of the Roman empire"
BUNDLED_CONFIGS = ("llama-3-8b", "qwen2.5-7b")  # python/ember/configs/<name>/config.json
# EngineStats fields
STEP_COUNTERS = ("num_steps", "step_seconds", "device_wait_seconds", "num_steps_launched_ahead")


def add_latency_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1, 8])
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--input-len", type=int, default=None, help="random prompt of N tokens")
    prompt.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--num-iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--compare-hf", action="store_true", help="also time HF transformers")
    add_report_and_gpu_flags(parser)


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    """--json PATH, which every `ember bench` takes (written by write_json)."""
    parser.add_argument(
        "--json",
        "--output-json",
        dest="json",
        default=None,
        metavar="PATH",
        help="also write the results as JSON to PATH",
    )


def add_report_and_gpu_flags(parser: argparse.ArgumentParser) -> None:
    """Flags the engine benchmarks share: the JSON report and the GPU engine's settings."""
    add_json_flag(parser)
    parser.add_argument(
        "--enforce-eager", action="store_true", help="GPU: run decode steps without CUDA graphs"
    )
    parser.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=None,
        metavar="F",
        help="GPU: the fraction of device memory for weights, activations and KV cache "
        "(default: the engine's, 0.9)",
    )


def bench_engine(args: argparse.Namespace):
    """The engine a benchmark runs: --model may also name a bundled config (random weights).
    Dummy weights come without a tokenizer, so prompts are then random token ids."""
    from pathlib import Path

    from ember.cli import engine_kwargs
    from ember.engine import Engine

    model = args.model
    if model in BUNDLED_CONFIGS:
        model = str(Path(__file__).parent / "configs" / model)
        args.load_format = "dummy"
    dummy = args.load_format == "dummy"
    kwargs = engine_kwargs(args)
    # Passed only when given, so the engine's own defaults stay the single source.
    if getattr(args, "enforce_eager", False):
        kwargs["enforce_eager"] = True
    if getattr(args, "gpu_memory_utilization", None) is not None:
        kwargs["gpu_memory_utilization"] = args.gpu_memory_utilization
    return Engine(model, skip_tokenizer_init=dummy, **kwargs)


def describe_engine(engine) -> dict:
    """What a report says about the engine: model, device, the weight bytes a decode step reads
    (the batch-1 floor's numerator) and the model's shape for the throughput roofline."""
    info = engine.model_info
    on_gpu = info.device.startswith("cuda")
    shape = model_shape(engine.model_dir)
    bytes_per_value = 2 if on_gpu else 4  # the GPU computes in bf16 or fp16, the CPU in fp32
    report = {
        "model": str(engine.model_dir),
        "architecture": info.architecture,
        "device": info.device,
        "device_name": device_name(info.device),
        "cuda_graph_batch_sizes": list(getattr(info, "cuda_graph_batch_sizes", [])),
        "kv_cache_dtype": info.kv_cache_dtype,
        "decode_weight_bytes": None,
        "model_shape": None,
    }
    if shape is not None:
        report["decode_weight_bytes"] = shape.pop("decode_weight_params") * bytes_per_value
        kv_bytes_per_value = 1 if info.kv_cache_dtype == "float8_e4m3fn" else bytes_per_value
        shape["kv_cache_bytes_per_token"] = shape.pop("kv_values_per_token") * kv_bytes_per_value
        report["model_shape"] = shape
    return report


def model_shape(model_dir) -> dict | None:
    """The counts a roofline needs, from transformers' meta device (nothing is allocated):
    - decode_weight_params: what a decode step reads in full, all but the input embedding table
      (one row of it per token, unless the output head shares it);
    - body_params: the parameters every token multiplies (decode_weight_params less the head);
    - output_head_params: the head, applied to sampled rows only;
    - kv_values_per_token: K and V values the cache holds per token, over all layers;
    - attention_flops_per_key: flops of one query against one cached key, over all layers and
      heads (q.k and p.v, a multiply-add each per head dimension).
    None where transformers cannot build the architecture."""
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(model_dir)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception:  # noqa: BLE001 - the figures are optional; the benchmark goes on without
        return None
    total = sum(p.numel() for p in model.parameters())  # a tied table is counted once
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    if output is None or output.weight is not embedding:
        total -= embedding.numel()
    head = 0 if output is None else output.weight.numel()
    text = config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    num_kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    layers = text.num_hidden_layers
    return {
        "decode_weight_params": int(total),
        "body_params": int(total - head),
        "output_head_params": int(head),
        "kv_values_per_token": 2 * layers * num_kv_heads * head_dim,
        "attention_flops_per_key": 4 * layers * text.num_attention_heads * head_dim,
    }


def device_name(device: str) -> str | None:
    if not device.startswith("cuda"):
        return None
    try:
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    except Exception:  # noqa: BLE001 - a name for the report only
        return None


def release_engine_memory(device: str) -> None:
    """Frees the device memory of engines the caller has dropped (an Engine sits in a reference
    cycle, so only the collector frees it) before Hugging Face loads its own copy, and says how
    much is free then."""
    gc.collect()
    if not device.startswith("cuda"):
        return
    try:
        import torch

        free, total = torch.cuda.mem_get_info(torch.device(device))
    except Exception:  # noqa: BLE001 - a diagnostic only
        return
    print(
        f"GPU memory free after releasing ember's engine: {free / 2**30:.1f} of "
        f"{total / 2**30:.1f} GiB",
        file=sys.stderr,
    )


def run_latency(args: argparse.Namespace) -> int:
    _check_latency_flags(args)
    engine = bench_engine(args)
    prompt_ids = _prompt_ids(engine, args)
    report = {
        "benchmark": "latency",
        **describe_engine(engine),
        "input_len": len(prompt_ids),
        "output_len": args.output_len,
        "num_iters": args.num_iters,
        "warmup": args.warmup,
        "results": [
            {"batch_size": batch, "ember": time_ember(engine, prompt_ids, batch, args)}
            for batch in args.batch_size
        ],
    }
    del engine
    release_engine_memory(report["device"])
    if args.compare_hf:
        hf_model = load_hf_model(report["model"], report["device"], args.load_format)
        for result in report["results"]:
            hf = time_hf(hf_model, prompt_ids, result["batch_size"], args)
            result["hf"] = hf
            result["ratio"] = result["ember"]["output_tokens_per_s"] / hf["output_tokens_per_s"]
    _print_table(report)
    if args.json:
        write_json(args.json, report)
    return 0


def write_json(path: str, report: dict) -> None:
    with open(path, "w") as f:
        json.dump(report, f, indent=2, allow_nan=False)
        f.write("\n")


def _check_latency_flags(args: argparse.Namespace) -> None:
    checks = [
        ("--output-len", args.output_len, 1),
        ("--num-iters", args.num_iters, 1),
        ("--warmup", args.warmup, 0),
        ("--input-len", args.input_len if args.input_len is not None else 1, 1),
    ] + [("--batch-size", b, 1) for b in args.batch_size]
    for flag, value, minimum in checks:
        if value < minimum:
            raise ValueError(f"{flag} must be >= {minimum}, got {value}")


def _prompt_ids(engine, args: argparse.Namespace) -> list[int]:
    if args.input_len is not None:
        import numpy as np

        rng = np.random.default_rng(0)
        return rng.integers(0, engine.model_info.vocab_size, args.input_len).tolist()
    tokenizer = engine.get_tokenizer()
    if tokenizer is None:
        raise ValueError("--prompt needs a tokenizer; use --input-len N instead")
    return list(tokenizer(args.prompt).input_ids)


def time_ember(engine, prompt_ids: list[int], batch: int, args: argparse.Namespace) -> dict:
    """Median over --num-iters runs (after --warmup) of one batch of identical prompts."""
    from ember.sampling_params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True)
    core_params = params.to_core()
    runs = [
        _run_batch_once(engine.core, prompt_ids, batch, core_params, f"bench-{batch}-{i}")
        for i in range(args.warmup + args.num_iters)
    ][args.warmup :]
    return _summarize(runs, batch, args.output_len)


def step_counters(core) -> dict | None:
    """The core's cumulative step counters; None for a core without them."""
    stats = core.stats()
    if not all(hasattr(stats, name) for name in STEP_COUNTERS):
        return None
    return {name: getattr(stats, name) for name in STEP_COUNTERS}


def counters_since(before: dict | None, core) -> dict | None:
    after = step_counters(core)
    if before is None or after is None:
        return None
    return {name: after[name] - before[name] for name in STEP_COUNTERS}


def _run_batch_once(core, prompt_ids, batch: int, params, tag: str) -> dict:
    """Elapsed time, time to first token (once every request of the batch has one) and the step
    counters of the decode steps, those after the first token."""
    request_ids = [f"{tag}-{i}" for i in range(batch)]
    started: set[str] = set()
    ttft = None
    decode_start = None
    start = time.perf_counter()
    for request_id in request_ids:
        core.add_request(request_id, prompt_ids, params)
    while core.has_unfinished_requests():
        for output in core.step():
            if any(c.token_ids for c in output.outputs):
                started.add(output.request_id)
        if ttft is None and len(started) == batch:
            ttft = time.perf_counter() - start
            decode_start = step_counters(core)
    elapsed = time.perf_counter() - start
    return {
        "elapsed_s": elapsed,
        "ttft_s": ttft if ttft is not None else elapsed,
        "decode_counters": counters_since(decode_start, core),
    }


def _summarize(runs: list[dict], batch: int, output_len: int) -> dict:
    elapsed = statistics.median(r["elapsed_s"] for r in runs)
    ttft = statistics.median(r["ttft_s"] for r in runs)
    decode_time = elapsed - ttft
    return {
        "elapsed_s": elapsed,
        "ttft_s": ttft,
        "output_tokens_per_s": batch * output_len / elapsed,
        "decode_tokens_per_s": (
            batch * (output_len - 1) / decode_time if decode_time > 0 else None
        ),
        "decode_steps": _decode_step_split(runs),
    }


def _decode_step_split(runs: list[dict]) -> dict | None:
    """Where a decode step's time goes, over all timed runs: host (step() minus the wait for the
    device), device wait, and the wall time of the Python loop around step(); and the share of
    steps launched ahead (async scheduling), whose host time overlapped the device's."""
    counters = [r["decode_counters"] for r in runs]
    if any(c is None for c in counters):
        return None
    num_steps = sum(c["num_steps"] for c in counters)
    if num_steps == 0:
        return None
    step_s = sum(c["step_seconds"] for c in counters)
    wait_s = sum(c["device_wait_seconds"] for c in counters)
    wall_s = sum(r["elapsed_s"] - r["ttft_s"] for r in runs)
    return {
        "num_steps": num_steps,
        "step_ms": 1e3 * step_s / num_steps,
        "host_ms": 1e3 * (step_s - wait_s) / num_steps,
        "device_wait_ms": 1e3 * wait_s / num_steps,
        "wall_ms": 1e3 * wall_s / num_steps,
        "host_share": (step_s - wait_s) / step_s if step_s > 0 else None,
        "launched_ahead_share": sum(c["num_steps_launched_ahead"] for c in counters) / num_steps,
    }


def load_hf_model(model_dir, device: str, load_format: str):
    """The same checkpoint in transformers, eager attention, where ember ran: on the GPU in
    bf16, on the CPU in fp32 with all cores."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    on_gpu = device.startswith("cuda")
    dtype = torch.bfloat16 if on_gpu else torch.float32
    target = torch.device(device if on_gpu else "cpu")
    torch.set_num_threads(os.cpu_count() or 1)
    if load_format == "dummy":
        config = AutoConfig.from_pretrained(model_dir)
        # NOTE: built on its device: random initialisation of 8B parameters on the host takes
        # minutes, on the GPU a second.
        with target:
            model = AutoModelForCausalLM.from_config(
                config, dtype=dtype, attn_implementation="eager"
            )
    else:
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=dtype, attn_implementation="eager"
        )
    return model.to(target).eval()


def hf_generate(model, input_ids, output_len: int) -> int:
    """model.generate of output_len tokens (greedy), finished on the device; returns how many
    tokens it generated per row."""
    import torch

    pad_token_id = model.generation_config.pad_token_id
    if pad_token_id is None:
        pad_token_id = 0
    with torch.inference_mode():
        output_ids = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            min_new_tokens=output_len,
            max_new_tokens=output_len,
            pad_token_id=pad_token_id,
        )
    if input_ids.is_cuda:
        torch.cuda.synchronize(input_ids.device)
    return output_ids.shape[1] - input_ids.shape[1]


def time_hf(model, prompt_ids: list[int], batch: int, args: argparse.Namespace) -> dict:
    import torch

    input_ids = torch.tensor([prompt_ids] * batch, device=model.device)
    times = []
    for _ in range(args.warmup + args.num_iters):
        start = time.perf_counter()
        hf_generate(model, input_ids, args.output_len)
        times.append(time.perf_counter() - start)
    elapsed = statistics.median(times[args.warmup :])
    return {"elapsed_s": elapsed, "output_tokens_per_s": batch * args.output_len / elapsed}


def _print_table(report: dict) -> None:
    print(
        f"input {report['input_len']} tokens, output {report['output_len']} tokens (greedy, EOS "
        f"ignored), {report['device']}; host ms = time in step() not waiting for the device"
    )
    results = report["results"]
    header = (
        f"{'batch':>5}  {'ember tok/s':>11}  {'TTFT ms':>8}  {'decode tok/s':>12}  "
        f"{'step ms':>7}  {'host ms':>7}  {'host %':>6}  {'ahead %':>7}"
    )
    compare = "hf" in results[0]
    if compare:
        header += f"  {'HF tok/s':>9}  {'ember/HF':>8}"
    print(header)
    for result in results:
        e = result["ember"]
        split = e["decode_steps"] or {}
        line = (
            f"{result['batch_size']:>5}  {e['output_tokens_per_s']:>11.1f}  "
            f"{e['ttft_s'] * 1000:>8.1f}  {_fmt(e['decode_tokens_per_s'], '12.1f')}  "
            f"{_fmt(split.get('step_ms'), '7.2f')}  {_fmt(split.get('host_ms'), '7.2f')}  "
            f"{_fmt(split.get('host_share'), '6.1%')}  "
            f"{_fmt(split.get('launched_ahead_share'), '7.1%')}"
        )
        if compare:
            line += f"  {result['hf']['output_tokens_per_s']:>9.1f}  {result['ratio']:>7.2f}x"
        print(line)


def _fmt(value, spec: str) -> str:
    width = int(spec.split(".")[0])
    return f"{'-':>{width}}" if value is None else format(value, ">" + spec)
