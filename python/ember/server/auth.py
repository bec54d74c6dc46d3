"""API-key check: every route but /health needs `Authorization: Bearer <key>` (401 otherwise).

A plain ASGI middleware rather than a FastAPI dependency, so that it also guards /openapi.json,
/docs and paths that match no route, and answers before any request body is read.
"""

from __future__ import annotations

import hmac

from ember.server.errors import error_response

# Paths a load balancer probes without credentials.
OPEN_PATHS = frozenset({"/health"})


class APIKeyMiddleware:
    def __init__(self, app, api_key: str):
        self.app = app
        self._expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        if self._authorized(scope):
            return await self.app(scope, receive, send)
        response = error_response(
            401,
            "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)

    def _authorized(self, scope) -> bool:
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value
                break
        # NOTE: compare_digest takes time independent of where the strings differ, so the key
        # cannot be guessed byte by byte from response times.
        return hmac.compare_digest(given, self._expected)
