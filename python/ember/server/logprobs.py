"""Per-token logprobs in the two shapes OpenAI's API uses.

The engine gives, per generated token, a dict {token_id: Logprob(logprob, rank, decoded_token)}
holding the sampled token and the N most likely ones (ranks 1..N). /v1/completions wants the
legacy shape (parallel lists tokens / token_logprobs / top_logprobs / text_offset, the top dict
holding the sampled token too); /v1/chat/completions wants one object per token with its
`top_logprobs` list of exactly the N most likely.
"""

from __future__ import annotations

import math

from ember.server.protocol import (
    ChatLogprob,
    ChatLogprobsContent,
    CompletionLogprobs,
    PromptLogprob,
)

# JSON has no -Infinity; OpenAI and vLLM send this for an impossible token.
_MIN_LOGPROB = -9999.0


def _finite(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else _MIN_LOGPROB


def _token_text(token_id: int, logprob) -> str:
    if logprob is not None and logprob.decoded_token is not None:
        return logprob.decoded_token
    return f"token_id:{token_id}"  # an engine without a tokenizer: vLLM's spelling


def completion_logprobs(
    token_ids: list[int], entries: list[dict], text_offset: int
) -> tuple[CompletionLogprobs, int]:
    """The legacy shape for generated tokens, their offsets counted from `text_offset` (the
    length of the choice's text before them). Returns it and the offset after them."""
    result = CompletionLogprobs()
    for token_id, entry in zip(token_ids, entries, strict=False):
        sampled = entry.get(token_id)
        token = _token_text(token_id, sampled)
        result.tokens.append(token)
        result.token_logprobs.append(_finite(sampled.logprob) if sampled is not None else None)
        result.top_logprobs.append(
            {_token_text(tid, lp): _finite(lp.logprob) for tid, lp in _by_rank(entry)}
        )
        result.text_offset.append(text_offset)
        text_offset += len(token)
    return result, text_offset


def prompt_logprobs(
    prompt_tokens: list[str], token_ids: list[int], entries: list | None, num_top: int
) -> CompletionLogprobs:
    """The legacy shape for an echoed prompt: entries are the engine's prompt logprobs (None
    for the first token, as OpenAI sends null there), each top dict holding the token itself and
    the num_top most likely. Without entries (a request aborted before its first token) the
    logprobs are null; the tokens and their offsets are always real."""
    result = CompletionLogprobs()
    offset = 0
    for position, (token, token_id) in enumerate(zip(prompt_tokens, token_ids, strict=True)):
        entry = entries[position] if entries is not None and position < len(entries) else None
        scored = entry.get(token_id) if entry else None
        result.tokens.append(token)
        result.token_logprobs.append(_finite(scored.logprob) if scored is not None else None)
        result.top_logprobs.append(
            None
            if entry is None
            else {
                _token_text(tid, lp): _finite(lp.logprob)
                for tid, lp in _by_rank(entry)
                if tid == token_id or (lp.rank is not None and lp.rank <= num_top)
            }
        )
        result.text_offset.append(offset)
        offset += len(token)
    return result


def prompt_logprobs_field(entries: list | None) -> list | None:
    """RequestOutput.prompt_logprobs in vLLM's JSON shape (token ids as string keys)."""
    if entries is None:
        return None
    return [
        None
        if entry is None
        else {
            str(token_id): PromptLogprob(
                logprob=_finite(lp.logprob), rank=lp.rank, decoded_token=lp.decoded_token
            )
            for token_id, lp in entry.items()
        }
        for entry in entries
    ]


def join(first: CompletionLogprobs, second: CompletionLogprobs) -> CompletionLogprobs:
    return CompletionLogprobs(
        text_offset=first.text_offset + second.text_offset,
        token_logprobs=first.token_logprobs + second.token_logprobs,
        tokens=first.tokens + second.tokens,
        top_logprobs=first.top_logprobs + second.top_logprobs,
    )


def chat_logprobs(
    token_ids: list[int], entries: list[dict], num_top: int
) -> list[ChatLogprobsContent]:
    content = []
    for token_id, entry in zip(token_ids, entries, strict=False):
        sampled = entry.get(token_id)
        token = _token_text(token_id, sampled)
        top = [
            _chat_logprob(_token_text(tid, lp), lp.logprob)
            for tid, lp in _by_rank(entry)
            if lp.rank is not None and lp.rank <= num_top
        ]
        content.append(
            ChatLogprobsContent(
                token=token,
                logprob=_finite(sampled.logprob) if sampled is not None else _MIN_LOGPROB,
                bytes=list(token.encode("utf-8")),
                top_logprobs=top,
            )
        )
    return content


def _chat_logprob(token: str, logprob: float) -> ChatLogprob:
    return ChatLogprob(token=token, logprob=_finite(logprob), bytes=list(token.encode("utf-8")))


def _by_rank(entry: dict) -> list:
    return sorted(entry.items(), key=lambda item: (item[1].rank is None, item[1].rank or 0))
