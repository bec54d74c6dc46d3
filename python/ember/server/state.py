"""What every route shares: the engine, the server's settings, its metrics, and whether it still
accepts work (not draining for shutdown, engine alive)."""

from __future__ import annotations

import asyncio

from ember.server.config import ServerConfig
from ember.server.errors import APIError, unavailable
from ember.server.metrics import ServerMetrics


class ServerState:
    def __init__(self, engine, config: ServerConfig):
        self.engine = engine
        self.config = config
        self.model_name = config.served_model_names[0]
        self.metrics = ServerMetrics(engine, self.model_name)
        self.draining = False
        self._in_flight: set = set()  # Generation objects whose responses are not done
        self._idle = asyncio.Event()
        self._idle.set()

    # ----- admission ----------------------------------------------------------------------------

    def dead_reason(self) -> str | None:
        """Why the engine cannot serve, or None while it can."""
        if self.engine.errored:
            return str(self.engine.dead_error)
        if not self.engine.is_running:
            return "the engine is not running"
        return None

    def check_accepting(self) -> None:
        """Raises a 503 when new generation requests must be refused."""
        if self.draining:
            raise unavailable("the server is shutting down and accepts no new requests")
        reason = self.dead_reason()
        if reason is not None:
            raise unavailable(reason)

    def check_model(self, requested: str | None) -> str:
        if requested is None or requested in self.config.served_model_names:
            return self.model_name
        raise APIError(
            404,
            f"the model '{requested}' does not exist; this server serves "
            f"{', '.join(repr(n) for n in self.config.served_model_names)}",
            param="model",
            code="model_not_found",
        )

    # ----- in-flight requests, for a graceful shutdown -----------------------------------------

    @property
    def num_in_flight(self) -> int:
        return len(self._in_flight)

    def begin_request(self, generation) -> None:
        self._in_flight.add(generation)
        self._idle.clear()

    def end_request(self, generation) -> None:
        self._in_flight.discard(generation)
        if not self._in_flight:
            self._idle.set()

    async def wait_idle(self, timeout: float | None) -> bool:
        """Waits until no generation request is in flight; False if `timeout` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def abort_in_flight(self) -> None:
        """Aborts every request in flight: each ends at once with finish_reason "abort"."""
        for generation in list(self._in_flight):
            await generation.abort()
