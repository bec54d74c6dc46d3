"""Clients that give up: their requests are aborted in the engine at once, and the server is left
as if they had never come (nothing running or waiting, the KV cache free)."""

import asyncio
import time

import httpx

from conftest import SERVER_API_KEY

AUTH = {"Authorization": f"Bearer {SERVER_API_KEY}"}
LONG = {"model": "tiny", "prompt": "The river", "max_tokens": 250, "ignore_eos": True}
# 4 samples of 250 tokens each: 800 sequences, more than the 256 that run at once, so that the
# tiny model (a few ms per step) is still busy with them when their clients give up.
NUM_SAMPLES = 4
NUM_STORM_CLIENTS = 200
GIVE_UP_AFTER_S = 0.5


def engine_state(base_url: str) -> dict[str, float]:
    text = httpx.get(f"{base_url}/metrics", headers=AUTH, timeout=10).text
    state = {}
    for line in text.splitlines():
        for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"):
            if line.startswith(f"ember:{name}{{"):
                state[name] = float(line.rsplit(" ", 1)[1])
    return state


def wait_until_idle(base_url: str, timeout: float) -> dict[str, float]:
    """Polls /metrics until nothing runs or waits and no KV block is used; returns the last."""
    deadline = time.monotonic() + timeout
    while True:
        state = engine_state(base_url)
        if not any(state.values()) or time.monotonic() > deadline:
            return state
        time.sleep(0.05)


async def _give_up_streaming(client: httpx.AsyncClient) -> tuple[int, bool]:
    """Streams LONG and closes the connection after GIVE_UP_AFTER_S; returns the number of
    chunks received by then, and whether the stream ended first (a request admitted at once can
    finish its 1,000 tokens in about that time on a fast, idle machine)."""
    start = time.monotonic()
    num_chunks = 0
    body = {**LONG, "n": NUM_SAMPLES, "stream": True}
    async with client.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            num_chunks += line.startswith("data: {")
            if line == "data: [DONE]":
                return num_chunks, True
            if time.monotonic() - start > GIVE_UP_AFTER_S:
                break
    return num_chunks, False


async def _storm(base_url: str) -> list[tuple[int, bool]]:
    limits = httpx.Limits(max_connections=NUM_STORM_CLIENTS + 10)
    async with httpx.AsyncClient(
        base_url=base_url, headers=AUTH, timeout=60, limits=limits
    ) as client:
        return await asyncio.gather(*(_give_up_streaming(client) for _ in range(NUM_STORM_CLIENTS)))


def test_cancellation_storm_frees_everything(tiny_server):
    results = asyncio.run(_storm(tiny_server.base_url))
    assert sum(n > 0 for n, _ in results) > NUM_STORM_CLIENTS // 2  # most had started
    # At most the first wave (256 running sequences: 64 requests) can finish in time; the
    # rest are cancelled mid-stream.
    assert sum(finished for _, finished in results) <= 256 // NUM_SAMPLES
    state = wait_until_idle(tiny_server.base_url, timeout=5)
    assert state == {
        "num_requests_running": 0.0,
        "num_requests_waiting": 0.0,
        "kv_cache_usage_perc": 0.0,
    }
    start = time.monotonic()
    response = httpx.post(
        f"{tiny_server.base_url}/v1/completions",
        json={**LONG, "max_tokens": 20},
        headers=AUTH,
        timeout=5,
    )
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 20
    assert time.monotonic() - start < 5
    assert "Traceback" not in tiny_server.log()
