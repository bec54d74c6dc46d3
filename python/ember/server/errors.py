"""Errors in OpenAI's JSON shape, {"error": {"message", "type", "param", "code"}}, with the
status each case deserves. FastAPI's own 422 for a body that does not validate becomes a 400, as
OpenAI and vLLM answer it."""

from __future__ import annotations

import dataclasses
import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ember.sampling_params import SamplingParams

logger = logging.getLogger("ember.server")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    500: "server_error",
    503: "service_unavailable_error",
}


class APIError(Exception):
    """Raised by the routes; becomes an error response with `status_code`."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.param = param
        self.code = code


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def unavailable(message: str) -> APIError:
    return APIError(503, message, code="service_unavailable")


def error_body(
    status_code: int, message: str, param: str | None = None, code: str | None = None
) -> dict:
    error_type = _TYPES.get(status_code, "invalid_request_error")
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_response(
    status_code: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(status_code, message, param, code), status_code, headers)


# The core's ValueErrors start with the field they are about ("max_tokens must be ...",
# "prompt 0: prompt token id 5 at position ..."), which becomes the error's `param`.
_FIELD_PREFIX = re.compile(r"^(?:prompt \d+: )?([a-z_]+)(?:\[\d+\])? ")
# The request fields a message may name: SamplingParams' fields, and the prompt.
_KNOWN_PARAMS = {field.name for field in dataclasses.fields(SamplingParams)} | {"prompt"}


def from_value_error(error: ValueError) -> APIError:
    """A ValueError from SamplingParams or the engine's request checks, as a 400."""
    message = str(error)
    match = _FIELD_PREFIX.match(message)
    param = match.group(1) if match and match.group(1) in _KNOWN_PARAMS else None
    return bad_request(message, param=param)


def validation_message(error: RequestValidationError) -> tuple[str, str | None]:
    """One line naming the first problem of a body that did not parse or validate."""
    errors = error.errors()
    first = errors[0]
    kind = first.get("type", "")
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    if kind == "json_invalid":
        detail = first.get("ctx", {}).get("error", "malformed JSON")
        return f"the request body is not valid JSON: {detail}", None
    if not location:
        if kind == "missing":
            return "the request body is missing; send a JSON object", None
        if isinstance(first.get("input"), bytes):
            return (
                "the request body must be a JSON object sent with 'Content-Type: application/json'",
                None,
            )
        got = _json_type(type(first.get("input")).__name__)
        return f"the request body must be a JSON object, got {got}", None
    field = location[0]
    # A value that fits none of a union's types fails once per type, each error's location
    # naming the type after the field ("prompt", "list[int]", 0): name the field, not a type.
    path = [part for part in location if not _is_union_tag(part)]
    if len(path) < len(location) and len(errors) > 1:
        allowed = [t for t in dict.fromkeys(_union_tag(e) for e in errors) if t]
        message = f"{'.'.join(path)} must be one of: {', '.join(allowed)}"
    else:
        message = f"{'.'.join(path)}: {first.get('msg', 'invalid value')}"
    if kind != "missing" and "input" in first:
        message += f", got {_short_repr(first['input'])}"
    return message, field


def _is_union_tag(part: str) -> bool:
    return "[" in part or part in ("str", "int", "float", "bool", "dict", "list")


def _union_tag(error: dict) -> str | None:
    for part in error.get("loc", ()):
        if isinstance(part, str) and _is_union_tag(part):
            return part
    return None


def _json_type(python_type: str) -> str:
    return {
        "list": "an array",
        "str": "a string",
        "int": "a number",
        "float": "a number",
        "bool": "a boolean",
        "NoneType": "null",
        "bytes": "non-JSON bytes",
    }.get(python_type, python_type)


def _short_repr(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, error: APIError):
        return error_response(error.status_code, error.message, error.param, error.code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError):
        message, param = validation_message(error)
        return error_response(400, message, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException):
        message = error.detail if isinstance(error.detail, str) else str(error.detail)
        if error.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        return error_response(error.status_code, message, headers=error.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception):
        logger.exception("unexpected error serving %s %s", request.method, request.url.path)
        return error_response(500, f"internal server error: {type(error).__name__}: {error}")
