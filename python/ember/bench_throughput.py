"""`ember bench throughput`: offline throughput on a random dataset of N prompts with fixed
input and output lengths (EOS ignored), all submitted at once, as vLLM's benchmark does.
--compare-hf runs Hugging Face transformers on the same prompts in static batches (eager) in the
same run and prints the ratio."""

from __future__ import annotations

import argparse
import json
import time

from ember.bench import bench_engine, load_hf_model


def add_throughput_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--compare-hf", action="store_true", help="also time HF transformers")
    parser.add_argument("--hf-batch-size", type=int, default=64, help="HF's static batch size")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results here")


def run_throughput(args: argparse.Namespace) -> int:
    for flag in ("num_prompts", "input_len", "output_len", "hf_batch_size"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    engine = bench_engine(args)
    prompts = random_prompts(args.num_prompts, args.input_len, engine.model_info.vocab_size)
    result = {
        "num_prompts": args.num_prompts,
        "input_len": args.input_len,
        "output_len": args.output_len,
        "ember": time_ember(engine, prompts, args),
    }
    if args.compare_hf:
        result["hf"] = time_hf(load_hf_model(engine, args.load_format), prompts, args)
        result["ratio"] = (
            result["ember"]["output_tokens_per_s"] / result["hf"]["output_tokens_per_s"]
        )
    print_result(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
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
    start = time.perf_counter()
    outputs = engine.core.generate(prompts, [params.to_core()])
    elapsed = time.perf_counter() - start
    num_output = sum(len(o.outputs[0].token_ids) for o in outputs)
    return summarize(elapsed, len(prompts), num_output, len(prompts) * args.input_len)


def time_hf(model, prompts: list[list[int]], args: argparse.Namespace) -> dict:
    import torch

    start = time.perf_counter()
    num_output = 0
    for begin in range(0, len(prompts), args.hf_batch_size):
        batch = torch.tensor(prompts[begin : begin + args.hf_batch_size], device=model.device)
        with torch.inference_mode():
            out = model.generate(
                batch,
                attention_mask=torch.ones_like(batch),
                do_sample=False,
                min_new_tokens=args.output_len,
                max_new_tokens=args.output_len,
                pad_token_id=0,
            )
        num_output += (out.shape[1] - batch.shape[1]) * batch.shape[0]
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return summarize(elapsed, len(prompts), num_output, len(prompts) * args.input_len)


def summarize(elapsed: float, num_requests: int, num_output: int, num_input: int) -> dict:
    return {
        "elapsed_s": elapsed,
        "requests_per_s": num_requests / elapsed,
        "output_tokens_per_s": num_output / elapsed,
        "total_tokens_per_s": (num_output + num_input) / elapsed,
    }


def print_result(result: dict) -> None:
    print(
        f"{result['num_prompts']} prompts, input {result['input_len']} tokens, "
        f"output {result['output_len']} tokens (greedy, EOS ignored)"
    )
    print(f"{'':>6}  {'requests/s':>10}  {'output tok/s':>12}  {'total tok/s':>11}  {'time s':>7}")
    for name in ("ember", "hf"):
        if name in result:
            r = result[name]
            print(
                f"{name:>6}  {r['requests_per_s']:>10.2f}  {r['output_tokens_per_s']:>12.1f}  "
                f"{r['total_tokens_per_s']:>11.1f}  {r['elapsed_s']:>7.2f}"
            )
    if "ratio" in result:
        print(f"ember / HF output tokens/s: {result['ratio']:.2f}x")
