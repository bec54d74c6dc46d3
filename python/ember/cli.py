"""The `ember` command: generate, chat, bench. Errors print one line and exit with status 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import ember
from ember import bench as bench_command
from ember import bench_serve, bench_throughput
from ember.server import cli_args as serve_command


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.run(args) or 0
    except (ValueError, RuntimeError, OSError) as error:
        print(f"ember: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ember", description="ember: an LLM inference engine")
    parser.add_argument("--version", action="version", version=f"ember {ember.__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    generate = commands.add_parser("generate", help="complete one prompt and print the text")
    generate.add_argument("prompt", help="the prompt text")
    generate.add_argument("--chat", action="store_true", help="apply the model's chat template")
    add_chat_template_flag(generate)
    add_model_flags(generate)
    add_sampling_flags(generate)
    generate.set_defaults(run=run_generate)

    chat = commands.add_parser("chat", help="chat interactively; /exit or end of input quits")
    add_chat_template_flag(chat)
    add_model_flags(chat)
    add_sampling_flags(chat)
    chat.set_defaults(run=run_chat)

    bench = commands.add_parser("bench", help="benchmarks")
    bench_kinds = bench.add_subparsers(title="benchmarks", metavar="BENCHMARK", required=True)
    latency = bench_kinds.add_parser("latency", help="batch latency and throughput")
    bench_command.add_latency_flags(latency)
    add_model_flags(latency)
    latency.set_defaults(run=bench_command.run_latency)
    throughput = bench_kinds.add_parser("throughput", help="offline throughput, random dataset")
    bench_throughput.add_throughput_flags(throughput)
    add_model_flags(throughput)
    throughput.set_defaults(run=bench_throughput.run_throughput)
    serve_bench = bench_kinds.add_parser(
        "serve", help="load generator against an OpenAI-compatible server"
    )
    bench_serve.add_serve_flags(serve_bench)
    serve_bench.set_defaults(run=bench_serve.run_serve)

    serve = commands.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API")
    serve_command.add_serve_flags(serve)
    serve.set_defaults(run=serve_command.run_serve)
    return parser


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and engine")
    group.add_argument(
        "--model",
        default=None,
        help="checkpoint directory, .gguf file or cached Hugging Face id "
        "(default: the embedded SmolLM2-135M-Instruct)",
    )
    group.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    group.add_argument("--max-model-len", type=int, default=None)
    group.add_argument("--block-size", type=int, default=16)
    group.add_argument("--max-num-seqs", type=int, default=256)
    group.add_argument("--max-num-batched-tokens", type=int, default=2048)
    group.add_argument("--no-prefix-caching", action="store_true")
    group.add_argument("--device", default="auto")
    group.add_argument("--load-format", default="auto", help="auto (safetensors) or dummy")
    add_kv_cache_dtype_flag(group)
    add_async_scheduling_flag(group)


def add_kv_cache_dtype_flag(group) -> None:
    group.add_argument(
        "--kv-cache-dtype",
        default="auto",
        choices=["auto", "fp8", "fp8_e4m3"],
        help="the KV cache's element type: auto (the compute dtype) or fp8 (e4m3, half the "
        "bytes of bf16; K/V scales of 1)",
    )


def add_async_scheduling_flag(group) -> None:
    group.add_argument(
        "--async-scheduling",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="schedule each step while the device runs the one before "
        "(default: on with a GPU, off on the CPU)",
    )


def add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--max-tokens", type=int, default=128)
    group.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    group.add_argument("--top-p", type=float, default=1.0)
    group.add_argument("--top-k", type=int, default=0)
    group.add_argument("--min-p", type=float, default=0.0)
    group.add_argument("--seed", type=int, default=None)
    group.add_argument("--stop", nargs="+", default=None, metavar="S", help="stop strings")
    group.add_argument("--n", type=int, default=1, help="number of samples")
    group.add_argument("--logprobs", type=int, default=None, metavar="N")


def add_chat_template_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--chat-template", type=Path, default=None, help="a Jinja chat template file"
    )


def engine_kwargs(args: argparse.Namespace) -> dict:
    return {
        "dtype": args.dtype,
        "max_model_len": args.max_model_len,
        "block_size": args.block_size,
        "max_num_seqs": args.max_num_seqs,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "enable_prefix_caching": not args.no_prefix_caching,
        "device": args.device,
        "load_format": args.load_format,
        "kv_cache_dtype": args.kv_cache_dtype,
        "async_scheduling": args.async_scheduling,
    }


def sampling_params_from(args: argparse.Namespace):
    return ember.SamplingParams(
        n=args.n,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        min_p=args.min_p,
        seed=args.seed,
        stop=args.stop,
        max_tokens=args.max_tokens,
        logprobs=args.logprobs,
    )


def _chat_template(args: argparse.Namespace) -> str | None:
    if args.chat_template is None:
        return None
    return args.chat_template.read_text()


def run_generate(args: argparse.Namespace) -> int:
    params = sampling_params_from(args)  # bad flags fail before the model loads
    engine = ember.Engine(args.model, **engine_kwargs(args))
    if args.chat:
        conversation = [{"role": "user", "content": args.prompt}]
        (output,) = engine.chat(conversation, params, False, _chat_template(args))
    else:
        (output,) = engine.generate(args.prompt, params, use_tqdm=False)
    for completion in output.outputs:
        if len(output.outputs) > 1:
            print(f"--- sample {completion.index} ---")
        print(completion.text)
        if completion.logprobs is not None:
            _print_logprobs(completion)
    return 0


def _print_logprobs(completion) -> None:
    print("--- logprobs: token, logprob, rank; then the top-N ---")
    for token_id, entry in zip(completion.token_ids, completion.logprobs, strict=False):
        sampled = entry[token_id]
        top = ", ".join(
            f"{lp.decoded_token!r} {lp.logprob:.3f}"
            for lp in sorted(entry.values(), key=lambda lp: -lp.logprob)
        )
        print(f"{sampled.decoded_token!r}\t{sampled.logprob:.4f}\t{sampled.rank}\t[{top}]")


def run_chat(args: argparse.Namespace) -> int:
    params = sampling_params_from(args)
    if params.n != 1:
        raise ValueError(f"chat streams one reply; --n must be 1, got {params.n}")
    engine = ember.Engine(args.model, **engine_kwargs(args))
    template = _chat_template(args)
    engine.chat_prompt([{"role": "user", "content": "hi"}], template)  # fail early, no template
    history: list[dict] = []
    while (line := _read_user_line()) is not None:
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        prompt = engine.chat_prompt(history, template)
        reply = []
        for delta in engine.stream(prompt, params):
            sys.stdout.write(delta)
            sys.stdout.flush()
            reply.append(delta)
        sys.stdout.write("\n")
        sys.stdout.flush()
        history.append({"role": "assistant", "content": "".join(reply)})
    return 0


def _read_user_line() -> str | None:
    """The next user message; None on end of input or /exit."""
    if sys.stdin.isatty():
        print("> ", end="", file=sys.stderr, flush=True)
    line = sys.stdin.readline()
    if not line:
        return None
    line = line.rstrip("\r\n")
    return None if line.strip() == "/exit" else line
