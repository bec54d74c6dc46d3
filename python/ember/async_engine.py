"""AsyncEngine: the engine behind a server. Requests stream as async iterators while the C++
step loop runs on a thread of its own.

Three kinds of threads take part (docs/runtime.md, "The engine loop and the output thread"):
- the core loop (C++, `ember._core.EngineLoop`) steps while requests are unfinished, sleeps
  otherwise, never takes the GIL and never waits for Python: outputs queue up in the core,
  merged per request, until Python takes them;
- one output thread ("ember-output") waits for those outputs with the GIL released, runs each
  request's RequestTracker (incremental detokenization, stop strings, logprobs) and hands the
  results to each request's event loop, one call_soon_threadsafe per event loop per batch;
- the event loop(s) calling generate() validate and tokenize prompts and consume the outputs.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import threading
import time
import weakref
from collections.abc import AsyncIterator

from ember import _core
from ember.engine import _EngineBase
from ember.outputs import RequestMetrics, RequestOutput
from ember.prompts import PromptInputs
from ember.request_tracker import RequestTracker
from ember.sampling_params import SamplingParams

# The core's exception (a RuntimeError): the engine loop has died, or the engine is shut down.
EngineDeadError = _core.EngineDeadError

OUTPUT_KINDS = ("cumulative", "delta", "final_only")


class AsyncEngine(_EngineBase):
    """An engine for many concurrent streaming requests, as vLLM's AsyncLLM.

    Takes Engine's arguments (model, tokenizer, dtype, device, max_model_len, max_num_seqs,
    max_num_batched_tokens, enable_prefix_caching, gpu_memory_utilization, enforce_eager, ...),
    except that on the CPU num_threads=0 means every core but one, which is left to the output
    thread and the event loop.

        async with AsyncEngine(model) as engine:
            async for output in engine.generate("Paris is", params, request_id="r1"):
                print(output.outputs[0].text)

    Health: once the core loop dies (a step failed), `errored` is True, `dead_error` holds the
    error, every live generate() raises EngineDeadError and so does every new one. shutdown()
    ends the live requests with finish_reason "abort" (each generate() yields that last output
    and returns); generate() after shutdown raises EngineDeadError.
    """

    def _start(self, config) -> None:
        if config.num_threads == 0:
            # NOTE: the CPU kernels' OpenMP threads would otherwise compete for every core with
            # the output thread and the event loop; a preempted thread stalls a whole parallel
            # region, which made steps 4-8x slower under 2,000 streaming requests on a 2-core
            # machine. vLLM's CPU backend likewise reserves a core for its frontend. (The CUDA
            # backend ignores num_threads.)
            config.num_threads = max(1, _num_usable_cores() - 1)
        self._lock = threading.Lock()  # guards _requests, _dead_error, _shutting_down
        self._requests: dict[str, _Request] = {}  # by id, until the core reports it finished
        self._dead_error: BaseException | None = None
        self._shutting_down = False
        self._core = _core.EngineLoop(config)  # starts the core loop
        self._output_thread = threading.Thread(
            target=self._run_output_thread, name="ember-output", daemon=True
        )
        self._output_thread.start()
        _ENGINES.add(self)

    # ----- requests ---------------------------------------------------------------------------

    async def generate(
        self,
        prompt: PromptInputs,
        sampling_params: SamplingParams | None,
        request_id: str,
        *,
        output_kind: str = "cumulative",
    ) -> AsyncIterator[RequestOutput]:
        """Streams one request's outputs; the last has finished=True.

        prompt: a str, a list of token ids, or {"prompt": str} / {"prompt_token_ids": [...]}.
        output_kind: "cumulative" (every output holds everything so far), "delta" (each sample
        carries only the text, token ids and logprobs new since the previous output; samples
        with nothing new are left out; finish_reason is set on a sample's last) or
        "final_only" (one output, at the end). Outputs that pile up while the consumer is busy
        are merged, never dropped. Every output carries `metrics` (RequestMetrics).

        Invalid input raises ValueError before anything is yielded, and so does a request_id
        that is still in use. Closing the iterator early (break, aclose, a cancelled task)
        aborts the request in the core at once, which frees its KV blocks.
        """
        arrival_time = time.monotonic()
        self._check_accepting()
        if output_kind not in OUTPUT_KINDS:
            raise ValueError(f"output_kind must be one of {OUTPUT_KINDS}, got {output_kind!r}")
        if not isinstance(request_id, str) or not request_id:
            raise ValueError(f"request_id must be a non-empty str, got {request_id!r}")
        text, token_ids, params = self._prepare_one(prompt, sampling_params)
        tracker = RequestTracker(
            request_id, text, token_ids, params, self._tokenizer, self._decode_token
        )
        request = _Request(
            tracker, asyncio.get_running_loop(), _Stream(output_kind), output_kind, arrival_time
        )
        self._register(request)
        finished = False
        try:
            while True:
                output = await request.stream.get()
                finished = output.finished
                yield output
                if finished:
                    return
        finally:
            if not finished:
                request.closed = True
                self._core.abort(request_id)

    async def abort(self, request_id: str) -> None:
        """Aborts a request: its generate() yields a last output with finish_reason "abort".
        Unknown and finished ids are ignored."""
        self._core.abort(request_id)

    def _register(self, request: _Request) -> None:
        request_id = request.tracker.request_id
        with self._lock:
            # NOTE: an id stays taken until the core has reported the request finished, even
            # after its consumer has gone, so a late output of the old request can never reach
            # a new one with the same id.
            if request_id in self._requests:
                raise ValueError(
                    f"request_id {request_id!r} is already in use by a running request; "
                    "give each request a unique id"
                )
            self._requests[request_id] = request
        try:
            self._core.add_request(
                request_id, request.tracker.prompt_token_ids, request.tracker.params.to_core()
            )
        except BaseException:
            with self._lock:
                self._requests.pop(request_id, None)
            raise

    def _check_accepting(self) -> None:
        error = self.dead_error
        if error is not None:
            raise EngineDeadError(str(error))
        if self._shutting_down:
            raise EngineDeadError("the engine has been shut down")

    # ----- health, stats ----------------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        """True until the engine is shut down or its loop dies."""
        return not self._shutting_down and self.dead_error is None and self._core.is_alive()

    @property
    def errored(self) -> bool:
        return self.dead_error is not None

    @property
    def dead_error(self) -> BaseException | None:
        """The EngineDeadError that ended the engine; None while it runs or after shutdown()."""
        with self._lock:
            if self._dead_error is None and self._core.error is not None:
                # The core died; the output thread has not drained its last outputs yet.
                self._dead_error = EngineDeadError(f"the engine loop has died: {self._core.error}")
            return self._dead_error

    def stats(self) -> dict:
        """Counters and gauges for monitoring (Prometheus), as of the core's last step.

        num_running / num_waiting count sequences (each sample of an n > 1 request is one);
        kv_cache_usage is the fraction of KV blocks in use; the prefix-cache counters count
        prompt tokens looked up and found; num_prompt_tokens counts each request's prompt once
        its first token is out, num_generation_tokens every generated token.
        num_unfinished_requests counts the requests whose final output the output thread has
        not processed yet (the core may have finished them a moment earlier): at 0 every
        request_id is free again.
        """
        s = self._core.stats()
        with self._lock:
            num_unfinished = len(self._requests)
        return {
            "num_running": s.num_running,
            "num_waiting": s.num_waiting,
            "num_unfinished_requests": num_unfinished,
            "kv_cache_usage": s.kv_cache_usage,
            "num_preemptions": s.num_preemptions,
            "num_prefix_cache_queries": s.num_prefix_cache_queries,
            "num_prefix_cache_hits": s.num_prefix_cache_hits,
            "num_prompt_tokens": s.num_prompt_tokens,
            "num_generation_tokens": s.num_generation_tokens,
            "num_steps": s.num_steps,
            "step_seconds": s.step_seconds,
            "device_wait_seconds": s.device_wait_seconds,
        }

    # ----- shutdown ---------------------------------------------------------------------------

    def shutdown(self) -> _Done:
        """Stops the engine: live requests end with finish_reason "abort", new ones raise
        EngineDeadError, both threads are joined. Idempotent. Works as `engine.shutdown()` and
        as `await engine.shutdown()`; either way the engine is stopped when the call returns."""
        with self._lock:
            self._shutting_down = True
        self._core.shutdown()  # the GIL is released while the core drains and joins
        if threading.current_thread() is not self._output_thread:
            self._output_thread.join()
        _ENGINES.discard(self)
        return _Done()

    async def __aenter__(self) -> AsyncEngine:
        return self

    async def __aexit__(self, *exc_info) -> None:
        # In a worker thread, so the event loop keeps delivering the final "abort" outputs.
        await asyncio.to_thread(self.shutdown)

    def __enter__(self) -> AsyncEngine:
        return self

    def __exit__(self, *exc_info) -> None:
        self.shutdown()

    # ----- the output thread ------------------------------------------------------------------

    def _run_output_thread(self) -> None:
        _core.name_os_thread("ember-output")
        try:
            while True:
                outputs = self._core.wait_outputs(None)  # the GIL is released while it waits
                if outputs:
                    self._route(outputs)
                elif not self._core.is_alive():
                    break
        except EngineDeadError as error:
            self._fail_all(str(error))
        except BaseException as error:  # a bug here must not leave requests waiting forever
            self._fail_all(f"the engine's output thread failed: {error!r}")
            self._core.shutdown()
        else:
            # A clean stop: the core ended every request it had; any left were refused.
            self._fail_all("the engine has been shut down", dead=False)

    def _route(self, core_outputs) -> None:
        now = time.monotonic()
        with self._lock:
            routed = [(o, self._requests.get(o.request_id)) for o in core_outputs]
        deliveries: dict[asyncio.AbstractEventLoop, list] = {}
        done = []
        for core_output, request in routed:
            if request is None:
                continue
            if core_output.finished:
                done.append(request)
            if request.closed:
                continue  # its consumer has gone; the abort is on its way
            try:
                item = request.advance(core_output, self._core, now)
            except Exception as error:  # e.g. a tokenizer failing on this request's tokens
                request.closed = True
                self._core.abort(request.tracker.request_id)
                item = RuntimeError(
                    f"request {request.tracker.request_id!r}: its outputs could not be "
                    f"processed: {error!r}"
                )
            if item is not None:
                deliveries.setdefault(request.loop, []).append((request.stream, item))
        if done:
            with self._lock:
                for request in done:
                    if self._requests.get(request.tracker.request_id) is request:
                        del self._requests[request.tracker.request_id]
        for loop, items in deliveries.items():
            _deliver(loop, items)

    def _fail_all(self, message: str, dead: bool = True) -> None:
        with self._lock:
            if dead and self._dead_error is None:
                self._dead_error = EngineDeadError(message)
            requests = list(self._requests.values())
            self._requests.clear()
        deliveries: dict[asyncio.AbstractEventLoop, list] = {}
        for request in requests:
            if not request.closed:
                error = EngineDeadError(message)
                deliveries.setdefault(request.loop, []).append((request.stream, error))
        for loop, items in deliveries.items():
            _deliver(loop, items)


class _Stream:
    """A request's outputs on its event loop: the output not yet taken (later deltas merged into
    it, later cumulative outputs replacing it), then the error that ends the stream, if any."""

    def __init__(self, output_kind: str):
        self._merge = output_kind == "delta"
        self._pending: RequestOutput | None = None
        self._error: BaseException | None = None
        self._ready = asyncio.Event()

    def put(self, item: RequestOutput | BaseException) -> None:
        if isinstance(item, BaseException):
            self._error = item
        elif self._pending is not None and self._merge:
            _merge_delta(self._pending, item)
        else:
            self._pending = item
        self._ready.set()

    async def get(self) -> RequestOutput:
        while self._pending is None:
            if self._error is not None:
                raise self._error
            self._ready.clear()
            await self._ready.wait()
        output, self._pending = self._pending, None
        return output


class _Request:
    """One generate() call as the output thread sees it. Only that thread touches the tracker
    after generate() has created it."""

    def __init__(self, tracker, loop, stream: _Stream, output_kind: str, arrival_time: float):
        self.tracker: RequestTracker = tracker
        self.loop: asyncio.AbstractEventLoop = loop
        self.stream = stream
        self.output_kind = output_kind
        self.metrics = RequestMetrics(arrival_time=arrival_time)
        self.closed = False  # its consumer has gone
        self.delivered_final = False

    def advance(self, core_output, core, now: float) -> RequestOutput | None:
        """Applies the core's output; returns what to hand to the consumer, if anything."""
        tracker = self.tracker
        num_tokens_before = tracker.num_output_tokens
        for sample_index in tracker.apply(core_output):  # samples that hit a stop string
            core.abort(tracker.request_id, sample_index)
        metrics = self.metrics
        if tracker.num_output_tokens > num_tokens_before:
            if metrics.first_token_time is None:
                metrics.first_token_time = now
            metrics.last_token_time = now
            metrics.num_generation_tokens = tracker.num_output_tokens
        finished = tracker.finished
        if finished and metrics.finished_time is None:
            metrics.finished_time = now
        if self.delivered_final:
            return None  # finished here on stop strings; this is the core's abort echo
        if self.output_kind == "delta":
            output = tracker.take_delta_output()
        elif self.output_kind == "cumulative" or finished:
            output = tracker.to_output()
        else:
            output = None
        if output is None:
            return None
        output.metrics = metrics.snapshot()
        self.delivered_final = finished
        return output


def _num_usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _merge_delta(into: RequestOutput, delta: RequestOutput) -> None:
    """Appends a later delta of the same request to one its consumer has not taken yet."""
    by_index = {c.index: c for c in into.outputs}
    for part in delta.outputs:
        earlier = by_index.get(part.index)
        if earlier is None:
            into.outputs.append(part)
            by_index[part.index] = part
            continue
        earlier.text += part.text
        earlier.token_ids = earlier.token_ids + part.token_ids
        if earlier.logprobs is not None and part.logprobs is not None:
            earlier.logprobs = earlier.logprobs + part.logprobs
        earlier.cumulative_logprob = part.cumulative_logprob
        earlier.finish_reason = part.finish_reason
        earlier.stop_reason = part.stop_reason
    into.outputs.sort(key=lambda c: c.index)
    into.finished = delta.finished
    into.num_cached_tokens = delta.num_cached_tokens
    if delta.prompt_logprobs is not None:
        into.prompt_logprobs = delta.prompt_logprobs
    into.metrics = delta.metrics


def _deliver(loop: asyncio.AbstractEventLoop, items: list) -> None:
    # A closed event loop raises RuntimeError: nobody is left to read these streams.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_put_all, items)


def _put_all(items: list) -> None:
    for stream, item in items:
        stream.put(item)


class _Done:
    """What shutdown() returns: awaiting it is a no-op, so both spellings work."""

    def __await__(self):
        return
        yield


# Engines not shut down by their owner are shut down at interpreter exit, before the module
# teardown that would otherwise meet a core thread still stepping. (The output thread is a
# daemon, so the interpreter does not wait for it before running this.)
_ENGINES: weakref.WeakSet[AsyncEngine] = weakref.WeakSet()


@atexit.register
def _shutdown_engines_at_exit() -> None:
    for engine in list(_ENGINES):
        engine.shutdown()
