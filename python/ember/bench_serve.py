"""`ember bench serve`: a load generator against any OpenAI-compatible server (ember's, vLLM's,
or another's), over HTTP with streaming.

It sends --num-prompts requests of random prompts to /v1/completions or /v1/chat/completions.
Requests arrive as a Poisson process at --request-rate (all at once when it is inf), optionally
capped at --max-concurrency in flight. The report gives request and token throughput, and time
to first token (TTFT), time per output token (TPOT), inter-token latency (ITL) and end-to-end
latency (E2E) at mean / p50 / p90 / p99, as vLLM's `vllm bench serve` defines them:

- TTFT: from sending the request to the first streamed chunk that carries generated text;
- ITL: every gap between two successive such chunks of a request;
- TPOT: a request's (E2E - TTFT) / (output tokens - 1), for requests of two or more tokens.

Token counts come from the server's usage (asked for with stream_options.include_usage) where
it reports them, else from --tokenizer, else one output token per streamed chunk. A request that
gets an HTTP error, an error event in its stream, a broken connection or no [DONE] counts as
failed, with its message; it never stops the benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

from ember.bench import add_json_flag, write_json

ENDPOINTS = {"completions": "/completions", "chat": "/chat/completions"}
NUM_ERRORS_SHOWN = 5

# Random-word prompts (without --tokenizer): common short English words, most of which are one
# token with their leading space in the usual BPE vocabularies, so N words are about N tokens.
_WORD_TEXT = (
    "the of and to in is was for on that with as at by from his her they this have had one "
    "all were there when which their said each she how will up other about out many then them "
    "these some would make like him into time has look two more write go see number way could "
    "people than first water been call who oil its now find long down day did get come made may "
    "part over new sound take only little work know place year live me back give most very after "
    "thing our just name good sentence man think say great where help through much before line "
    "right too mean old any same tell boy follow came want show also around form three small set "
    "put end does another well large must big even such because turn here why ask went men read "
    "need land different home us move try kind hand picture again change off play spell air away "
    "animal house point page letter mother answer found study still learn should world high"
)
WORDS = tuple(_WORD_TEXT.split())


@dataclass
class ServeBenchConfig:
    base_url: str
    model: str | None = None  # None: the first model of GET /v1/models
    endpoint: str = "completions"  # or "chat"
    api_key: str | None = None
    num_prompts: int = 100
    input_len: int = 128
    output_len: int = 128
    random_range_ratio: float = 0.0
    request_rate: float = math.inf  # requests/s of the Poisson arrivals; inf: all at once
    max_concurrency: int | None = None
    seed: int = 0
    ignore_eos: bool = False
    temperature: float = 0.0
    tokenizer: str | None = None
    timeout: float | None = None  # seconds to wait for each chunk; None: no limit

    def validate(self) -> None:
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"--endpoint must be completions or chat, got {self.endpoint!r}")
        for flag, value in (
            ("--num-prompts", self.num_prompts),
            ("--input-len", self.input_len),
            ("--output-len", self.output_len),
        ):
            if value < 1:
                raise ValueError(f"{flag} must be at least 1, got {value}")
        if not 0.0 <= self.random_range_ratio < 1.0:
            raise ValueError(
                f"--random-range-ratio must be in [0, 1), got {self.random_range_ratio}"
            )
        if not self.request_rate > 0.0:
            raise ValueError(f"--request-rate must be > 0 (or inf), got {self.request_rate}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"--max-concurrency must be at least 1, got {self.max_concurrency}")
        if self.timeout is not None and not self.timeout > 0.0:
            raise ValueError(f"--timeout must be > 0 seconds, got {self.timeout}")


@dataclass
class PromptSpec:
    text: str
    max_tokens: int
    num_tokens: int | None = None  # counted by --tokenizer (no special tokens); None without


@dataclass
class RequestResult:
    ok: bool = False
    error: str | None = None
    prompt_tokens: int | None = None
    output_tokens: int = 0
    output_tokens_from: str = "chunks"  # "usage", "tokenizer" or "chunks"
    ttft: float | None = None  # seconds; None when no chunk carried text
    itl: list[float] = field(default_factory=list)  # seconds
    e2e: float = 0.0  # seconds, request sent to stream closed
    text: str = ""


# ----- prompts and arrivals -------------------------------------------------------------------


def length_range(length: int, ratio: float) -> tuple[int, int]:
    """vLLM's symmetric range [length * (1 - ratio), length * (1 + ratio)], at least 1."""
    low = max(1, int(length * (1.0 - ratio)))
    return low, max(low, int(length * (1.0 + ratio)))


def random_words(rng: random.Random, num_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(num_words))


def stable_token_ids(tokenizer) -> list[int]:
    """Non-special tokens that decode to text encoding back to themselves. Random ids outside
    this set (byte pieces of a character, say) decode to replacement characters that re-encode
    to more tokens, and the length never settles."""
    special = set(tokenizer.all_special_ids)
    return [
        i
        for i in range(len(tokenizer))
        if i not in special
        and tokenizer.encode(tokenizer.decode([i]), add_special_tokens=False) == [i]
    ]


def exact_length_text(tokenizer, candidates, rng: random.Random, num_tokens: int):
    """(text, count): text of random candidate tokens that the tokenizer encodes to num_tokens
    tokens. Neighbours may merge once decoded, so a few rounds trim or pad the re-encoded ids;
    count is the true length (the nearest found, should no round hit it exactly)."""
    ids = rng.choices(candidates, k=num_tokens)
    best = None
    for _ in range(10):
        text = tokenizer.decode(ids)
        encoded = tokenizer.encode(text, add_special_tokens=False)
        if best is None or abs(len(encoded) - num_tokens) < abs(best[1] - num_tokens):
            best = (text, len(encoded))
        if len(encoded) == num_tokens:
            break
        ids = encoded[:num_tokens] + rng.choices(candidates, k=max(0, num_tokens - len(encoded)))
    return best


def make_prompts(config: ServeBenchConfig, tokenizer=None) -> list[PromptSpec]:
    rng = random.Random(config.seed)
    input_range = length_range(config.input_len, config.random_range_ratio)
    output_range = length_range(config.output_len, config.random_range_ratio)
    candidates = stable_token_ids(tokenizer) if tokenizer is not None else None
    if candidates == []:
        raise ValueError("--tokenizer has no token that decodes and re-encodes to itself")
    prompts = []
    for _ in range(config.num_prompts):
        num_input = rng.randint(*input_range)
        max_tokens = rng.randint(*output_range)
        if tokenizer is None:
            prompts.append(PromptSpec(random_words(rng, num_input), max_tokens))
        else:
            text, count = exact_length_text(tokenizer, candidates, rng, num_input)
            prompts.append(PromptSpec(text, max_tokens, count))
    return prompts


def arrival_offsets(num_requests: int, request_rate: float, rng: random.Random) -> list[float]:
    """Seconds from the start at which each request is sent: a Poisson process (exponential
    gaps of mean 1 / rate) starting at 0, or all at 0 for an infinite rate."""
    if math.isinf(request_rate):
        return [0.0] * num_requests
    offsets, t = [], 0.0
    for _ in range(num_requests):
        offsets.append(t)
        t += rng.expovariate(request_rate)
    return offsets


# ----- one request ----------------------------------------------------------------------------


def api_root(base_url: str) -> str:
    """The /v1 root: base URLs are accepted with or without it (http://host:8000[/v1])."""
    root = base_url.rstrip("/")
    return root if root.endswith("/v1") else root + "/v1"


def request_payload(config: ServeBenchConfig, model: str, prompt: PromptSpec) -> dict:
    payload = {
        "model": model,
        "temperature": config.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if config.endpoint == "chat":
        payload["messages"] = [{"role": "user", "content": prompt.text}]
        payload["max_completion_tokens"] = prompt.max_tokens
    else:
        payload["prompt"] = prompt.text
        payload["max_tokens"] = prompt.max_tokens
    if config.ignore_eos:
        payload["ignore_eos"] = True  # vLLM's extension; OpenAI itself would reject it
    return payload


def chunk_text(choice: dict) -> str:
    """The generated text of one streamed choice: completions' text, or chat's delta content
    (reasoning models stream their reasoning first, which is output too)."""
    if "text" in choice:
        return choice.get("text") or ""
    delta = choice.get("delta") or {}
    return (delta.get("content") or "") + (delta.get("reasoning_content") or "")


def error_message(status: int, body: bytes) -> str:
    """`HTTP 400: <message>` from OpenAI's error shape, or the start of the body."""
    try:
        error = json.loads(body).get("error")
        message = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        message = None
    if not message:
        message = body.decode("utf-8", "replace").strip()[:200] or "(empty body)"
    return f"HTTP {status}: {message}"


async def read_stream(response, result: RequestResult, start: float) -> dict | None:
    """Consumes the SSE stream into result (text, TTFT, ITL); returns the usage it reported.
    Sets result.error on an error event or a stream that ends without [DONE]."""
    usage, last = None, None
    async for line in response.aiter_lines():
        line = line.strip()
        if not line.startswith("data:"):
            continue  # blank separators, comments (":") and other SSE fields
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            return usage
        now = time.perf_counter()
        chunk = json.loads(data)
        if not isinstance(chunk, dict):
            result.error = f"stream chunk is not a JSON object: {data[:100]}"
            return usage
        if error := chunk.get("error"):
            message = error.get("message", error) if isinstance(error, dict) else error
            result.error = f"stream error: {message}"
            return usage
        usage = chunk.get("usage") or usage
        text = "".join(chunk_text(choice) for choice in chunk.get("choices") or [])
        if not text:
            continue
        if last is None:
            result.ttft = now - start
        else:
            result.itl.append(now - last)
        last = now
        result.text += text
    result.error = "the stream ended without data: [DONE]"
    return usage


def count_tokens(result: RequestResult, usage, prompt: PromptSpec, tokenizer) -> None:
    usage = usage or {}
    result.prompt_tokens = usage.get("prompt_tokens", prompt.num_tokens)
    if usage.get("completion_tokens") is not None:
        result.output_tokens, result.output_tokens_from = usage["completion_tokens"], "usage"
    elif tokenizer is not None:
        result.output_tokens = len(tokenizer.encode(result.text, add_special_tokens=False))
        result.output_tokens_from = "tokenizer"
    else:
        result.output_tokens = len(result.itl) + (result.ttft is not None)


async def send_request(client, url: str, payload: dict, prompt: PromptSpec, tokenizer=None):
    """One streaming request; every failure is caught into the result, never raised."""
    result = RequestResult()
    start = time.perf_counter()
    try:
        async with client.stream("POST", url, json=payload) as response:
            if response.status_code != 200:
                result.error = error_message(response.status_code, await response.aread())
            else:
                usage = await read_stream(response, result, start)
                count_tokens(result, usage, prompt, tokenizer)
    except Exception as error:
        # NOTE: whatever a server sends (broken HTTP, malformed JSON, chunks of the wrong shape)
        # fails this request only; one exception escaping here would end the whole benchmark.
        result.error = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    result.e2e = time.perf_counter() - start
    result.ok = result.error is None
    return result


# ----- the run --------------------------------------------------------------------------------


async def first_model(client, root: str) -> str:
    import httpx

    url = root + "/models"
    try:
        response = await client.get(url)
    except httpx.HTTPError as error:
        raise RuntimeError(f"GET {url} failed: {type(error).__name__}: {error}") from None
    if response.status_code != 200:
        raise RuntimeError(
            f"GET {url} failed: {error_message(response.status_code, response.content)}"
        )
    try:
        return response.json()["data"][0]["id"]
    except (ValueError, LookupError, TypeError):
        raise RuntimeError(f"GET {url} lists no models; pass --model") from None


def load_tokenizer(name: str | None):
    if name is None:
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot load --tokenizer {name}: {error}") from None


async def run_benchmark(config: ServeBenchConfig, tokenizer=None) -> dict:
    """Runs the whole benchmark; returns the report (config, summary, per-request records)."""
    import httpx

    config.validate()
    prompts = make_prompts(config, tokenizer)
    offsets = arrival_offsets(config.num_prompts, config.request_rate, random.Random(config.seed))
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    # NOTE: one connection per request in flight, and no pool timeout: with an infinite rate
    # every request is sent at once, and none may fail for waiting on the client's own pool.
    limits = httpx.Limits(max_connections=config.max_concurrency or config.num_prompts)
    timeout = httpx.Timeout(config.timeout, connect=30.0, pool=None)
    root = api_root(config.base_url)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=timeout) as client:
        model = config.model or await first_model(client, root)
        url = root + ENDPOINTS[config.endpoint]
        slots = (
            asyncio.Semaphore(config.max_concurrency)
            if config.max_concurrency
            else contextlib.nullcontext()
        )

        async def one(prompt: PromptSpec, offset: float) -> RequestResult:
            await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
            async with slots:
                payload = request_payload(config, model, prompt)
                return await send_request(client, url, payload, prompt, tokenizer)

        start = time.perf_counter()
        results = await asyncio.gather(*(one(p, o) for p, o in zip(prompts, offsets, strict=True)))
        duration = time.perf_counter() - start
    return {
        "config": config_record(config, model),
        "summary": summarize(results, duration),
        "requests": [request_record(r) for r in results],
    }


# ----- statistics and the report --------------------------------------------------------------


def distribution_ms(values_s: list[float]) -> dict:
    """Mean and percentiles (numpy's linear interpolation, as vLLM) in ms; None when empty."""
    import numpy as np

    if not values_s:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    ms = np.asarray(values_s, dtype=np.float64) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"mean": float(ms.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99)}


def first_errors(results: list[RequestResult]) -> list[dict]:
    counts = Counter(r.error for r in results if not r.ok)
    return [{"message": m, "count": c} for m, c in list(counts.items())[:NUM_ERRORS_SHOWN]]


def summarize(results: list[RequestResult], duration: float) -> dict:
    done = [r for r in results if r.ok]
    input_tokens = sum(r.prompt_tokens or 0 for r in done)
    output_tokens = sum(r.output_tokens for r in done)
    per_second = 1.0 / duration if duration > 0 else 0.0
    tpots = [
        (r.e2e - r.ttft) / (r.output_tokens - 1)
        for r in done
        if r.ttft is not None and r.output_tokens > 1
    ]
    return {
        "completed": len(done),
        "failed": len(results) - len(done),
        "errors": first_errors(results),
        "duration_s": duration,
        "total_input_tokens": input_tokens,
        "input_tokens_known": all(r.prompt_tokens is not None for r in done),
        "total_output_tokens": output_tokens,
        "output_tokens_from": sorted({r.output_tokens_from for r in done}),
        "request_throughput": len(done) * per_second,
        "output_throughput": output_tokens * per_second,
        "total_token_throughput": (input_tokens + output_tokens) * per_second,
        "ttft_ms": distribution_ms([r.ttft for r in done if r.ttft is not None]),
        "tpot_ms": distribution_ms(tpots),
        "itl_ms": distribution_ms([gap for r in done for gap in r.itl]),
        "e2e_ms": distribution_ms([r.e2e for r in done]),
    }


def config_record(config: ServeBenchConfig, model: str) -> dict:
    record = asdict(config)
    record.pop("api_key")  # never written to a report
    record["model"] = model
    if math.isinf(record["request_rate"]):
        record["request_rate"] = "inf"  # JSON has no infinity
    return record


def request_record(result: RequestResult) -> dict:
    record = asdict(result)
    del record["text"]
    return record


def format_report(report: dict) -> str:
    s, c = report["summary"], report["config"]
    rate = c["request_rate"]
    lines = [
        f"ember bench serve: {c['endpoint']} at {c['base_url']}, model {c['model']}",
        f"request rate {rate}/s, max concurrency {c['max_concurrency'] or 'none'}",
        f"{'completed requests':<34}{s['completed']}",
        f"{'failed requests':<34}{s['failed']}",
    ]
    lines += [f"  {e['count']} x {e['message']}" for e in s["errors"]]
    input_tokens = str(s["total_input_tokens"]) + ("" if s["input_tokens_known"] else " (partial)")
    lines += [
        f"{'duration (s)':<34}{s['duration_s']:.2f}",
        f"{'input tokens':<34}{input_tokens}",
        f"{'output tokens':<34}{s['total_output_tokens']} ({', '.join(s['output_tokens_from'])})",
        f"{'requests/s':<34}{s['request_throughput']:.2f}",
        f"{'output tokens/s':<34}{s['output_throughput']:.1f}",
        f"{'total tokens/s':<34}{s['total_token_throughput']:.1f}",
        f"{'(ms)':<10}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}",
    ]
    for name in ("ttft", "tpot", "itl", "e2e"):
        values = s[f"{name}_ms"]
        cells = "".join(
            f"{values[k]:>10.2f}" if values[k] is not None else f"{'-':>10}"
            for k in ("mean", "p50", "p90", "p99")
        )
        lines.append(f"{name.upper():<10}{cells}")
    return "\n".join(lines)


# ----- command line ---------------------------------------------------------------------------


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base-url", required=True, help="the server, e.g. http://localhost:8000 (or .../v1)"
    )
    parser.add_argument(
        "--model",
        default=None,
        help="model name sent in requests (default: the first of /v1/models)",
    )
    parser.add_argument("--endpoint", choices=sorted(ENDPOINTS), default="completions")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("OPENAI_API_KEY") or os.environ.get("EMBER_API_KEY"),
        help="sent as Authorization: Bearer KEY (default: $OPENAI_API_KEY, else $EMBER_API_KEY)",
    )
    parser.add_argument("--num-prompts", type=int, default=100)
    parser.add_argument("--input-len", type=int, default=128, help="prompt length in tokens")
    parser.add_argument("--output-len", type=int, default=128, help="max_tokens of each request")
    parser.add_argument(
        "--random-range-ratio",
        type=float,
        default=0.0,
        help="draw each length uniformly from [len * (1 - R), len * (1 + R)], R in [0, 1)",
    )
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer (directory or Hugging Face id) for prompts of exactly --input-len tokens "
        "and for token counts when the server reports no usage (default: random words)",
    )
    parser.add_argument(
        "--request-rate",
        type=float,
        default=math.inf,
        help="requests/s, Poisson arrivals (default: inf, all sent at once)",
    )
    parser.add_argument("--max-concurrency", type=int, default=None, help="requests in flight")
    parser.add_argument("--seed", type=int, default=0, help="for prompts and arrival times")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument(
        "--ignore-eos", action="store_true", help="send vLLM's ignore_eos: exactly max_tokens"
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds to wait for each chunk (default: none)"
    )
    add_json_flag(parser)


def run_serve(args: argparse.Namespace) -> int:
    config = ServeBenchConfig(
        base_url=args.base_url,
        model=args.model,
        endpoint=args.endpoint,
        api_key=args.api_key,
        num_prompts=args.num_prompts,
        input_len=args.input_len,
        output_len=args.output_len,
        random_range_ratio=args.random_range_ratio,
        request_rate=args.request_rate,
        max_concurrency=args.max_concurrency,
        seed=args.seed,
        ignore_eos=args.ignore_eos,
        temperature=args.temperature,
        tokenizer=args.tokenizer,
        timeout=args.timeout,
    )
    config.validate()  # bad flags fail before a tokenizer loads
    report = asyncio.run(run_benchmark(config, load_tokenizer(config.tokenizer)))
    print(format_report(report))
    if args.json:
        write_json(args.json, report)
    return 0 if report["summary"]["completed"] > 0 else 1
