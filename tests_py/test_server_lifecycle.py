"""Disconnects, a dying engine, draining and SIGTERM.

A scripted fake engine (server_util.FakeEngine, AsyncEngine's contract with steps as slow as a
test needs) stands in where the tiny model would finish before anything could happen to it;
SIGTERM is tested on `ember serve` itself."""

import asyncio
import json
import threading
import time

import httpx
import pytest

from conftest import train_tokenizer
from ember import cli
from ember.server.config import ServerConfig
from server_util import FakeEngine, InProcessServer, ServerProcess

COMPLETION = {"prompt": "The river", "max_tokens": 40}
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 40}


def fake_server(shutdown_timeout: float = 30.0, **engine_fields):
    engine = FakeEngine(train_tokenizer(), **engine_fields)
    config = ServerConfig(served_model_names=["fake"])
    return engine, InProcessServer(engine, config, shutdown_timeout=shutdown_timeout)


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


async def _disconnect_after(base_url: str, path: str, body: dict, seconds: float) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        if body.get("stream"):

            async def read():
                async with client.stream("POST", path, json=body) as response:
                    async for _ in response.aiter_lines():
                        pass

            task = asyncio.ensure_future(read())
        else:
            task = asyncio.ensure_future(client.post(path, json=body))
        await asyncio.sleep(seconds)
        assert not task.done()
        task.cancel()  # closes the connection
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
@pytest.mark.parametrize("phase", ["waiting for the first token", "generating"])
def test_disconnect_aborts_the_request_at_once(path, stream, phase):
    delay = 30.0 if phase == "waiting for the first token" else 0.0
    engine, server = fake_server(step_seconds=0.05, first_token_delay=delay)
    with server:
        body = {**(COMPLETION if path == "/v1/completions" else CHAT), "stream": stream}
        asyncio.run(_disconnect_after(server.base_url, path, body, 0.4))
        assert wait_for(lambda: len(engine.aborted) == 1, timeout=1.0)
        assert engine.aborted == engine.started
        assert engine.num_running == 0
        assert wait_for(lambda: server.server.config.app.state.ember.num_in_flight == 0, 1.0)


def _sse_events(response) -> list:
    events = [line[len("data: ") :] for line in response.iter_lines() if line]
    return [e if e == "[DONE]" else json.loads(e) for e in events]


def test_engine_death_gives_503_and_ends_streams_with_an_error():
    engine, server = fake_server(step_seconds=0.05)
    with server, httpx.Client(base_url=server.base_url, timeout=30) as http:
        assert http.get("/health").status_code == 200
        with http.stream("POST", "/v1/completions", json={**COMPLETION, "stream": True}) as r:
            lines = r.iter_lines()
            first = next(line for line in lines if line)
            assert json.loads(first[len("data: ") :])["choices"][0]["text"] == " tok0"
            engine.die()
            rest = [json.loads(x[6:]) if x != "data: [DONE]" else "[DONE]" for x in lines if x]
        assert rest[-1] == "[DONE]"
        error = rest[-2]["error"]
        assert error["type"] == "service_unavailable_error"
        assert "the engine loop has died" in error["message"]
        health = http.get("/health")
        assert health.status_code == 503
        assert "forward pass failed" in health.json()["error"]["message"]
        for path, body in (("/v1/completions", COMPLETION), ("/v1/chat/completions", CHAT)):
            response = http.post(path, json=body)
            assert response.status_code == 503
            assert "the engine loop has died" in response.json()["error"]["message"]
        assert http.get("/v1/models").status_code == 200  # what does not need the engine


def test_engine_dying_before_the_first_token_is_a_503():
    engine, server = fake_server(first_token_delay=0.3)
    with server, httpx.Client(base_url=server.base_url, timeout=30) as http:

        def die_soon():
            time.sleep(0.1)
            engine.die()

        threading.Thread(target=die_soon).start()
        response = http.post("/v1/completions", json={**COMPLETION, "stream": True})
        assert response.status_code == 503
        assert "the engine loop has died" in response.json()["error"]["message"]


def test_real_engine_death_mid_stream(tiny_checkpoint):
    from ember import AsyncEngine

    engine = AsyncEngine(str(tiny_checkpoint("llama")), device="cpu")
    server = InProcessServer(engine, ServerConfig(served_model_names=["tiny"]))
    body = {"prompt": "The river", "max_tokens": 250, "ignore_eos": True, "stream": True}
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as http:
            with http.stream("POST", "/v1/completions", json=body) as response:
                lines = response.iter_lines()
                next(line for line in lines if line)
                engine._core.fail_next_step("the forward pass failed (injected)")
                rest = [line for line in lines if line]
            assert rest[-1] == "data: [DONE]"
            error = json.loads(rest[-2][len("data: ") :])["error"]
            assert "the forward pass failed (injected)" in error["message"]
            assert error["type"] == "service_unavailable_error"
            health = http.get("/health")
            assert health.status_code == 503
            assert "injected" in health.json()["error"]["message"]
            refused = http.post("/v1/chat/completions", json=CHAT)
            assert refused.status_code == 503
    finally:
        server.stop()
        engine.shutdown()


def test_drain_finishes_requests_in_flight_and_refuses_new_ones():
    engine, server = fake_server(step_seconds=0.02)
    with server, httpx.Client(base_url=server.base_url, timeout=30) as http:
        body = {**COMPLETION, "stream": True}
        with http.stream("POST", "/v1/completions", json=body) as response:
            lines = response.iter_lines()
            next(line for line in lines if line)  # the first token is out
            server.drain()
            assert wait_for(lambda: server.server.config.app.state.ember.draining, 1.0)
            refused = httpx.post(f"{server.base_url}/v1/completions", json=COMPLETION)
            assert refused.status_code == 503
            assert "shutting down" in refused.json()["error"]["message"]
            assert http.get("/health").status_code == 503
            rest = [line for line in lines if line]
        chunks = [json.loads(line[6:]) for line in rest[:-1]]
        assert rest[-1] == "data: [DONE]"
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert 1 + len(chunks) == COMPLETION["max_tokens"]
        assert server.wait_exited(timeout=10)
        assert engine.aborted == []


def test_drain_timeout_aborts_what_is_left():
    engine, server = fake_server(shutdown_timeout=0.5, step_seconds=0.05, max_model_len=1000)
    with server:
        body = {**COMPLETION, "max_tokens": 100}  # 5 s of steps
        with httpx.Client(base_url=server.base_url, timeout=30) as http:
            threading.Timer(0.3, server.drain).start()
            start = time.monotonic()
            response = http.post("/v1/completions", json=body)
        assert response.status_code == 200
        choice = response.json()["choices"][0]
        assert choice["finish_reason"] == "abort"
        assert time.monotonic() - start < 3
        assert server.wait_exited(timeout=10)


def test_sigterm_lets_requests_finish_then_exits_cleanly(tiny_checkpoint, tmp_path):
    # One sequence at a time, so the requests queue and are still in flight at SIGTERM.
    flags = ["--max-num-seqs", "1", "--max-num-batched-tokens", "256"]
    server = ServerProcess(tiny_checkpoint("llama"), *flags, log_dir=tmp_path)
    body = {"prompt": "The river", "max_tokens": 250, "ignore_eos": True, "stream": True}
    num_clients = 24

    async def run():
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:

            async def stream_one(first_token: asyncio.Event):
                num_tokens, finish = 0, None
                async with client.stream("POST", "/v1/completions", json=body) as r:
                    assert r.status_code == 200
                    async for line in r.aiter_lines():
                        if line.startswith("data: {"):
                            choice = json.loads(line[6:])["choices"][0]
                            num_tokens += 1
                            finish = choice["finish_reason"] or finish
                            first_token.set()
                return finish

            first = asyncio.Event()
            tasks = [asyncio.ensure_future(stream_one(first)) for _ in range(num_clients)]
            await first.wait()
            server.terminate()
            while (health := await client.get("/health")).status_code == 200:
                await asyncio.sleep(0.005)
            refused = await client.post("/v1/completions", json={**body, "stream": False})
            return await asyncio.gather(*tasks), refused, health

    try:
        finishes, refused, health = asyncio.run(run())
        assert finishes == ["length"] * num_clients
        assert refused.status_code == 503
        assert "shutting down" in refused.json()["error"]["message"]
        assert health.status_code == 503
        assert server.process.wait(timeout=30) == 0
        assert "Traceback" not in server.log()
    finally:
        server.stop()


def test_cli_serve_flags(monkeypatch):
    calls = []

    def fake_run_server(model, config_fields, engine_kwargs, **options):
        calls.append((model, config_fields, engine_kwargs, options))
        return 0

    import ember.server.launcher

    monkeypatch.setattr(ember.server.launcher, "run_server", fake_run_server)
    monkeypatch.setenv("EMBER_API_KEY", "from-env")
    argv = ["serve", "some/model", "--port", "9000", "--max-n", "3", "--max-model-len", "128"]
    assert cli.main(argv + ["--no-prefix-caching", "--enforce-eager"]) == 0
    assert cli.main(["serve", "--api-key", "from-flag"]) == 0
    (model, config, engine_kwargs, options), (default_model, flag_config, _, _) = calls
    assert model == "some/model" and default_model is None
    assert config["api_key"] == "from-env" and flag_config["api_key"] == "from-flag"
    assert config["max_n"] == 3
    assert engine_kwargs["max_model_len"] == 128
    assert engine_kwargs["enable_prefix_caching"] is False
    assert engine_kwargs["enforce_eager"] is True
    assert options["port"] == 9000 and options["host"] == "127.0.0.1"
