"""Starting and stopping the server: the engine, the app and uvicorn in one event loop.

SIGTERM (or Ctrl-C) drains: new generation requests get a 503 and /health turns 503 (so a load
balancer stops sending work), requests in flight run to their end for up to `shutdown_timeout`
seconds, then the server exits, aborting what is left, and the engine shuts down. A second
signal ends the drain at once (uvicorn then gives open connections 2 seconds).
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import signal

import uvicorn

from ember.server.app import build_app
from ember.server.config import ServerConfig

logger = logging.getLogger("ember.server")

# After the drain, how long uvicorn waits for connections to close before cancelling their
# tasks (whose engine requests are then aborted).
_CLOSE_CONNECTIONS_SECONDS = 2.0


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state, shutdown_timeout: float):
        super().__init__(config)
        self._state = state
        self._shutdown_timeout = shutdown_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame) -> None:
        # NOTE: uvicorn's own handler records the signal and raises it again once it has shut
        # down, which would kill the process before the engine is shut down; this one does not.
        if self._state.draining or self._loop is None:
            self.should_exit = True
            self.force_exit = self.force_exit or sig == signal.SIGINT
            return
        self._loop.call_soon_threadsafe(self.begin_drain)

    def begin_drain(self) -> None:
        if self._state.draining:
            return
        self._state.draining = True
        self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        logger.info(
            "shutting down: refusing new requests, waiting up to %.0f s for %d in flight",
            self._shutdown_timeout,
            self._state.num_in_flight,
        )
        if not await self._state.wait_idle(self._shutdown_timeout):
            logger.warning(
                "%d requests still running after %.0f s; aborting them",
                self._state.num_in_flight,
                self._shutdown_timeout,
            )
            # Aborted requests end with finish_reason "abort": their clients get a complete
            # response (or stream) rather than a cut connection.
            await self._state.abort_in_flight()
            await self._state.wait_idle(_CLOSE_CONNECTIONS_SECONDS)
        self.should_exit = True


async def serve_engine(
    engine,
    config: ServerConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    shutdown_timeout: float = 30.0,
    log_level: str = "info",
    ready=None,
) -> None:
    """Serves `engine` until a signal (or `server.should_exit`); does not shut the engine down.
    `ready(server)`, if given, is called once the socket listens."""
    app = build_app(engine, config)
    uvicorn_config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=_CLOSE_CONNECTIONS_SECONDS,
        # NOTE: 1,000+ clients connect at once in the load test; the default backlog (2048)
        # and no concurrency limit keep them from being refused at the socket.
        backlog=4096,
    )
    server = DrainingServer(uvicorn_config, app.state.ember, shutdown_timeout)
    if ready is not None:
        asyncio.ensure_future(_call_when_started(server, ready))
    await server.serve()


async def _call_when_started(server: uvicorn.Server, ready) -> None:
    while not server.started and not server.should_exit:
        await asyncio.sleep(0.05)
    if server.started:
        ready(server)


def run_server(
    model: str | None,
    config_fields: dict,
    engine_kwargs: dict,
    *,
    host: str,
    port: int,
    shutdown_timeout: float,
    log_level: str = "info",
) -> int:
    """`ember serve`: loads the model, serves it, and shuts the engine down on exit."""

    async def main() -> None:
        from ember.async_engine import AsyncEngine

        engine = AsyncEngine(model, **engine_kwargs)
        try:
            names = config_fields.pop("served_model_names", None) or [
                model or engine.model_dir.name
            ]
            config = ServerConfig(served_model_names=names, **config_fields)
            # NOTE: the model, tokenizer and libraries loaded so far are millions of objects that
            # live as long as the server. Frozen, they are left out of the cyclic garbage
            # collector's full passes, each of which stalled the event loop (and /health) for
            # about 0.25 s under a thousand concurrent requests on a small CPU.
            gc.collect()
            gc.freeze()
            await serve_engine(
                engine,
                config,
                host=host,
                port=port,
                shutdown_timeout=shutdown_timeout,
                log_level=log_level,
            )
        finally:
            result = engine.shutdown()
            if inspect.isawaitable(result):
                await result

    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO))
    _run_event_loop(main())
    return 0


def _run_event_loop(main) -> None:
    """Runs `main` on uvloop where it is installed (uvicorn[standard] brings it), as uvicorn
    itself would: with 1,000 streaming clients on 2 CPU cores the slowest /health took 24-28 ms
    on uvloop against 32-46 ms on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)
