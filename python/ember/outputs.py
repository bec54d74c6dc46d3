"""What Engine.generate() returns, named and shaped as vLLM's outputs so vLLM code ports as is."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Logprob:
    """The log-probability of one token at one position, its rank (1 = most likely) and text."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


# One entry per generated token: token id -> Logprob, holding the sampled token and the top-N.
SampleLogprobs = list[dict[int, Logprob]]
# One entry per prompt token: None for the first (nothing comes before it), then the token's
# Logprob given the tokens before it, and the top-N there.
PromptLogprobs = list[dict[int, Logprob] | None]


@dataclass
class CompletionOutput:
    """One of a request's n samples.

    finish_reason is "stop" (EOS, a stop token or a stop string), "length" (max_tokens or
    max_model_len reached) or "abort"; None while it runs. stop_reason is the stop string or stop
    token id that ended it, None for EOS and length.
    """

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: SampleLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    """When one request's outputs came out, in time.monotonic() seconds (vLLM's RequestMetrics).

    AsyncEngine fills these as its output thread receives the core's outputs, so they include
    the time an output waits for that thread: what a client of the server would see. TTFT is
    first_token_time - arrival_time; the inter-token latency of a streamed chunk is the gap
    between two last_token_time values; end-to-end latency is finished_time - arrival_time.
    """

    arrival_time: float
    first_token_time: float | None = None  # any sample's first token
    last_token_time: float | None = None
    finished_time: float | None = None
    num_generation_tokens: int = 0  # so far, over every sample

    def snapshot(self) -> RequestMetrics:
        """A copy of every field; a third of dataclasses.replace's cost (once per output)."""
        copied = object.__new__(RequestMetrics)
        copied.__dict__.update(self.__dict__)
        return copied


@dataclass
class RequestOutput:
    """The result of one prompt: its samples, ordered by index. metrics is set by AsyncEngine
    (None from Engine). prompt_logprobs is set when SamplingParams.prompt_logprobs was; a
    stream of deltas carries it once, in the first output with tokens."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = False
    num_cached_tokens: int = 0
    metrics: RequestMetrics | None = None
    prompt_logprobs: PromptLogprobs | None = None
