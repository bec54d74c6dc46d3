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
class RequestOutput:
    """The result of one prompt: its samples, ordered by index."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = False
    num_cached_tokens: int = 0
