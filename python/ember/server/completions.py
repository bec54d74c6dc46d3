"""/v1/completions: a request becomes engine requests (one per prompt, each with n samples);
their outputs become one response or a stream of chunks. Choice i*n + j is sample j of prompt i.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from starlette.responses import Response

from ember.server import inputs
from ember.server.errors import APIError, bad_request, error_body
from ember.server.generation import (
    Generation,
    Prompt,
    check_n,
    check_prompt_logprobs,
    resolve_max_tokens,
    respond,
    sampling_params,
)
from ember.server.logprobs import (
    completion_logprobs,
    join,
    prompt_logprobs,
    prompt_logprobs_field,
)
from ember.server.protocol import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    CompletionStreamResponse,
    UsageInfo,
    random_id,
)
from ember.server.state import ServerState
from ember.server.streaming import DONE, sse

logger = logging.getLogger("ember.server")


async def create_completion(state: ServerState, request: CompletionRequest) -> Response:
    state.check_accepting()
    model = state.check_model(request.model)
    if request.suffix:
        raise bad_request("suffix is not supported", param="suffix")
    n = check_n(request, state.config.max_n)
    check_prompt_logprobs(request)
    engine = state.engine
    prompts = inputs.completion_prompts(engine, request.prompt)
    params = [
        sampling_params(
            request,
            n=n,
            max_tokens=resolve_max_tokens(
                request.max_tokens, len(p.token_ids), engine.max_model_len, "max_tokens"
            ),
            logprobs=request.logprobs,
            prompt_logprobs=_engine_prompt_logprobs(request),
        )
        for p in prompts
    ]
    view = _CompletionView(state, request, model, prompts, n)
    return await respond(state, engine, view, prompts, params, stream=bool(request.stream))


def _engine_prompt_logprobs(request: CompletionRequest) -> int | None:
    """echo with logprobs=N scores the echoed prompt (top N); vLLM's prompt_logprobs=M asks
    for them too. The engine computes the larger."""
    if not (request.echo and request.logprobs is not None):
        return request.prompt_logprobs
    return max(request.logprobs, request.prompt_logprobs or 0)


class _CompletionView:
    """Turns one request's engine outputs into OpenAI's completion objects."""

    def __init__(self, state: ServerState, request: CompletionRequest, model: str, prompts, n):
        self.id = random_id("cmpl")
        self.created = int(time.time())
        self._engine = state.engine
        self._request = request
        self._model = model
        self._prompts: list[Prompt] = prompts
        self._n = n
        self._echo = bool(request.echo)
        self._want_logprobs = request.logprobs is not None
        self._prompt_logprobs: dict[int, list] = {}  # prompt index -> the engine's, once sent

    def _note_prompt_logprobs(self, prompt_index: int, output) -> None:
        if output.prompt_logprobs is not None:
            self._prompt_logprobs[prompt_index] = output.prompt_logprobs

    def _prefix(self, prompt_index: int):
        """The echoed prompt text and its logprobs (None without logprobs)."""
        prompt = self._prompts[prompt_index]
        text = inputs.echo_text(self._engine, prompt)
        logprobs = None
        if self._want_logprobs:
            logprobs = prompt_logprobs(
                inputs.prompt_token_texts(self._engine, prompt),
                prompt.token_ids,
                self._prompt_logprobs.get(prompt_index),
                self._request.logprobs,
            )
        return text, logprobs

    def _usage(self, num_completion_tokens: int) -> UsageInfo:
        num_prompt_tokens = sum(len(p.token_ids) for p in self._prompts)
        return UsageInfo(
            prompt_tokens=num_prompt_tokens,
            completion_tokens=num_completion_tokens,
            total_tokens=num_prompt_tokens + num_completion_tokens,
        )

    async def collect(self, generation: Generation) -> CompletionResponse:
        latest = {}  # (prompt index, sample index) -> CompletionOutput (final_only: all of it)
        async for prompt_index, output in generation.outputs():
            self._note_prompt_logprobs(prompt_index, output)
            for completion in output.outputs:
                latest[(prompt_index, completion.index)] = completion
        choices, num_completion_tokens = [], 0
        for prompt_index in range(len(self._prompts)):
            for sample_index in range(self._n):
                completion = latest[(prompt_index, sample_index)]
                num_completion_tokens += len(completion.token_ids)
                choices.append(self._choice(prompt_index, completion))
        return CompletionResponse(
            id=self.id,
            created=self.created,
            model=self._model,
            choices=choices,
            usage=self._usage(num_completion_tokens),
        )

    def _choice(self, prompt_index: int, completion) -> CompletionChoice:
        text, logprobs = completion.text, None
        prefix, prefix_logprobs = ("", None)
        if self._echo:
            prefix, prefix_logprobs = self._prefix(prompt_index)
        if self._want_logprobs:
            logprobs, _ = completion_logprobs(
                completion.token_ids, completion.logprobs or [], len(prefix)
            )
            if prefix_logprobs is not None:
                logprobs = join(prefix_logprobs, logprobs)
        scored = None
        if self._request.prompt_logprobs is not None:
            scored = prompt_logprobs_field(self._prompt_logprobs.get(prompt_index))
        return CompletionChoice(
            index=prompt_index * self._n + completion.index,
            text=prefix + text,
            logprobs=logprobs,
            finish_reason=completion.finish_reason,
            stop_reason=completion.stop_reason,
            prompt_logprobs=scored,
        )

    async def stream(self, generation: Generation) -> AsyncIterator[str]:
        offsets: dict[int, int] = {}  # choice index -> text offset of its next token
        finished: set[int] = set()
        num_completion_tokens = 0
        try:
            async for prompt_index, output in generation.outputs():
                self._note_prompt_logprobs(prompt_index, output)
                for completion in output.outputs:
                    index = prompt_index * self._n + completion.index
                    if index in finished:
                        continue
                    num_completion_tokens += len(completion.token_ids)
                    chunk = self._chunk(index, prompt_index, completion, offsets)
                    if completion.finish_reason is not None:
                        finished.add(index)
                    if chunk is not None:
                        yield sse(chunk)
            if self._request.stream_options and self._request.stream_options.include_usage:
                yield sse(self._chunk_with([], self._usage(num_completion_tokens)))
        except APIError as error:
            yield sse(error_body(error.status_code, error.message, error.param, error.code))
        except Exception as error:
            logger.exception("completion stream %s failed", self.id)
            yield sse(error_body(500, f"internal server error: {type(error).__name__}: {error}"))
        yield DONE

    def _chunk(self, index: int, prompt_index: int, completion, offsets: dict[int, int]):
        text, logprobs = completion.text, None
        first = index not in offsets
        prefix, prefix_logprobs = ("", None)
        if first and self._echo:
            prefix, prefix_logprobs = self._prefix(prompt_index)
        offset = offsets.get(index, 0) + len(prefix)
        if self._want_logprobs:
            logprobs, offset = completion_logprobs(
                completion.token_ids, completion.logprobs or [], offset
            )
            if prefix_logprobs is not None:
                logprobs = join(prefix_logprobs, logprobs)
        offsets[index] = offset
        text = prefix + text
        if not text and not completion.token_ids and completion.finish_reason is None:
            return None
        choice = CompletionChoice(
            index=index,
            text=text,
            logprobs=logprobs,
            finish_reason=completion.finish_reason,
            stop_reason=completion.stop_reason,
        )
        return self._chunk_with([choice], None)

    def _chunk_with(self, choices, usage) -> CompletionStreamResponse:
        return CompletionStreamResponse(
            id=self.id, created=self.created, model=self._model, choices=choices, usage=usage
        )
