"""`ember bench latency`: batch latency and throughput of the engine, optionally against
Hugging Face transformers running model.generate on the same token ids.

Both sides are timed on token ids (no detokenization), greedy, with EOS ignored so every
request produces exactly --output-len tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

DEFAULT_PROMPT = "The history of the Roman empire"


def add_latency_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1, 8])
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--input-len", type=int, default=None, help="random prompt of N tokens")
    prompt.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--num-iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--compare-hf", action="store_true", help="also time HF transformers")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results here")


BUNDLED_CONFIGS = ("llama-3-8b", "qwen2.5-7b")  # python/ember/configs/<name>/config.json


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
    return Engine(model, skip_tokenizer_init=dummy, **engine_kwargs(args))


def run_latency(args: argparse.Namespace) -> int:
    _check_latency_flags(args)
    engine = bench_engine(args)
    prompt_ids = _prompt_ids(engine, args)
    results = [
        {"batch_size": batch, "ember": time_ember(engine, prompt_ids, batch, args)}
        for batch in args.batch_size
    ]
    if args.compare_hf:
        hf_model = load_hf_model(engine, args.load_format)
        for result in results:
            hf = time_hf(hf_model, prompt_ids, result["batch_size"], args)
            result["hf"] = hf
            result["ratio"] = result["ember"]["output_tokens_per_s"] / hf["output_tokens_per_s"]
    _print_table(results, len(prompt_ids), args.output_len)
    if args.json:
        report = {
            "model": str(engine.model_dir),
            "input_len": len(prompt_ids),
            "output_len": args.output_len,
            "results": results,
        }
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


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


def _run_batch_once(core, prompt_ids, batch: int, params, tag: str) -> tuple[float, float]:
    """(elapsed, time to first token) in seconds; the first token counts once every request
    of the batch has one."""
    request_ids = [f"{tag}-{i}" for i in range(batch)]
    started: set[str] = set()
    ttft = None
    start = time.perf_counter()
    for request_id in request_ids:
        core.add_request(request_id, prompt_ids, params)
    while core.has_unfinished_requests():
        for output in core.step():
            if any(c.token_ids for c in output.outputs):
                started.add(output.request_id)
        if ttft is None and len(started) == batch:
            ttft = time.perf_counter() - start
    elapsed = time.perf_counter() - start
    return elapsed, ttft if ttft is not None else elapsed


def _summarize(runs: list[tuple[float, float]], batch: int, output_len: int) -> dict:
    elapsed = statistics.median(r[0] for r in runs)
    ttft = statistics.median(r[1] for r in runs)
    decode_time = elapsed - ttft
    return {
        "elapsed_s": elapsed,
        "ttft_s": ttft,
        "output_tokens_per_s": batch * output_len / elapsed,
        "decode_tokens_per_s": (
            batch * (output_len - 1) / decode_time if decode_time > 0 else float("nan")
        ),
    }


def load_hf_model(engine, load_format: str):
    """The same checkpoint in transformers, eager attention, where ember runs: on the GPU in
    bf16, on the CPU in fp32 with all cores."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    on_gpu = engine.model_info.device.startswith("cuda")
    dtype = torch.bfloat16 if on_gpu else torch.float32
    torch.set_num_threads(os.cpu_count() or 1)
    if load_format == "dummy":
        config = AutoConfig.from_pretrained(engine.model_dir)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="eager")
    else:
        model = AutoModelForCausalLM.from_pretrained(
            engine.model_dir, dtype=dtype, attn_implementation="eager"
        )
    return model.to(engine.model_info.device if on_gpu else "cpu").eval()


def time_hf(model, prompt_ids: list[int], batch: int, args: argparse.Namespace) -> dict:
    import torch

    input_ids = torch.tensor([prompt_ids] * batch, device=model.device)
    pad_token_id = model.generation_config.pad_token_id
    if pad_token_id is None:
        pad_token_id = model.generation_config.eos_token_id or 0
    times = []
    for _ in range(args.warmup + args.num_iters):
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=False,
                min_new_tokens=args.output_len,
                max_new_tokens=args.output_len,
                pad_token_id=pad_token_id,
            )
        if input_ids.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    elapsed = statistics.median(times[args.warmup :])
    return {"elapsed_s": elapsed, "output_tokens_per_s": batch * args.output_len / elapsed}


def _print_table(results: list[dict], input_len: int, output_len: int) -> None:
    print(f"input {input_len} tokens, output {output_len} tokens (greedy, EOS ignored)")
    header = f"{'batch':>5}  {'ember tok/s':>11}  {'TTFT ms':>8}  {'decode tok/s':>12}"
    compare = "hf" in results[0]
    if compare:
        header += f"  {'HF tok/s':>9}  {'ember/HF':>8}"
    print(header)
    for result in results:
        e = result["ember"]
        line = (
            f"{result['batch_size']:>5}  {e['output_tokens_per_s']:>11.1f}  "
            f"{e['ttft_s'] * 1000:>8.1f}  {e['decode_tokens_per_s']:>12.1f}"
        )
        if compare:
            line += f"  {result['hf']['output_tokens_per_s']:>9.1f}  {result['ratio']:>7.2f}x"
        print(line)
