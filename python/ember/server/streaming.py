"""Server-sent events, and cancelling work when the client goes away.

A client that disconnects must have its engine requests aborted at once, not when the next
token would be sent (which may be minutes away for a request queued behind many others). Both
the streaming response and the non-streaming routes therefore watch the connection for
`http.disconnect` while they work, and cancel the work when it comes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

DONE = "data: [DONE]\n\n"

# nginx's "client closed request": logged by the server, never seen by the gone client.
STATUS_CLIENT_CLOSED = 499


def sse(chunk: BaseModel | dict) -> str:
    if isinstance(chunk, BaseModel):
        return f"data: {chunk.model_dump_json()}\n\n"
    return f"data: {json.dumps(chunk)}\n\n"


async def wait_for_disconnect(receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class EventStreamResponse(StreamingResponse):
    """A text/event-stream response that cancels its body as soon as the client disconnects
    (whatever ASGI spec version the server speaks), then always runs `on_close`, even when the
    body never started."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], Awaitable[None]]):
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        stream = asyncio.ensure_future(self.stream_response(send))
        watch = asyncio.ensure_future(wait_for_disconnect(receive))
        try:
            await asyncio.wait({stream, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stream, watch):
                task.cancel()
            await asyncio.gather(stream, watch, return_exceptions=True)
            await self._on_close()
        if stream.done() and not stream.cancelled():
            error = stream.exception()
            if error is not None and not isinstance(error, OSError):  # OSError: client gone
                raise error


async def unless_disconnected(request: Request, work: Awaitable[Response]) -> Response:
    """Runs `work` (a route's body) but cancels it if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(wait_for_disconnect(request.receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, watch, return_exceptions=True)
    if task.cancelled():
        return Response(status_code=STATUS_CLIENT_CLOSED)
    return task.result()
