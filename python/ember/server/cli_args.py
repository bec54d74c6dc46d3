"""`ember serve`'s flags and entry point. Imports nothing heavy: FastAPI, uvicorn and the
engine load only when the command runs."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ember.server.config import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_N

API_KEY_ENV = "EMBER_API_KEY"


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        nargs="?",
        default=None,
        help="checkpoint directory, .gguf file or cached Hugging Face id "
        "(default: the embedded SmolLM2-135M-Instruct)",
    )
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on")
    server.add_argument("--port", type=int, default=8000)
    server.add_argument(
        "--api-key",
        default=None,
        help=f"require 'Authorization: Bearer KEY' on every route but /health "
        f"(default: ${API_KEY_ENV} if set)",
    )
    server.add_argument(
        "--served-model-name",
        nargs="+",
        default=None,
        metavar="NAME",
        help="names clients may send as `model`; responses carry the first (default: MODEL)",
    )
    server.add_argument(
        "--chat-template", type=Path, default=None, help="a Jinja chat template file"
    )
    server.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="larger request bodies get 413 (default: %(default)s)",
    )
    server.add_argument(
        "--max-n", type=int, default=DEFAULT_MAX_N, help="largest n per request (default: 16)"
    )
    server.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="on SIGTERM, seconds to let requests in flight finish (default: 30)",
    )
    server.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])

    engine = parser.add_argument_group("engine")
    engine.add_argument("--tokenizer", default=None, help="tokenizer folder (default: MODEL's)")
    engine.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    engine.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    engine.add_argument("--max-model-len", type=int, default=None)
    engine.add_argument("--block-size", type=int, default=16)
    engine.add_argument("--max-num-seqs", type=int, default=256)
    engine.add_argument("--max-num-batched-tokens", type=int, default=2048)
    engine.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    engine.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    engine.add_argument("--no-prefix-caching", action="store_true")
    engine.add_argument("--load-format", default="auto", help="auto (safetensors) or dummy")
    engine.add_argument("--seed", type=int, default=0, help="the engine's default seed")
    engine.add_argument("--num-threads", type=int, default=0, help="CPU threads (0: all)")
    # Imported here: ember.cli imports this module.
    from ember.cli import add_async_scheduling_flag, add_kv_cache_dtype_flag

    add_kv_cache_dtype_flag(engine)
    add_async_scheduling_flag(engine)


def run_serve(args: argparse.Namespace) -> int:
    try:
        from ember.server.launcher import run_server
    except ImportError as error:
        raise RuntimeError(
            f"ember serve needs FastAPI, uvicorn and prometheus-client ({error}); "
            "pip install 'ember[serve]'"
        ) from None
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    chat_template = args.chat_template.read_text() if args.chat_template else None
    engine_kwargs = {
        "tokenizer": args.tokenizer,
        "dtype": args.dtype,
        "device": args.device,
        "max_model_len": args.max_model_len,
        "block_size": args.block_size,
        "max_num_seqs": args.max_num_seqs,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "enforce_eager": args.enforce_eager,
        "enable_prefix_caching": not args.no_prefix_caching,
        "load_format": args.load_format,
        "kv_cache_dtype": args.kv_cache_dtype,
        "seed": args.seed,
        "num_threads": args.num_threads,
        "async_scheduling": args.async_scheduling,
    }
    config_fields = {
        "served_model_names": args.served_model_name,
        "api_key": api_key or None,
        "chat_template": chat_template,
        "max_body_bytes": args.max_body_bytes,
        "max_n": args.max_n,
    }
    return run_server(
        args.model,
        config_fields,
        engine_kwargs,
        host=args.host,
        port=args.port,
        shutdown_timeout=args.shutdown_timeout,
        log_level=args.log_level,
    )
