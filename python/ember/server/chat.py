"""/v1/chat/completions: messages through the chat template become one engine request with n
samples; its outputs become a chat.completion or a stream of chat.completion.chunk objects (the
first chunk of each choice carries the role, the last its finish_reason)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from starlette.responses import Response

from ember.server import inputs
from ember.server.errors import APIError, bad_request, error_body
from ember.server.generation import (
    Generation,
    check_n,
    check_prompt_logprobs,
    resolve_max_tokens,
    respond,
    sampling_params,
)
from ember.server.logprobs import chat_logprobs, prompt_logprobs_field
from ember.server.protocol import (
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamResponse,
    ChatLogprobs,
    ChatMessage,
    ChatStreamChoice,
    DeltaMessage,
    UsageInfo,
    random_id,
)
from ember.server.state import ServerState
from ember.server.streaming import DONE, sse

logger = logging.getLogger("ember.server")

ASSISTANT = "assistant"
MAX_TOP_LOGPROBS = 20


def _engine_logprobs(request: ChatCompletionRequest) -> int | None:
    """Chat's logprobs (bool) + top_logprobs (0..20) as the engine's logprobs count."""
    top = request.top_logprobs
    if top is not None and not 0 <= top <= MAX_TOP_LOGPROBS:
        raise bad_request(
            f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {top}", param="top_logprobs"
        )
    if not request.logprobs:
        if top:
            raise bad_request("top_logprobs needs logprobs: true", param="top_logprobs")
        return None
    return top or 0


def _unsupported(request: ChatCompletionRequest) -> None:
    if request.tools:
        raise bad_request("tools are not supported", param="tools")
    if request.tool_choice not in (None, "none"):
        raise bad_request("tool_choice is not supported", param="tool_choice")


async def create_chat_completion(state: ServerState, request: ChatCompletionRequest) -> Response:
    state.check_accepting()
    model = state.check_model(request.model)
    _unsupported(request)
    n = check_n(request, state.config.max_n)
    check_prompt_logprobs(request)
    logprobs = _engine_logprobs(request)
    engine = state.engine
    messages = inputs.conversation(request.messages)
    prompt = inputs.chat_prompt(
        engine,
        messages,
        request.chat_template or state.config.chat_template,
        request.add_generation_prompt is not False,
    )
    if request.max_completion_tokens is not None:
        requested, param = request.max_completion_tokens, "max_completion_tokens"
    else:
        requested, param = request.max_tokens, "max_tokens"
    max_tokens = resolve_max_tokens(requested, len(prompt.token_ids), engine.max_model_len, param)
    params = sampling_params(
        request,
        n=n,
        max_tokens=max_tokens,
        logprobs=logprobs,
        prompt_logprobs=request.prompt_logprobs,
    )

    echo = ""
    if request.echo and messages[-1]["role"] == ASSISTANT:
        echo = messages[-1]["content"] or ""
    view = _ChatView(request, model, len(prompt.token_ids), n, echo)
    return await respond(state, engine, view, [prompt], [params], stream=bool(request.stream))


class _ChatView:
    def __init__(self, request: ChatCompletionRequest, model: str, num_prompt_tokens, n, echo):
        self.id = random_id("chatcmpl")
        self.created = int(time.time())
        self._request = request
        self._model = model
        self._num_prompt_tokens = num_prompt_tokens
        self._n = n
        self._echo = echo
        self._top_logprobs = request.top_logprobs or 0
        self._want_logprobs = bool(request.logprobs)

    def _usage(self, num_completion_tokens: int) -> UsageInfo:
        return UsageInfo(
            prompt_tokens=self._num_prompt_tokens,
            completion_tokens=num_completion_tokens,
            total_tokens=self._num_prompt_tokens + num_completion_tokens,
        )

    def _logprobs(self, completion) -> ChatLogprobs | None:
        if not self._want_logprobs:
            return None
        entries = completion.logprobs or []
        return ChatLogprobs(
            content=chat_logprobs(completion.token_ids, entries, self._top_logprobs)
        )

    async def collect(self, generation: Generation) -> ChatCompletionResponse:
        latest, scored = {}, None
        async for _, output in generation.outputs():
            if output.prompt_logprobs is not None:
                scored = output.prompt_logprobs
            for completion in output.outputs:
                latest[completion.index] = completion
        choices = []
        for index in range(self._n):
            completion = latest[index]
            choices.append(
                ChatChoice(
                    index=index,
                    message=ChatMessage(role=ASSISTANT, content=self._echo + completion.text),
                    logprobs=self._logprobs(completion),
                    finish_reason=completion.finish_reason,
                    stop_reason=completion.stop_reason,
                )
            )
        num_completion_tokens = sum(len(c.token_ids) for c in latest.values())
        return ChatCompletionResponse(
            id=self.id,
            created=self.created,
            model=self._model,
            choices=choices,
            usage=self._usage(num_completion_tokens),
            prompt_logprobs=prompt_logprobs_field(scored),
        )

    async def stream(self, generation: Generation) -> AsyncIterator[str]:
        try:
            for index in range(self._n):
                yield sse(self._chunk(index, DeltaMessage(role=ASSISTANT, content="")))
                if self._echo:
                    yield sse(self._chunk(index, DeltaMessage(content=self._echo)))
            finished: set[int] = set()
            num_completion_tokens = 0
            async for _, output in generation.outputs():
                for completion in output.outputs:
                    if completion.index in finished:
                        continue
                    num_completion_tokens += len(completion.token_ids)
                    done = completion.finish_reason is not None
                    if done:
                        finished.add(completion.index)
                    if not completion.text and not completion.token_ids and not done:
                        continue
                    yield sse(
                        self._chunk(
                            completion.index,
                            DeltaMessage(content=completion.text),
                            logprobs=self._logprobs(completion),
                            finish_reason=completion.finish_reason,
                            stop_reason=completion.stop_reason,
                        )
                    )
            if self._request.stream_options and self._request.stream_options.include_usage:
                yield sse(self._chunk_with([], self._usage(num_completion_tokens)))
        except APIError as error:
            yield sse(error_body(error.status_code, error.message, error.param, error.code))
        except Exception as error:
            logger.exception("chat stream %s failed", self.id)
            yield sse(error_body(500, f"internal server error: {type(error).__name__}: {error}"))
        yield DONE

    def _chunk(self, index: int, delta: DeltaMessage, **fields) -> ChatCompletionStreamResponse:
        return self._chunk_with([ChatStreamChoice(index=index, delta=delta, **fields)], None)

    def _chunk_with(self, choices, usage) -> ChatCompletionStreamResponse:
        return ChatCompletionStreamResponse(
            id=self.id, created=self.created, model=self._model, choices=choices, usage=usage
        )
