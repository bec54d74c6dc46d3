"""Helpers for the server tests: `ember serve` in a subprocess on a free port, and a fake engine
honouring AsyncEngine's contract for the cases a real engine cannot be made to show (death)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import httpx

STARTUP_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`python -m ember serve MODEL --device cpu ...` on a free port; stopped with SIGTERM.

    The subprocess sees no GPU, as the CPU-path tests require. Its output goes to a log file,
    printed when the server fails to start or exits with an error.
    """

    def __init__(self, model, *args: str, log_dir: Path, env: dict | None = None):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_dir) / f"server-{self.port}.log"
        command = [sys.executable, "-m", "ember", "serve", str(model), "--device", "cpu"]
        command += ["--port", str(self.port), "--log-level", "warning", *args]
        full_env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", **(env or {})}
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=full_env
        )
        self._wait_until_healthy()

    def _wait_until_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ember serve exited at startup:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"ember serve did not become healthy:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def terminate(self) -> None:
        """Sends SIGTERM: the server drains and exits."""
        self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


class InProcessServer:
    """The server on a thread of this process (uvicorn on its own event loop), for tests that
    need to reach inside: a fake engine, or draining without a signal."""

    def __init__(self, engine, config, shutdown_timeout: float = 30.0):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._engine = engine
        self._config = config
        self._shutdown_timeout = shutdown_timeout
        self._started = threading.Event()
        self.server = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._started.wait(STARTUP_TIMEOUT_S):
            raise RuntimeError("the in-process server did not start")

    def _run(self) -> None:
        from ember.server.launcher import serve_engine

        asyncio.run(
            serve_engine(
                self._engine,
                self._config,
                port=self.port,
                shutdown_timeout=self._shutdown_timeout,
                log_level="warning",
                ready=self._on_ready,
            )
        )

    def _on_ready(self, server) -> None:
        self.server = server
        self._loop = asyncio.get_running_loop()
        self._started.set()

    def drain(self) -> None:
        """What SIGTERM does: refuse new requests, finish those in flight, then exit."""
        self._loop.call_soon_threadsafe(self.server.begin_drain)

    def wait_exited(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        self._thread.join(30)

    def __enter__(self) -> InProcessServer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


# ----- a fake engine -----------------------------------------------------------------------------


class FakeEngine:
    """AsyncEngine's contract, scripted: every sample generates "tok0 tok1 ..." one token per
    `step_seconds`, finishing with "length" at max_tokens. `errored` can be set by a test; then
    generate() fails as the real engine's does once its loop died."""

    def __init__(
        self,
        tokenizer,
        max_model_len: int = 64,
        step_seconds: float = 0.001,
        first_token_delay: float = 0.0,
    ):
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.model_dir = Path("/fake/model")
        self.model_info = types.SimpleNamespace(
            vocab_size=len(tokenizer), max_model_len=max_model_len
        )
        self.step_seconds = step_seconds
        self.first_token_delay = first_token_delay
        self.dead_error: BaseException | None = None
        self.is_running = True
        self.num_running = 0
        self.aborted: list[str] = []  # requests whose consumer went away early
        self.started: list[str] = []
        self._abort_requested: set[str] = set()

    @property
    def errored(self) -> bool:
        return self.dead_error is not None

    def die(self, message: str = "the engine loop has died: forward pass failed") -> None:
        from ember.async_engine import EngineDeadError

        self.dead_error = EngineDeadError(message)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text).input_ids)

    def apply_chat_template(self, messages, chat_template=None, add_generation_prompt=True):
        return self.tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            chat_template=chat_template,
        )

    async def abort(self, request_id: str) -> None:
        self._abort_requested.add(request_id)

    def stats(self) -> dict:
        return {
            "num_running": self.num_running,
            "num_waiting": 0,
            "kv_cache_usage": 0.0,
            "num_preemptions": 0,
            "num_prefix_cache_queries": 0,
            "num_prefix_cache_hits": 0,
            "num_prompt_tokens": 0,
            "num_generation_tokens": 0,
        }

    async def generate(self, prompt, sampling_params, request_id, *, output_kind="cumulative"):
        from ember.outputs import CompletionOutput, RequestMetrics, RequestOutput

        if self.dead_error is not None:
            raise self.dead_error
        token_ids = prompt["prompt_token_ids"]
        if max(token_ids) >= len(self.tokenizer):
            raise ValueError(f"prompt token id {max(token_ids)} is outside the vocabulary")
        metrics = RequestMetrics(arrival_time=time.monotonic())
        samples = [
            CompletionOutput(index=i, text="", token_ids=[]) for i in range(sampling_params.n)
        ]
        self.num_running += 1
        self.started.append(request_id)
        finished = False
        try:
            await asyncio.sleep(self.first_token_delay)
            for step in range(sampling_params.max_tokens):
                await asyncio.sleep(self.step_seconds)
                if self.dead_error is not None:
                    raise self.dead_error
                aborted = request_id in self._abort_requested
                last = aborted or step + 1 == sampling_params.max_tokens
                reason = "abort" if aborted else "length"
                deltas = []
                for sample in samples:
                    text = f" tok{step}"
                    sample.text += text
                    sample.token_ids.append(5 + step % 10)
                    sample.finish_reason = reason if last else None
                    deltas.append(
                        CompletionOutput(
                            sample.index,
                            text,
                            [sample.token_ids[-1]],
                            finish_reason=sample.finish_reason,
                        )
                    )
                now = time.monotonic()
                metrics.first_token_time = metrics.first_token_time or now
                metrics.last_token_time = now
                metrics.num_generation_tokens += len(samples)
                metrics.finished_time = now if last else None
                if output_kind == "final_only" and not last:
                    continue
                outputs = deltas if output_kind == "delta" else [_copy(s) for s in samples]
                finished = last
                yield RequestOutput(
                    request_id, prompt.get("prompt"), token_ids, outputs, last, 0, metrics
                )
                if last:
                    return
        finally:
            self.num_running -= 1
            if not finished:
                self.aborted.append(request_id)


def _copy(sample):
    from ember.outputs import CompletionOutput

    return CompletionOutput(
        sample.index, sample.text, list(sample.token_ids), finish_reason=sample.finish_reason
    )
