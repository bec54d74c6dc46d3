"""1,000 concurrent streaming clients against `ember serve` on the CPU with the tiny model: every
request completes or gets a clear error (an HTTP error or an error event, never a dropped
connection), and /health, probed from another process meanwhile, answers within 100 ms.

The clients speak HTTP/1.1 over plain asyncio streams and all connect at once: a full HTTP
client library would spend more of the two CPU cores than the server does and measure itself.
Run alone to see the figures: pytest -s tests_py/test_server_load.py
"""

import asyncio
import json
import subprocess
import sys
import time

from server_util import ServerProcess

NUM_CLIENTS = 1000
MAX_TOKENS = 8
HEALTH_LIMIT_S = 0.100

# A separate process, so that the latency measured is the server's, not this test's event loop.
PROBE = """
import json, os, sys, time, httpx
url, stop_file = sys.argv[1], sys.argv[2]
latencies = []
with httpx.Client(timeout=10) as client:
    while not os.path.exists(stop_file):
        start = time.perf_counter()
        status = client.get(url).status_code
        latencies.append((time.perf_counter() - start, status))
        time.sleep(0.005)
print(json.dumps(latencies))
"""


def _dechunk(body: bytes) -> bytes:
    """A body in HTTP/1.1 chunked transfer encoding, decoded."""
    parts, position = [], 0
    while True:
        line_end = body.index(b"\r\n", position)
        size = int(body[position:line_end].split(b";")[0], 16)
        if size == 0:
            return b"".join(parts)
        parts.append(body[line_end + 2 : line_end + 2 + size])
        position = line_end + 2 + size + 2


def _outcome(response: bytes) -> str:
    """'completed', 'error' (a clear one) or 'failed: ...' (anything else)."""
    head, _, body = response.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 "):
        return f"failed: no HTTP response: {response[:80]!r}"
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    if status != 200:
        return "error" if "error" in json.loads(body) else f"failed: {status} without an error"
    events = [line[6:] for line in body.decode().split("\n") if line.startswith("data: ")]
    if not events or events[-1] != "[DONE]":
        return "failed: the stream did not end with [DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    if any("error" in chunk for chunk in chunks):
        return "error"
    finishes = [c["finish_reason"] for chunk in chunks for c in chunk["choices"]]
    num_tokens = sum(1 for chunk in chunks for c in chunk["choices"] if c["text"])
    if finishes[-1] != "length" or not 1 <= num_tokens <= MAX_TOKENS:
        return f"failed: finish {finishes[-1]}, {num_tokens} text chunks"
    return "completed"


async def _one_client(port: int, index: int) -> str:
    body = json.dumps(
        {
            "model": "tiny",
            "prompt": f"Request {index}: the river",
            "max_tokens": MAX_TOKENS,
            "ignore_eos": True,
            "stream": True,
        }
    ).encode()
    request = (
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        response = await asyncio.wait_for(reader.read(), timeout=300)
        writer.close()
    except (OSError, asyncio.TimeoutError) as error:
        return f"failed: {error!r}"
    return _outcome(response)


async def _run_clients(port: int) -> tuple[list[str], float]:
    start = time.perf_counter()
    outcomes = await asyncio.gather(*(_one_client(port, i) for i in range(NUM_CLIENTS)))
    return outcomes, time.perf_counter() - start


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def test_thousand_streaming_clients(tiny_checkpoint, tmp_path):
    with ServerProcess(
        tiny_checkpoint("llama"), "--served-model-name", "tiny", log_dir=tmp_path
    ) as server:
        stop_file = tmp_path / "stop-probing"
        probe = subprocess.Popen(
            [sys.executable, "-c", PROBE, f"{server.base_url}/health", str(stop_file)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(0.3)  # a few probes of the idle server first
            outcomes, seconds = asyncio.run(_run_clients(server.port))
            time.sleep(0.1)
        finally:
            stop_file.touch()
            probe_output, _ = probe.communicate(timeout=30)
        log = server.log()
    probes = json.loads(probe_output)
    latencies = [latency for latency, _ in probes]
    completed = outcomes.count("completed")
    errors = outcomes.count("error")
    failures = [o for o in outcomes if o.startswith("failed")]
    print(
        f"\n{NUM_CLIENTS} concurrent streaming clients x {MAX_TOKENS} tokens in {seconds:.2f} s: "
        f"{completed} completed, {errors} clear errors, {len(failures)} failed; "
        f"/health over {len(latencies)} probes: p50 {1000 * _percentile(latencies, 0.5):.1f} ms, "
        f"p99 {1000 * _percentile(latencies, 0.99):.1f} ms, max {1000 * max(latencies):.1f} ms"
    )
    assert failures == [], failures[:5]
    assert completed + errors == NUM_CLIENTS
    assert all(status == 200 for _, status in probes)
    assert max(latencies) < HEALTH_LIMIT_S
    assert "Traceback" not in log
