"""`ember bench serve` against a fake OpenAI-compatible server started here: a few dozen lines
of asyncio HTTP/1.1 that stream SSE chunks with known delays and token counts, so the counts
and statistics the benchmark reports can be checked against what the server did."""

import asyncio
import json
import math
import random
import threading
import time

import numpy as np
import pytest

from ember import bench_serve
from ember.bench_serve import ServeBenchConfig, run_benchmark
from ember.cli import main

MODEL = "fake-model"
ERROR = "the fake server refuses this request"


class FakeServer:
    """GET /v1/models and streaming POST /v1/completions and /v1/chat/completions on 127.0.0.1.
    Each request streams one-token chunks (max_tokens of them, or num_tokens): the first after
    first_delay seconds, each next after token_delay; chat streams a role-only chunk at once,
    as real servers do. Usage counts prompt words. fault(index) picks a failure for the index-th
    request: "http" (a 500 in OpenAI's error shape), "stream" (an error event after one token),
    "garbage" (a chunk that is not JSON after one token) or "no_done" (no [DONE] at the end)."""

    def __init__(
        self,
        first_delay=0.0,
        token_delay=0.0,
        num_tokens=None,
        usage=True,
        api_key=None,
        fault=None,
    ):
        self.first_delay, self.token_delay = first_delay, token_delay
        self.num_tokens, self.usage, self.api_key = num_tokens, usage, api_key
        self.fault = fault or (lambda index: None)
        self.bodies, self.headers = [], []
        self.in_flight = self.max_in_flight = 0
        self.loop = asyncio.new_event_loop()

    def __enter__(self):
        ready = threading.Event()

        def serve():
            asyncio.set_event_loop(self.loop)
            server = self.loop.run_until_complete(asyncio.start_server(self.handle, "127.0.0.1", 0))
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()
            server.close()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        ready.wait()
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)

    async def handle(self, reader, writer):
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, path, _ = head[0].split(" ", 2)
            headers = dict(
                (k.strip().lower(), v.strip()) for k, v in (h.split(":", 1) for h in head[1:] if h)
            )
            body = await reader.readexactly(int(headers.get("content-length", 0)))
            await self.respond(method, path, headers, body, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away
        finally:
            writer.close()

    async def respond(self, method, path, headers, body, writer):
        if self.api_key and headers.get("authorization") != f"Bearer {self.api_key}":
            return write_json(writer, 401, {"error": {"message": "bad key"}})
        if method == "GET" and path == "/v1/models":
            return write_json(writer, 200, {"object": "list", "data": [{"id": MODEL}]})
        request = json.loads(body)
        index = len(self.bodies)
        self.bodies.append(request)
        self.headers.append(headers)
        fault = self.fault(index)
        if fault == "http":
            return write_json(writer, 500, {"error": {"message": ERROR, "code": 500}})
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self.stream(path, request, fault, writer)
        finally:
            self.in_flight -= 1

    async def stream(self, path, request, fault, writer):
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
        )
        chat = path.endswith("/chat/completions")
        send = lambda chunk: writer.write(f"data: {json.dumps(chunk)}\n\n".encode())  # noqa: E731
        if chat:
            send({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        n = self.num_tokens or request.get("max_tokens") or request["max_completion_tokens"]
        for i in range(n):
            await writer.drain()
            await asyncio.sleep(self.first_delay if i == 0 else self.token_delay)
            if fault == "stream" and i == 1:
                send({"error": {"message": ERROR}})
                return await writer.drain()
            if fault == "garbage" and i == 1:
                writer.write(b"data: {not json\n\n")
                return await writer.drain()
            piece = f" w{i}"
            choice = {"index": 0, "delta": {"content": piece}} if chat else {"text": piece}
            send({"choices": [{**choice, "finish_reason": "length" if i == n - 1 else None}]})
        prompt = request["messages"][0]["content"] if chat else request["prompt"]
        if self.usage and request.get("stream_options", {}).get("include_usage"):
            num_prompt = len(prompt.split())
            usage = {"prompt_tokens": num_prompt, "completion_tokens": n}
            send({"choices": [], "usage": {**usage, "total_tokens": num_prompt + n}})
        if fault != "no_done":
            writer.write(b"data: [DONE]\n\n")
        await writer.drain()


def write_json(writer, status, payload):
    body = json.dumps(payload).encode()
    writer.write(
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n\r\n".encode()
        + body
    )


def bench(server, **fields):
    config = ServeBenchConfig(base_url=server.url, **fields)
    return asyncio.run(run_benchmark(config))


# ----- counts and statistics ------------------------------------------------------------------


def test_counts_and_latencies_follow_the_servers_timing():
    first, gap = 0.06, 0.03
    with FakeServer(first_delay=first, token_delay=gap) as server:
        report = bench(server, num_prompts=8, input_len=10, output_len=6)
    s, records = report["summary"], report["requests"]
    assert (s["completed"], s["failed"], s["errors"]) == (8, 0, [])
    assert report["config"]["model"] == MODEL  # the first of /v1/models
    assert all(body["model"] == MODEL for body in server.bodies)
    assert all(body["max_tokens"] == 6 and body["stream"] for body in server.bodies)
    assert all(len(body["prompt"].split()) == 10 for body in server.bodies)
    assert s["total_input_tokens"] == 80 and s["input_tokens_known"]
    assert s["total_output_tokens"] == 48 and s["output_tokens_from"] == ["usage"]
    assert server.max_in_flight == 8  # an infinite rate sends every request at once

    # The server's delays, seen by the client: p50s are robust to a late wake-up or two.
    assert all(len(r["itl"]) == 5 for r in records)
    assert 0.8 * gap * 1e3 <= s["itl_ms"]["p50"] <= gap * 1e3 + 30
    assert 0.8 * gap * 1e3 <= s["tpot_ms"]["p50"] <= gap * 1e3 + 30
    assert first * 1e3 <= s["ttft_ms"]["p50"] <= first * 1e3 + 60
    assert s["e2e_ms"]["p50"] >= (first + 5 * gap) * 1e3

    # The statistics are those of the per-request records.
    itls = np.array([g for r in records for g in r["itl"]]) * 1e3
    assert s["itl_ms"]["mean"] == pytest.approx(itls.mean())
    assert s["itl_ms"]["p99"] == pytest.approx(np.percentile(itls, 99))
    tpots = [(r["e2e"] - r["ttft"]) / 5 * 1e3 for r in records]
    assert s["tpot_ms"]["p90"] == pytest.approx(np.percentile(tpots, 90))
    assert s["e2e_ms"]["mean"] == pytest.approx(np.mean([r["e2e"] for r in records]) * 1e3)
    assert s["request_throughput"] == pytest.approx(8 / s["duration_s"])
    assert s["output_throughput"] == pytest.approx(48 / s["duration_s"])
    assert s["total_token_throughput"] == pytest.approx(128 / s["duration_s"])
    assert s["duration_s"] >= max(r["e2e"] for r in records)


def test_chat_sends_messages_key_and_extras_and_ttft_skips_the_role_chunk():
    first = 0.08
    with FakeServer(first_delay=first, api_key="sk-test") as server:
        report = bench(
            server,
            endpoint="chat",
            model="named-model",
            api_key="sk-test",
            num_prompts=4,
            input_len=5,
            output_len=3,
            ignore_eos=True,
        )
    s = report["summary"]
    assert (s["completed"], s["total_output_tokens"], s["total_input_tokens"]) == (4, 12, 20)
    assert all(h["authorization"] == "Bearer sk-test" for h in server.headers)
    for body in server.bodies:
        assert body["model"] == "named-model" and body["ignore_eos"] is True
        assert body["max_completion_tokens"] == 3 and body["stream_options"]["include_usage"]
        assert [m["role"] for m in body["messages"]] == ["user"]
    assert s["ttft_ms"]["p50"] >= first * 1e3  # the role chunk at once carries no text
    assert "api_key" not in report["config"]


def test_without_usage_tokens_are_counted_by_chunk():
    with FakeServer(usage=False, num_tokens=4) as server:
        report = bench(server, num_prompts=3, input_len=7, output_len=50)
    s = report["summary"]
    assert (s["completed"], s["total_output_tokens"]) == (3, 12)
    assert s["output_tokens_from"] == ["chunks"]
    assert (s["total_input_tokens"], s["input_tokens_known"]) == (0, False)


def test_tokenizer_gives_exact_prompt_lengths_and_counts_output(tmp_path):
    from conftest import train_tokenizer

    tokenizer = train_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    config = ServeBenchConfig(base_url="unused", num_prompts=20, input_len=24, seed=3)
    prompts = bench_serve.make_prompts(config, bench_serve.load_tokenizer(str(tmp_path)))
    for prompt in prompts:
        assert len(tokenizer.encode(prompt.text, add_special_tokens=False)) == prompt.num_tokens
    assert [p.num_tokens for p in prompts] == [24] * 20
    with FakeServer(usage=False, num_tokens=5) as server:
        config = ServeBenchConfig(base_url=server.url, num_prompts=3, input_len=24)
        report = asyncio.run(run_benchmark(config, tokenizer))
    s = report["summary"]
    text = " w0 w1 w2 w3 w4"
    assert s["total_output_tokens"] == 3 * len(tokenizer.encode(text, add_special_tokens=False))
    assert s["output_tokens_from"] == ["tokenizer"] and s["input_tokens_known"]


# ----- failures -------------------------------------------------------------------------------


def test_failed_requests_are_reported_not_raised():
    def fault(index):
        return {1: "http", 2: "stream"}.get(index % 4) or {3: "no_done", 7: "garbage"}.get(index)

    with FakeServer(token_delay=0.005, fault=fault) as server:
        report = bench(server, model=MODEL, num_prompts=12, input_len=3, output_len=4)
    s = report["summary"]
    assert (s["completed"], s["failed"]) == (4, 8)
    errors = {e["message"]: e["count"] for e in s["errors"]}
    garbage = [m for m in errors if m.startswith("JSONDecodeError")]
    assert len(garbage) == 1 and errors.pop(garbage[0]) == 1
    assert errors == {
        f"HTTP 500: {ERROR}": 3,
        f"stream error: {ERROR}": 3,
        "the stream ended without data: [DONE]": 1,
    }
    assert s["total_output_tokens"] == 4 * 4  # only completed requests count
    assert s["request_throughput"] == pytest.approx(4 / s["duration_s"])
    assert sum(r["ok"] for r in report["requests"]) == 4


def test_unreachable_server_fails_every_request_with_its_reason():
    with FakeServer() as server:
        url = server.url  # a port that was just free; nothing listens once the server stops
    report = asyncio.run(run_benchmark(ServeBenchConfig(base_url=url, model=MODEL, num_prompts=3)))
    s = report["summary"]
    assert (s["completed"], s["failed"]) == (0, 3)
    assert s["errors"][0]["message"].startswith("ConnectError")
    assert s["ttft_ms"] == {"mean": None, "p50": None, "p90": None, "p99": None}


# ----- arrivals and concurrency ---------------------------------------------------------------


def test_max_concurrency_caps_requests_in_flight():
    with FakeServer(token_delay=0.01) as server:
        report = bench(server, num_prompts=8, input_len=2, output_len=3, max_concurrency=2)
    assert report["summary"]["completed"] == 8
    assert server.max_in_flight == 2


def test_poisson_arrivals():
    assert bench_serve.arrival_offsets(5, math.inf, random.Random(0)) == [0.0] * 5
    offsets = bench_serve.arrival_offsets(4000, 50.0, random.Random(1))
    gaps = np.diff(offsets)
    assert offsets[0] == 0.0 and (gaps > 0).all()
    assert gaps.mean() == pytest.approx(1 / 50.0, rel=0.05)
    assert gaps.std() == pytest.approx(1 / 50.0, rel=0.1)  # exponential: std = mean
    assert offsets == bench_serve.arrival_offsets(4000, 50.0, random.Random(1))
    with FakeServer() as server:
        start = time.perf_counter()
        report = bench(server, num_prompts=6, input_len=2, output_len=1, request_rate=40.0)
    last = bench_serve.arrival_offsets(6, 40.0, random.Random(0))[-1]
    assert report["summary"]["duration_s"] >= last
    assert time.perf_counter() - start >= last


def test_random_range_ratio_draws_lengths_in_range():
    config = ServeBenchConfig(
        base_url="unused", num_prompts=300, input_len=20, output_len=10, random_range_ratio=0.5
    )
    prompts = bench_serve.make_prompts(config)
    input_lens = {len(p.text.split()) for p in prompts}
    output_lens = {p.max_tokens for p in prompts}
    assert min(input_lens) == 10 and max(input_lens) == 30
    assert min(output_lens) == 5 and max(output_lens) == 15
    same = bench_serve.make_prompts(config)
    assert [p.text for p in same] == [p.text for p in prompts]


# ----- command line ---------------------------------------------------------------------------


def test_cli_prints_the_report_and_writes_json(tmp_path, capsys):
    path = tmp_path / "serve.json"
    with FakeServer(token_delay=0.002) as server:
        argv = ["bench", "serve", "--base-url", server.url + "/v1", "--num-prompts", "3"]
        argv += ["--input-len", "4", "--output-len", "3", "--json", str(path)]
        assert main(argv) == 0
    out = capsys.readouterr().out
    assert "completed requests" in out and "TTFT" in out and "ITL" in out
    report = json.loads(path.read_text())
    assert report["summary"]["completed"] == 3
    assert report["summary"]["total_output_tokens"] == 9
    assert report["config"]["request_rate"] == "inf"


def test_cli_without_a_server_or_model_says_so(capsys):
    with FakeServer() as server:
        url = server.url
    assert main(["bench", "serve", "--base-url", url, "--num-prompts", "1"]) == 2
    assert f"GET {url}/v1/models failed: ConnectError" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--num-prompts", "0"], "--num-prompts must be at least 1, got 0"),
        (["--random-range-ratio", "1"], "--random-range-ratio must be in [0, 1), got 1.0"),
        (["--request-rate", "0"], "--request-rate must be > 0 (or inf), got 0.0"),
        (["--max-concurrency", "0"], "--max-concurrency must be at least 1, got 0"),
    ],
)
def test_cli_rejects_bad_flags(flags, message, capsys):
    assert main(["bench", "serve", "--base-url", "http://127.0.0.1:9", *flags]) == 2
    assert message in capsys.readouterr().err
