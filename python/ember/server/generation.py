"""From an HTTP request to engine requests: prompt lengths against the context, SamplingParams
with the request's fields, and the engine requests (one per prompt) started together and read as
one stream."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.responses import Response

from ember.async_engine import EngineDeadError
from ember.sampling_params import SamplingParams
from ember.server.errors import APIError, bad_request, from_value_error, unavailable
from ember.server.protocol import SamplingRequest
from ember.server.streaming import EventStreamResponse

logger = logging.getLogger("ember.server")


@dataclass
class Prompt:
    """One prompt as the engine gets it: its text (None for token ids given without text) and
    its token ids, counted before the request starts."""

    text: str | None
    token_ids: list[int]

    def engine_input(self) -> dict:
        if self.text is None:
            return {"prompt_token_ids": self.token_ids}
        return {"prompt": self.text, "prompt_token_ids": self.token_ids}


def resolve_max_tokens(
    requested: int | None, num_prompt_tokens: int, max_model_len: int, param: str
) -> int:
    """The number of tokens to generate. None means all that fit in the context, as vLLM does;
    a request that cannot fit is refused with the context length and the prompt's size."""
    room = max_model_len - num_prompt_tokens
    if room < 1:
        raise bad_request(
            f"this model's maximum context length is {max_model_len} tokens and the prompt has "
            f"{num_prompt_tokens} tokens, which leaves no room to generate; shorten the prompt",
            param="messages" if param == "max_completion_tokens" else "prompt",
            code="context_length_exceeded",
        )
    if requested is None:
        return room
    if requested < 1:
        raise bad_request(f"{param} must be at least 1, got {requested}", param=param)
    if requested > room:
        raise bad_request(
            f"{param} is {requested}, but this model's maximum context length is "
            f"{max_model_len} tokens and the prompt has {num_prompt_tokens} tokens, so at most "
            f"{room} can be generated",
            param=param,
            code="context_length_exceeded",
        )
    return requested


def check_n(request: SamplingRequest, max_n: int) -> int:
    n = 1 if request.n is None else request.n
    if n > max_n:
        raise bad_request(
            f"n is {n} but this server allows at most {max_n} (ember serve --max-n)", param="n"
        )
    if request.best_of is not None and request.best_of != n:
        raise bad_request(f"best_of is not supported (got {request.best_of}); use n", "best_of")
    if request.use_beam_search:
        raise bad_request("beam search is not supported", param="use_beam_search")
    response_format = request.response_format
    if response_format is not None and response_format.get("type", "text") != "text":
        raise bad_request(
            f"response_format {response_format.get('type')!r} is not supported; only 'text'",
            param="response_format",
        )
    if request.stream_options is not None and not request.stream:
        raise bad_request("stream_options needs stream: true", param="stream_options")
    return n


def sampling_params(
    request: SamplingRequest,
    *,
    n: int,
    max_tokens: int,
    logprobs: int | None,
    prompt_logprobs: int | None = None,
) -> SamplingParams:
    """The request's sampling fields as SamplingParams; an invalid value is a 400 naming it."""
    fields = {
        "n": n,
        "max_tokens": max_tokens,
        "logprobs": logprobs,
        "prompt_logprobs": prompt_logprobs,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "top_k": request.top_k,
        "min_p": request.min_p,
        "presence_penalty": request.presence_penalty,
        "frequency_penalty": request.frequency_penalty,
        "repetition_penalty": request.repetition_penalty,
        "seed": request.seed,
        "stop": request.stop,
        "stop_token_ids": request.stop_token_ids,
        "min_tokens": request.min_tokens,
        "ignore_eos": request.ignore_eos,
        "skip_special_tokens": request.skip_special_tokens,
    }
    # null means "the default", as in OpenAI's API
    fields = {name: value for name, value in fields.items() if value is not None}
    if request.logit_bias:
        fields["logit_bias"] = _parse_logit_bias(request.logit_bias)
    try:
        return SamplingParams(**fields)
    except ValueError as error:
        raise from_value_error(error) from None


def check_prompt_logprobs(request: SamplingRequest) -> None:
    """vLLM's rule: prompt_logprobs come in the whole response, not in a stream."""
    if request.prompt_logprobs is not None and request.stream:
        raise bad_request(
            "prompt_logprobs is not supported with stream: true; drop one of them",
            param="prompt_logprobs",
        )


def _parse_logit_bias(logit_bias: dict[str, float]) -> dict[int, float]:
    parsed = {}
    for key, bias in logit_bias.items():
        try:
            token_id = int(key)
        except ValueError:
            raise bad_request(
                f"logit_bias keys must be token ids, got {key!r}", param="logit_bias"
            ) from None
        parsed[token_id] = bias
    return parsed


class Generation:
    """The engine requests of one HTTP request, one per prompt, started together.

    start() waits for each request's first output before any response byte is sent, so that the
    engine's own checks (a ValueError) become a 400 and a dead engine a 503. close() aborts the
    requests that are still running; it is safe to call more than once.
    """

    def __init__(self, engine, metrics, request_id: str, output_kind: str):
        self._engine = engine
        self._metrics = metrics
        self._request_id = request_id
        self._output_kind = output_kind
        self._iterators: list = []
        self._firsts: list = []
        self._engine_request_ids: list[str] = []

    async def start(self, prompts: list[Prompt], params: list[SamplingParams]) -> None:
        for index, (prompt, prompt_params) in enumerate(zip(prompts, params, strict=True)):
            request_id = self._request_id if len(prompts) == 1 else f"{self._request_id}-{index}"
            self._engine_request_ids.append(request_id)
            self._iterators.append(
                self._engine.generate(
                    prompt.engine_input(),
                    prompt_params,
                    request_id,
                    output_kind=self._output_kind,
                )
            )
        try:
            results = await asyncio.gather(
                *(anext(iterator) for iterator in self._iterators), return_exceptions=True
            )
        except BaseException:  # cancelled: the client went away while the requests queued
            await self.close()
            raise
        for result in results:
            if isinstance(result, BaseException):
                await self.close()
                raise self._as_api_error(result)
        self._firsts = list(results)

    def _as_api_error(self, error: BaseException) -> BaseException:
        if isinstance(error, ValueError):
            return from_value_error(error)
        if isinstance(error, StopAsyncIteration):
            return APIError(500, "the engine ended a request without any output")
        if isinstance(error, EngineDeadError):  # the engine died or is shutting down
            return unavailable(str(error))
        return error

    async def outputs(self) -> AsyncIterator[tuple[int, object]]:
        """(prompt index, RequestOutput) in arrival order; records each finished prompt's
        metrics. An EngineDeadError is re-raised as a 503 APIError."""
        try:
            async for index, output in self._merged():
                if output.finished:
                    self._metrics.observe_finished(output)
                yield index, output
        except EngineDeadError as error:
            raise self._as_api_error(error) from error

    async def _merged(self) -> AsyncIterator[tuple[int, object]]:
        if len(self._iterators) == 1:
            yield 0, self._firsts[0]
            async for output in self._iterators[0]:
                yield 0, output
            return
        queue: asyncio.Queue = asyncio.Queue()
        tasks = [
            asyncio.ensure_future(self._pump(index, iterator, queue))
            for index, iterator in enumerate(self._iterators)
        ]
        try:
            num_open = len(tasks)
            while num_open:
                index, output, error = await queue.get()
                if error is not None:
                    raise error
                if output is None:
                    num_open -= 1
                else:
                    yield index, output
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _pump(self, index: int, iterator, queue: asyncio.Queue) -> None:
        try:
            await queue.put((index, self._firsts[index], None))
            async for output in iterator:
                await queue.put((index, output, None))
            await queue.put((index, None, None))
        except asyncio.CancelledError:
            raise
        except Exception as error:  # handed to the reader, which raises it
            await queue.put((index, None, error))

    async def abort(self) -> None:
        """Asks the engine to end every request now; each stream then ends with "abort"."""
        for request_id in self._engine_request_ids:
            await self._engine.abort(request_id)

    async def close(self) -> None:
        for iterator in self._iterators:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:  # closing must go on to every other request
                    logger.debug("closing request %s failed", self._request_id, exc_info=True)


async def respond(state, engine, view, prompts, params, *, stream: bool):
    """Starts one request's generation and answers it: an event stream of the view's chunks, or
    the view's whole response as one JSON body. The request counts as in flight (for draining
    at shutdown) until its generation is closed."""
    generation = Generation(engine, state.metrics, view.id, "delta" if stream else "final_only")
    state.begin_request(generation)
    try:
        await generation.start(prompts, params)
    except BaseException:
        state.end_request(generation)
        raise

    async def finish() -> None:
        await generation.close()
        state.end_request(generation)

    if stream:
        return EventStreamResponse(view.stream(generation), finish)
    try:
        response = await view.collect(generation)
    finally:
        await finish()
    return Response(response.model_dump_json(), media_type="application/json")
