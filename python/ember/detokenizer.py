"""Incremental detokenization: turns generated token ids into text deltas as they arrive.

Decoding each new token on its own is wrong in two ways: a UTF-8 character may be split across
byte-level tokens, and SentencePiece-style decoders drop the leading space of the first token of
a sequence. Both are handled by decoding with some context: tokenizers' DecodeStream, primed with
the end of the prompt, for fast tokenizers; a prefix/read-offset scheme for the rest.
"""

from __future__ import annotations

from typing import Protocol

from tokenizers.decoders import DecodeStream

# Prompt tokens given as context: enough for any decoder's look-behind (a space marker, a
# partial character of at most 4 bytes), few enough that long prompts cost nothing.
_NUM_CONTEXT_TOKENS = 8
_REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer(Protocol):
    """The text of one sample's generated tokens, one token at a time.

    The deltas that add() returns concatenate to tokenizer.decode(token_ids,
    skip_special_tokens=...) for byte-level BPE tokenizers; for SentencePiece ones the first
    token keeps its leading space, as it should when the text continues the prompt.
    """

    def add(self, token_id: int) -> str:
        """Appends a token; returns the text it completed (may be "" mid-character)."""


def make_incremental_detokenizer(
    tokenizer, prompt_token_ids: list[int], skip_special_tokens: bool = True
) -> IncrementalDetokenizer:
    """The detokenizer of one sample continuing this prompt: tokenizers' DecodeStream for fast
    tokenizers, a decode window for the rest."""
    context = list(prompt_token_ids[-_NUM_CONTEXT_TOKENS:])
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return _StreamDecoder(backend, context, skip_special_tokens)
    return _OffsetDecoder(tokenizer, context, skip_special_tokens)


class _StreamDecoder:
    # NOTE: add() runs once per generated token on the server's output thread, so it is one
    # call into tokenizers and nothing more.
    def __init__(self, backend, context: list[int], skip_special_tokens: bool):
        self._step = DecodeStream(ids=context, skip_special_tokens=skip_special_tokens).step
        self._backend = backend

    def add(self, token_id: int) -> str:
        return self._step(self._backend, token_id) or ""


class _OffsetDecoder:
    """For slow (Python) tokenizers: decode a sliding window and emit what grew, once the
    window no longer ends in a partial character."""

    def __init__(self, tokenizer, context: list[int], skip_special_tokens: bool):
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids = list(context)
        self._prefix_offset = 0
        self._read_offset = len(self._ids)

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip)

    def add(self, token_id: int) -> str:
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        if len(new_text) <= len(prefix_text) or new_text.endswith(_REPLACEMENT_CHAR):
            return ""
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        return new_text[len(prefix_text) :]


def find_stop_string(text: str, num_new_chars: int, stops: list[str]) -> tuple[int, str] | None:
    """The earliest stop string in `text` that overlaps its last `num_new_chars` characters.

    Only the new text and len(longest stop) - 1 characters before it are searched: earlier
    matches were found by earlier calls. Returns (position, stop) or None.
    """
    if not stops or num_new_chars <= 0:
        return None
    start = max(0, len(text) - num_new_chars - max(map(len, stops)) + 1)
    best: tuple[int, str] | None = None
    for stop in stops:
        position = text.find(stop, start)
        if position != -1 and (best is None or position < best[0]):
            best = (position, stop)
    return best
