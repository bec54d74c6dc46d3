"""SamplingParams: vLLM's names and defaults; the C++ core validates the token-level fields."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields

# Fields the core knows; the others (stop, skip_special_tokens) act on text, in Python.
_CORE_FIELDS = (
    "n",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "seed",
    "logit_bias",
    "stop_token_ids",
    "ignore_eos",
    "max_tokens",
    "min_tokens",
    "logprobs",
    "prompt_logprobs",
    "priority",
)


@dataclass
class SamplingParams:
    """How to sample one prompt's completions.

    temperature 0 is greedy. stop strings are matched on the detokenized text and are not
    included in it; stop_token_ids finish a sample after sampling one of them. logprobs=N returns,
    per generated token, the sampled token and the N most likely ones. An invalid field raises
    ValueError naming the field, its value and what is allowed.

    prompt_logprobs=N returns, per prompt token after the first, its logprob given the tokens
    before it and the N most likely tokens there (RequestOutput.prompt_logprobs, vLLM's shape).
    As in vLLM, such a request computes its whole prompt: it takes no prefix-cache hit.

    logit_bias maps token ids to a bias in [-100, 100] that is added to the token's logit before
    the penalties, temperature and filters (OpenAI's field, in vLLM's order); greedy requests
    honour it too. -100 in effect bans a token, +100 forces it.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    logit_bias: dict[int, float] | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    priority: int = 0

    def __post_init__(self) -> None:
        self.stop = _normalize_stop(self.stop)
        self.stop_token_ids = list(self.stop_token_ids or [])
        self.logit_bias = _normalize_logit_bias(self.logit_bias)
        self.validate()

    def validate(self) -> None:
        """Raises ValueError naming the first invalid field (the core's rules for its fields)."""
        _normalize_stop(self.stop)
        _normalize_logit_bias(self.logit_bias)
        if not isinstance(self.skip_special_tokens, bool):
            raise ValueError(
                f"skip_special_tokens must be True or False, got {self.skip_special_tokens!r}"
            )
        self.to_core().validate()

    def to_core(self):
        """The equivalent `ember._core.SamplingParams`; a field of the wrong type -> ValueError."""
        from ember import _core

        core = _core.SamplingParams()
        for name in _CORE_FIELDS:
            value = getattr(self, name)
            if name == "logit_bias":
                value = _normalize_logit_bias(value)
            try:
                setattr(core, name, value)
            except TypeError:
                raise ValueError(
                    f"{name} must be of type {_field_type(name)}, got {value!r}"
                ) from None
        return core

    @property
    def stop_strings(self) -> list[str]:
        return list(self.stop or [])


def _normalize_stop(stop) -> list[str]:
    """stop may be None, one string or a list of strings; empty strings would match everywhere."""
    if stop is None:
        return []
    values = [stop] if isinstance(stop, str) else stop
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"stop must be a string or a list of strings, got {stop!r}")
    for value in values:
        if not isinstance(value, str) or not value:
            raise ValueError(f"stop must hold only non-empty strings, got {value!r} in {stop!r}")
    return list(values)


def _normalize_logit_bias(logit_bias) -> dict[int, float]:
    """A dict of int token id -> finite float bias in [-100, 100]; None means no bias. The
    vocabulary bound on ids is checked by the engine, which knows the model."""
    if logit_bias is None:
        return {}
    if not isinstance(logit_bias, dict):
        raise ValueError(
            f"logit_bias must be a dict of token id to bias, got {type(logit_bias).__name__} "
            f"{logit_bias!r}"
        )
    out = {}
    for token_id, bias in logit_bias.items():
        if isinstance(token_id, bool) or not isinstance(token_id, numbers.Integral):
            raise ValueError(f"logit_bias keys must be int token ids, got {token_id!r}")
        if not 0 <= token_id < 2**31:
            raise ValueError(
                f"logit_bias token id must be a non-negative int below 2**31, got {token_id}"
            )
        if isinstance(bias, bool) or not isinstance(bias, numbers.Real):
            raise ValueError(f"logit_bias[{token_id}] must be a number, got {bias!r}")
        if not (math.isfinite(bias) and -100.0 <= bias <= 100.0):
            raise ValueError(f"logit_bias[{token_id}] must be a number in [-100, 100], got {bias}")
        out[int(token_id)] = float(bias)
    return out


def _field_type(name: str) -> str:
    for f in fields(SamplingParams):
        if f.name == name:
            return str(f.type)
    return "?"
