"""Engine: vLLM's LLM class over the C++ core. Text in, text out; the core sees token ids only."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from ember import _core
from ember.model_resolver import resolve_model
from ember.outputs import RequestOutput
from ember.prompts import PromptInputs, parse_prompts
from ember.request_tracker import RequestTracker
from ember.sampling_params import SamplingParams


class _EngineBase:
    """What Engine and AsyncEngine share: the constructor (model, tokenizer, the core's config),
    prompt checks, tokenization and chat templates. A subclass starts its core in _start()."""

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        tokenizer: str | Path | None = None,
        dtype: str = "auto",
        max_model_len: int | None = None,
        block_size: int = 16,
        max_num_seqs: int = 256,
        max_num_batched_tokens: int = 2048,
        enable_prefix_caching: bool = True,
        seed: int = 0,
        skip_tokenizer_init: bool = False,
        load_format: str = "auto",
        device: str = "auto",
        num_kv_blocks: int | None = None,
        kv_cache_memory_bytes: int | None = None,
        kv_cache_dtype: str = "auto",
        scheduling_policy: str = "fcfs",
        num_threads: int = 0,
        gpu_memory_utilization: float = 0.9,
        enforce_eager: bool = False,
        async_scheduling: bool | None = None,
    ):
        self._model_dir = resolve_model(model)
        self._tokenizer = None
        if not skip_tokenizer_init:
            self._tokenizer = _load_tokenizer(tokenizer or self._model_dir)
        config = _make_config(
            model=str(self._model_dir),
            dtype=dtype,
            load_format=load_format,
            device=device,
            max_model_len=max_model_len,
            block_size=block_size,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            enable_prefix_caching=enable_prefix_caching,
            policy=scheduling_policy,
            seed=seed,
            num_kv_blocks=num_kv_blocks,
            kv_cache_memory_bytes=kv_cache_memory_bytes,
            kv_cache_dtype=kv_cache_dtype,
            num_threads=num_threads,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
            async_scheduling=async_scheduling,
        )
        self._decode_token = lru_cache(maxsize=65536)(self._decode_one_token)
        self._start(config)

    def _start(self, config) -> None:
        """Creates self._core from the validated `_core.EngineConfig`."""
        raise NotImplementedError

    # ----- properties -------------------------------------------------------------------------

    @property
    def model_dir(self) -> Path:
        """The checkpoint folder the core loaded (for a .gguf: the imported copy)."""
        return self._model_dir

    @property
    def model_info(self):
        return self._core.model_info

    @property
    def max_model_len(self) -> int:
        return self._core.model_info.max_model_len

    @property
    def tokenizer(self):
        """The Hugging Face tokenizer, or None with skip_tokenizer_init=True."""
        return self._tokenizer

    def get_tokenizer(self):
        return self._tokenizer

    # ----- text -------------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`, as a text prompt is tokenized (with the tokenizer's special
        tokens, such as BOS). Text from apply_chat_template already holds them: encode it with
        add_special_tokens=False, or pass chat_prompt()'s dict as the prompt."""
        return list(
            self._require_tokenizer("encode")(text, add_special_tokens=add_special_tokens).input_ids
        )

    def apply_chat_template(
        self,
        messages: list[dict],
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        """One conversation (a list of {"role", "content"}) as prompt text, through the
        tokenizer's chat template or `chat_template` (a Jinja template string)."""
        tokenizer = self._require_tokenizer("chat")
        if chat_template is None and not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"the tokenizer of {self._model_dir} has no chat template; "
                "pass chat_template=... (a Jinja template string)"
            )
        return tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            chat_template=chat_template,
        )

    def chat_prompt(
        self,
        conversation: list[dict],
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
    ) -> dict:
        """A conversation as a prompt dict: the templated text and its token ids (the template
        already holds the special tokens, so none are added)."""
        text = self.apply_chat_template(conversation, chat_template, add_generation_prompt)
        token_ids = self.encode(text, add_special_tokens=False)
        return {"prompt": text, "prompt_token_ids": token_ids}

    # ----- request checks ---------------------------------------------------------------------

    def _prepare(self, prompts, sampling_params) -> list[tuple[str | None, list[int], object]]:
        """Validates every prompt and its params; returns (text, token ids, params) triples."""
        parsed = parse_prompts(prompts)
        params = _params_per_prompt(sampling_params, len(parsed))
        requests = []
        for index, (text, token_ids) in enumerate(parsed):
            if token_ids is None:
                token_ids = self._tokenize(index, text)
            try:  # the core's own checks, made before anything is added
                self._validate_in_core(token_ids, params[index])
            except ValueError as error:
                raise ValueError(f"prompt {index}: {error}") from None
            requests.append((text, token_ids, params[index]))
        return requests

    def _prepare_one(self, prompt, sampling_params) -> tuple[str | None, list[int], object]:
        """One prompt and its params, validated; errors carry the core's messages unprefixed."""
        parsed = parse_prompts(prompt)
        if len(parsed) != 1:
            raise ValueError(f"expected one prompt, got a list of {len(parsed)}")
        text, token_ids = parsed[0]
        params = SamplingParams() if sampling_params is None else sampling_params
        if not isinstance(params, SamplingParams):
            raise ValueError(
                f"sampling_params must be a SamplingParams, got {type(params).__name__}"
            )
        params.validate()  # fields may have been changed since construction
        if token_ids is None:
            token_ids = self._tokenize(None, text)
        self._validate_in_core(token_ids, params)
        return text, token_ids, params

    def _validate_in_core(self, token_ids: list[int], params: SamplingParams) -> None:
        try:
            self._core.validate_request(token_ids, params.to_core())
        except TypeError:
            # pybind11 refuses ids that do not fit the core's 32-bit int before the core sees
            # them: name the first one as the core names any id outside the vocabulary.
            vocab = f"[0, {self._core.model_info.vocab_size})"
            for position, token_id in enumerate(token_ids):
                if not -(2**31) <= token_id < 2**31:
                    raise ValueError(
                        f"prompt token id {token_id} at position {position} is outside the "
                        f"vocabulary {vocab}"
                    ) from None
            raise

    def _tokenize(self, index: int | None, text: str) -> list[int]:
        name = "prompt" if index is None else f"prompt {index}"
        # NOTE: checked before tokenizing, since a tokenizer that adds BOS would turn "" into a
        # one-token prompt and run it.
        if not text:
            raise ValueError(f"{name} is empty: give at least one character")
        if self._tokenizer is None:
            raise ValueError(
                f"{name} is text but the engine was created with "
                "skip_tokenizer_init=True; pass token ids instead"
            )
        return list(self._tokenizer(text).input_ids)

    def _require_tokenizer(self, what: str):
        if self._tokenizer is None:
            raise ValueError(f"{what} needs a tokenizer but skip_tokenizer_init=True")
        return self._tokenizer

    def _decode_one_token(self, token_id: int) -> str | None:
        if self._tokenizer is None:
            return None
        return self._tokenizer.decode([token_id])


class Engine(_EngineBase):
    """An LLM engine; `ember.LLM` is the same class, so vLLM code ports by changing the import.

    model: None (the embedded default model, SmolLM2-135M-Instruct), a checkpoint directory, a
    .gguf file or a Hugging Face id already in the local cache. Nothing is downloaded.
    skip_tokenizer_init=True loads no tokenizer: prompts must be token ids and outputs carry
    token ids with empty text. The other arguments are the core's EngineConfig fields; a bad
    value raises ValueError naming it.
    """

    def _start(self, config) -> None:
        self._core = _core.Engine(config)
        self._request_ids = itertools.count()
        # Requests still running, by id: step() outputs are routed here, so generate() and
        # open stream() generators can share the core.
        self._live: dict[str, RequestTracker] = {}

    @property
    def core(self):
        """The C++ engine (`ember._core.Engine`): token ids only; for benchmarks and tests."""
        return self._core

    def stats(self):
        """The core's EngineStats: running/waiting requests, KV-cache usage, prefix-cache hits."""
        return self._core.stats()

    # ----- generation -------------------------------------------------------------------------

    def generate(
        self,
        prompts: PromptInputs,
        sampling_params: SamplingParams | list[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Completes each prompt; returns one RequestOutput per prompt, in input order.

        prompts: a str, a list of str, a list of token ids, a list of lists of token ids, or
        dicts {"prompt": str} / {"prompt_token_ids": [...]}. Text is tokenized as transformers
        does by default (with the tokenizer's special tokens). sampling_params: one for all
        prompts or a list with one per prompt; None means SamplingParams().

        Bad input (an empty prompt, a token id outside the vocabulary, a prompt longer than
        max_model_len, an invalid or missing SamplingParams) raises ValueError naming the prompt
        index before any request runs. If anything fails later, every request of the call is
        aborted in the core before the error propagates.
        """
        requests = self._prepare(prompts, sampling_params)
        trackers: list[RequestTracker] = []
        try:
            for prompt, token_ids, params in requests:
                trackers.append(self._add_request(prompt, token_ids, params))
            self._run_until_finished(trackers, use_tqdm)
        finally:
            self._abort_unfinished(trackers)
        return [tracker.to_output() for tracker in trackers]

    def chat(
        self,
        messages: list[dict] | list[list[dict]],
        sampling_params: SamplingParams | list[SamplingParams] | None = None,
        use_tqdm: bool = True,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
    ) -> list[RequestOutput]:
        """Generates the assistant's reply to one conversation (a list of {"role", "content"})
        or to each of a list of them, using the tokenizer's chat template (or `chat_template`)."""
        is_one = not messages or isinstance(messages[0], dict)
        conversations = [messages] if is_one else messages
        prompts = [self.chat_prompt(c, chat_template, add_generation_prompt) for c in conversations]
        return self.generate(prompts, sampling_params, use_tqdm)

    def stream(
        self, prompt: PromptInputs, sampling_params: SamplingParams | None = None
    ) -> Iterator[str]:
        """Yields the completion's text as it is generated (n must be 1).

        The prompt is validated now; the request starts on the first next(). Closing the
        generator early aborts the request in the core.
        """
        self._require_tokenizer("stream")
        requests = self._prepare(prompt, sampling_params)
        if len(requests) != 1:
            raise ValueError(f"stream() takes one prompt, got {len(requests)}")
        if requests[0][2].n != 1:
            raise ValueError(f"stream() needs n=1, got n={requests[0][2].n}")
        return self._stream(*requests[0])

    def _stream(self, prompt, token_ids, params) -> Iterator[str]:
        tracker = self._add_request(prompt, token_ids, params)
        try:
            while True:
                delta = tracker.take_stream_text()
                if delta:
                    yield delta
                if tracker.finished:
                    return
                self._step()
        finally:
            self._abort_unfinished([tracker])

    # ----- internals --------------------------------------------------------------------------

    def _add_request(self, prompt, token_ids, params: SamplingParams) -> RequestTracker:
        request_id = str(next(self._request_ids))
        tracker = RequestTracker(
            request_id, prompt, token_ids, params, self._tokenizer, self._decode_token
        )
        self._core.add_request(request_id, token_ids, params.to_core())
        self._live[request_id] = tracker
        return tracker

    def _step(self) -> list[RequestTracker]:
        """One core step; routes its outputs; returns the trackers that finished in it."""
        if not self._core.has_unfinished_requests():
            unfinished = ", ".join(self._live) or "none"
            raise RuntimeError(f"the core has no unfinished requests but ember awaits {unfinished}")
        finished = []
        for output in self._core.step():
            tracker = self._live.get(output.request_id)
            if tracker is None:  # finished here already (stop string); this is its abort echo
                continue
            for sample_index in tracker.apply(output):
                self._core.abort(output.request_id, sample_index)
            if tracker.finished:
                del self._live[output.request_id]
                finished.append(tracker)
        return finished

    def _run_until_finished(self, trackers: list[RequestTracker], use_tqdm: bool) -> None:
        progress = _Progress(len(trackers)) if use_tqdm and len(trackers) > 1 else None
        try:
            while not all(t.finished for t in trackers):
                finished = self._step()
                if progress is not None:
                    progress.update(finished)
        finally:
            if progress is not None:
                progress.close()

    def _abort_unfinished(self, trackers: list[RequestTracker]) -> None:
        for tracker in trackers:
            if self._live.pop(tracker.request_id, None) is not None:
                self._core.abort(tracker.request_id)
        # Aborts (and samples finished early by a stop string) take effect at the core's next
        # step; with nothing else live, step now so their blocks are free when this returns.
        while not self._live and self._core.has_unfinished_requests():
            self._core.step()


LLM = Engine


class _Progress:
    """A tqdm bar over prompts showing the output token rate."""

    def __init__(self, total: int):
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, desc="Processed prompts", unit="prompt", dynamic_ncols=True)
        self._start = time.perf_counter()
        self._num_output_tokens = 0

    def update(self, finished: list[RequestTracker]) -> None:
        if not finished:
            return
        self._num_output_tokens += sum(t.num_output_tokens for t in finished)
        rate = self._num_output_tokens / max(time.perf_counter() - self._start, 1e-9)
        self._bar.set_postfix_str(f"output {rate:.1f} toks/s", refresh=False)
        self._bar.update(len(finished))

    def close(self) -> None:
        self._bar.close()


def _load_tokenizer(source):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"cannot load a tokenizer from {source} ({error}); pass tokenizer=<a directory or "
            "cached Hugging Face id>, or skip_tokenizer_init=True to work with token ids"
        ) from None


def _make_config(**fields):
    config = _core.EngineConfig()
    for name, value in fields.items():
        try:
            setattr(config, name, value)
        except TypeError:
            raise ValueError(f"engine argument {name}={value!r} has the wrong type") from None
    config.validate()
    return config


def _params_per_prompt(sampling_params, num_prompts: int) -> list[SamplingParams]:
    if sampling_params is None:
        sampling_params = SamplingParams()
    if isinstance(sampling_params, SamplingParams):
        params = [sampling_params] * num_prompts
    elif isinstance(sampling_params, (list, tuple)):
        if len(sampling_params) != num_prompts:
            raise ValueError(
                f"got {len(sampling_params)} sampling_params for {num_prompts} prompts; "
                "pass one SamplingParams or one per prompt"
            )
        params = list(sampling_params)
    else:
        raise ValueError(
            f"sampling_params must be a SamplingParams or a list of them, "
            f"got {type(sampling_params).__name__}"
        )
    for index, p in enumerate(params):
        if not isinstance(p, SamplingParams):
            raise ValueError(
                f"sampling_params for prompt {index} must be a SamplingParams, "
                f"got {type(p).__name__}"
            )
        try:
            p.validate()  # fields may have been changed since construction
        except ValueError as error:
            raise ValueError(f"sampling_params for prompt {index}: {error}") from None
    return params
