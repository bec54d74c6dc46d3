"""`ember bench throughput`: offline throughput on a random dataset of N prompts with fixed
input and output lengths (EOS ignored), all submitted at once, as vLLM's benchmark does.

--compare-hf times Hugging Face transformers in the same run on static batches (eager) of the
same prompts. Its batches run one after another and do not interact, so its rate over N prompts
is its rate over whole batches: --hf-num-prompts (default one batch) times only that many, and
the report says so.
"""

from __future__ import annotations

import argparse
import time

from ember.bench import (
    add_report_and_gpu_flags,
    bench_engine,
    counters_since,
    describe_engine,
    hf_generate,
    load_hf_model,
    release_engine_memory,
    step_counters,
    write_json,
)


def add_throughput_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--compare-hf", action="store_true", help="also time HF transformers")
    parser.add_argument("--hf-batch-size", type=int, default=64, help="HF's static batch size")
    parser.add_argument(
        "--hf-num-prompts",
        type=int,
        default=None,
        metavar="N",
        help="time HF on the first N prompts only (default: one static batch, or all prompts "
        "if fewer); its batches are independent, so the rate is its rate on whole batches",
    )
    add_report_and_gpu_flags(parser)


def run_throughput(args: argparse.Namespace) -> int:
    if args.hf_num_prompts is None:
        args.hf_num_prompts = min(args.num_prompts, args.hf_batch_size)
    for flag in ("num_prompts", "input_len", "output_len", "hf_batch_size", "hf_num_prompts"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.hf_num_prompts > args.num_prompts:
        raise ValueError(
            f"--hf-num-prompts must be <= --num-prompts ({args.num_prompts}), "
            f"got {args.hf_num_prompts}"
        )
    engine = bench_engine(args)
    prompts = random_prompts(args.num_prompts, args.input_len, engine.model_info.vocab_size)
    result = {
        "benchmark": "throughput",
        **describe_engine(engine),
        "num_prompts": args.num_prompts,
        "input_len": args.input_len,
        "output_len": args.output_len,
        "ember": time_ember(engine, prompts, args),
    }
    del engine
    release_engine_memory(result["device"])
    if args.compare_hf:
        hf_model = load_hf_model(result["model"], result["device"], args.load_format)
        result["hf"] = time_hf(hf_model, prompts[: args.hf_num_prompts], args)
        result["ratio"] = (
            result["ember"]["output_tokens_per_s"] / result["hf"]["output_tokens_per_s"]
        )
    print_result(result)
    if args.json:
        write_json(args.json, result)
    return 0


def random_prompts(num_prompts: int, input_len: int, vocab_size: int) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.integers(0, vocab_size, (num_prompts, input_len)).tolist()


def time_ember(engine, prompts: list[list[int]], args: argparse.Namespace) -> dict:
    from ember.sampling_params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True)
    # A short warm-up (one prompt) so one-time costs are not counted.
    engine.core.generate([prompts[0][:8]], [SamplingParams(max_tokens=2).to_core()])
    before = step_counters(engine.core)
    start = time.perf_counter()
    outputs = engine.core.generate(prompts, [params.to_core()])
    elapsed = time.perf_counter() - start
    num_output = sum(len(o.outputs[0].token_ids) for o in outputs)
    result = summarize(elapsed, len(prompts), num_output, len(prompts) * args.input_len)
    counters = counters_since(before, engine.core)
    if counters is not None and counters["step_seconds"] > 0:
        host_s = counters["step_seconds"] - counters["device_wait_seconds"]
        result["steps"] = {**counters, "host_share": host_s / counters["step_seconds"]}
    return result


def time_hf(model, prompts: list[list[int]], args: argparse.Namespace) -> dict:
    import torch

    # Untimed warm-up: CUDA context, cuBLAS handles and kernels load on the first call.
    hf_generate(model, torch.tensor(prompts[:1], device=model.device), 2)
    start = time.perf_counter()
    num_output = 0
    for begin in range(0, len(prompts), args.hf_batch_size):
        batch = torch.tensor(prompts[begin : begin + args.hf_batch_size], device=model.device)
        num_output += hf_generate(model, batch, args.output_len) * batch.shape[0]
    elapsed = time.perf_counter() - start
    result = summarize(elapsed, len(prompts), num_output, len(prompts) * args.input_len)
    result["batch_size"] = args.hf_batch_size
    return result


def summarize(elapsed: float, num_requests: int, num_output: int, num_input: int) -> dict:
    return {
        "num_prompts": num_requests,
        "elapsed_s": elapsed,
        "requests_per_s": num_requests / elapsed,
        "output_tokens_per_s": num_output / elapsed,
        "total_tokens_per_s": (num_output + num_input) / elapsed,
    }


def print_result(result: dict) -> None:
    print(
        f"{result['num_prompts']} prompts, input {result['input_len']} tokens, "
        f"output {result['output_len']} tokens (greedy, EOS ignored), {result['device']}"
    )
    print(
        f"{'':>6}  {'requests/s':>10}  {'output tok/s':>12}  {'total tok/s':>11}  "
        f"{'time s':>7}  {'prompts':>7}"
    )
    for name in ("ember", "hf"):
        if name in result:
            r = result[name]
            print(
                f"{name:>6}  {r['requests_per_s']:>10.2f}  {r['output_tokens_per_s']:>12.1f}  "
                f"{r['total_tokens_per_s']:>11.1f}  {r['elapsed_s']:>7.2f}  {r['num_prompts']:>7}"
            )
    if "hf" in result and result["hf"]["num_prompts"] < result["num_prompts"]:
        hf = result["hf"]
        print(
            f"HF was timed on the first {hf['num_prompts']} of the {result['num_prompts']} "
            f"prompts (static batches of {hf['batch_size']}): its batches are independent, so "
            "this is its rate on whole batches of this shape, not a run over every prompt."
        )
    if "ratio" in result:
        print(f"ember / HF output tokens/s: {result['ratio']:.2f}x")
