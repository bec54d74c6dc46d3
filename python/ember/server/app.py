"""The FastAPI app: routes, error handlers and middleware around one engine.

`build_app(engine, config)` takes any engine that honours AsyncEngine's contract (generate,
tokenizer, encode, apply_chat_template, max_model_len, model_info, stats, errored); it does not
own the engine and never shuts it down.
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, Request
from starlette.responses import Response

import ember
from ember.server.auth import OPEN_PATHS, APIKeyMiddleware
from ember.server.chat import create_chat_completion
from ember.server.completions import create_completion
from ember.server.config import ServerConfig
from ember.server.errors import bad_request, error_response, install_error_handlers
from ember.server.inputs import chat_prompt, conversation
from ember.server.limits import BodySizeLimitMiddleware, PacedAdmission
from ember.server.metrics import CONTENT_TYPE
from ember.server.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
    VersionResponse,
)
from ember.server.state import ServerState
from ember.server.streaming import unless_disconnected

# New requests let into the app per event-loop iteration (limits.PacedAdmission). With 1,000
# clients connecting at once to the tiny model on 2 CPU cores (asyncio's own loop, gc frozen),
# the slowest /health took 65-76 ms admitting 16 per iteration, 48-72 ms with 8 and 39-41 ms
# with 4, all 1,000 streams ending as soon (1.1-1.6 s). With 4, 1,000 one-token requests sent
# at once still complete in 0.9 s.
_ADMITTED_PER_ITERATION = 4

_ERRORS = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "invalid request"),
        (401, "missing or wrong API key"),
        (404, "unknown model"),
        (413, "request body too large"),
        (503, "engine dead or server shutting down"),
    )
}
_STREAM = {
    "content": {"text/event-stream": {}},
    "description": "the response; with stream: true, server-sent events ending `data: [DONE]`",
}


def build_app(engine, config: ServerConfig) -> FastAPI:
    state = ServerState(engine, config)
    app = FastAPI(
        title="ember",
        version=ember.__version__,
        description="OpenAI-compatible API of the ember inference engine",
    )
    app.state.ember = state
    install_error_handlers(app)
    _add_generation_routes(app, state)
    _add_service_routes(app, state)
    _add_token_routes(app, state)
    # Starlette runs the last middleware added first: the key is checked before the body is read.
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=config.max_body_bytes)
    app.add_middleware(
        PacedAdmission, per_iteration=_ADMITTED_PER_ITERATION, exempt_paths=OPEN_PATHS
    )
    if config.api_key is not None:
        app.add_middleware(APIKeyMiddleware, api_key=config.api_key)
    return app


def _add_generation_routes(app: FastAPI, state: ServerState) -> None:
    @app.post(
        "/v1/completions",
        response_model=CompletionResponse,
        responses={200: _STREAM, **_ERRORS},
    )
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await unless_disconnected(request, create_completion(state, body))

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletionResponse,
        responses={200: _STREAM, **_ERRORS},
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await unless_disconnected(request, create_chat_completion(state, body))


def _model_card(state: ServerState, name: str) -> ModelCard:
    return ModelCard(
        id=name,
        created=state.config.created,
        root=str(state.engine.model_dir),
        max_model_len=state.engine.max_model_len,
    )


def _add_service_routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/health", responses={503: _ERRORS[503]})
    async def health() -> Response:
        """200 while the server accepts requests; 503 once the engine died or shutdown began."""
        reason = state.dead_reason()
        if reason is None and state.draining:
            reason = "the server is shutting down"
        if reason is not None:
            return error_response(503, reason, code="service_unavailable")
        return Response(status_code=200)

    @app.get("/version", response_model=VersionResponse)
    async def version() -> VersionResponse:
        return VersionResponse(version=ember.__version__)

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        """Prometheus text format."""
        # NOTE: in a thread, since reading the engine's stats may wait on its step loop.
        body = await asyncio.to_thread(state.metrics.render)
        return Response(body, media_type=CONTENT_TYPE)

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        return ModelList(data=[_model_card(state, n) for n in state.config.served_model_names])

    @app.get("/v1/models/{model}", response_model=ModelCard, responses=_ERRORS)
    async def model(model: str) -> ModelCard:
        state.check_model(model)
        return _model_card(state, model)


def _add_token_routes(app: FastAPI, state: ServerState) -> None:
    @app.post("/tokenize", response_model=TokenizeResponse, responses=_ERRORS)
    async def tokenize(body: TokenizeRequest) -> TokenizeResponse:
        state.check_model(body.model)
        engine = state.engine
        if (body.prompt is None) == (body.messages is None):
            raise bad_request("give exactly one of prompt and messages", param="prompt")
        tokenizer = engine.tokenizer
        if tokenizer is None:
            raise bad_request("tokenize needs a tokenizer, and this server's model has none")
        if body.prompt is not None:
            add_special = body.add_special_tokens is not False
            token_ids = list(tokenizer(body.prompt, add_special_tokens=add_special).input_ids)
        else:
            prompt = chat_prompt(
                engine,
                conversation(body.messages),
                body.chat_template or state.config.chat_template,
                body.add_generation_prompt is not False,
            )
            token_ids = prompt.token_ids
            if body.add_special_tokens:  # on top of those the template writes, as vLLM allows
                token_ids = list(tokenizer(prompt.text, add_special_tokens=True).input_ids)
        return TokenizeResponse(
            count=len(token_ids), max_model_len=engine.max_model_len, tokens=token_ids
        )

    @app.post("/detokenize", response_model=DetokenizeResponse, responses=_ERRORS)
    async def detokenize(body: DetokenizeRequest) -> DetokenizeResponse:
        state.check_model(body.model)
        tokenizer = state.engine.tokenizer
        if tokenizer is None:
            raise bad_request("detokenize needs a tokenizer, and this server's model has none")
        vocab_size = state.engine.model_info.vocab_size
        for position, token_id in enumerate(body.tokens):
            if not 0 <= token_id < vocab_size:
                raise bad_request(
                    f"token id {token_id} at position {position} is outside the vocabulary "
                    f"[0, {vocab_size})",
                    param="tokens",
                )
        return DetokenizeResponse(prompt=tokenizer.decode(body.tokens))
