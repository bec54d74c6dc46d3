"""Protecting the server: the request body size limit (413), enforced before the body is
parsed, and paced admission of new requests (below).

The body is read here, up to the limit, and replayed to the app: a Content-Length above the
limit is refused at once, and a chunked body is cut off as soon as it passes the limit, so a
client cannot make the server buffer more than `max_body_bytes`.
"""

from __future__ import annotations

import asyncio
import collections

from ember.server.errors import error_response


class BodySizeLimitMiddleware:
    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            return await self._refuse(scope, receive, send, f"{declared} bytes")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before sending its body: nothing to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return await self._refuse(scope, receive, send, f"at least {size} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            # Later calls wait for the client to disconnect, as the server's own receive does.
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send, size: str):
        response = error_response(
            413,
            f"the request body is {size}; the limit is {self.max_body_bytes} bytes "
            "(ember serve --max-body-bytes)",
            code="request_too_large",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


def _content_length(scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class PacedAdmission:
    """Lets at most `per_iteration` requests into the app per event-loop iteration; the rest wait
    their turn, in arrival order.

    NOTE: asyncio runs every callback that is ready before it polls the sockets again. When a
    thousand clients connect at once, a thousand request handlers (parsing, validation,
    tokenization: about a millisecond each on a small CPU) would run in one iteration, and a
    /health probe arriving meanwhile would wait for all of them. Admitting a few per iteration
    keeps every iteration short, so probes and streams in flight are served in between; /health
    is never held back.
    """

    def __init__(self, app, per_iteration: int, exempt_paths: frozenset[str]):
        self.app = app
        self._per_iteration = per_iteration
        self._exempt_paths = exempt_paths
        self._num_admitted = 0  # in the current iteration
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self._turn_scheduled = False

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in self._exempt_paths:
            await self._admit()
        await self.app(scope, receive, send)

    async def _admit(self) -> None:
        loop = asyncio.get_running_loop()
        self._schedule_turn(loop)
        if not self._waiters and self._num_admitted < self._per_iteration:
            self._num_admitted += 1
            return
        waiter = loop.create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def _schedule_turn(self, loop) -> None:
        if not self._turn_scheduled:
            self._turn_scheduled = True
            loop.call_soon(self._next_turn, loop)  # runs in the next iteration

    def _next_turn(self, loop) -> None:
        self._turn_scheduled = False
        self._num_admitted = 0
        while self._waiters and self._num_admitted < self._per_iteration:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._num_admitted += 1
        if self._waiters:
            self._schedule_turn(loop)
