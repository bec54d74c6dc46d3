"""Turns the core's per-step token deltas for one request into text and vLLM-style outputs.

The core knows tokens only; here each sample's tokens are detokenized incrementally, stop strings
are matched on the text, and the per-token logprobs become dicts of Logprob.
"""

from __future__ import annotations

from collections.abc import Callable

from ember.detokenizer import (
    IncrementalDetokenizer,
    find_stop_string,
    make_incremental_detokenizer,
)
from ember.outputs import CompletionOutput, Logprob, PromptLogprobs, RequestOutput
from ember.sampling_params import SamplingParams


class _Sample:
    def __init__(self, index: int, detokenizer: IncrementalDetokenizer | None, logprobs: bool):
        self.index = index
        self.detokenizer = detokenizer
        self.token_ids: list[int] = []
        self.logprobs: list[dict[int, Logprob]] | None = [] if logprobs else None
        self.cumulative_logprob: float | None = 0.0 if logprobs else None
        self.text = ""
        self.num_streamed_chars = 0
        self.num_streamed_tokens = 0  # token ids (and logprobs) handed out by take_delta_output
        self.finish_reported = False
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None


class RequestTracker:
    """One request's samples as the Python layer sees them.

    A sample that matched a stop string is finished here at once; the core, told to abort it,
    reports it again as "abort" later, which is ignored.
    """

    def __init__(
        self,
        request_id: str,
        prompt: str | None,
        prompt_token_ids: list[int],
        params: SamplingParams,
        tokenizer,
        decode_token: Callable[[int], str | None],
    ):
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.num_cached_tokens = 0
        self.prompt_logprobs: PromptLogprobs | None = None  # once the core has sent them
        self._prompt_logprobs_streamed = False
        self._decode_token = decode_token
        self._stops = params.stop_strings
        self._samples = [
            _Sample(i, self._make_detokenizer(tokenizer), params.logprobs is not None)
            for i in range(params.n)
        ]
        # Kept as counts (not sums over the samples): read several times per token.
        self.num_output_tokens = 0  # over every sample
        self._num_unfinished = params.n

    def _make_detokenizer(self, tokenizer) -> IncrementalDetokenizer | None:
        if tokenizer is None:
            return None
        return make_incremental_detokenizer(
            tokenizer, self.prompt_token_ids, self.params.skip_special_tokens
        )

    @property
    def finished(self) -> bool:
        return self._num_unfinished == 0

    def apply(self, core_output) -> list[int]:
        """Takes one step()'s output; returns the sample indices that the core must abort."""
        self.num_cached_tokens = max(self.num_cached_tokens, core_output.num_cached_tokens)
        if self.params.prompt_logprobs is not None and self.prompt_logprobs is None:
            self._take_prompt_logprobs(core_output)
        to_abort = []
        for completion in core_output.outputs:
            sample = self._samples[completion.index]
            if sample.finish_reason is not None:
                continue
            if self._extend(sample, completion) and completion.finish_reason is None:
                to_abort.append(completion.index)
        return to_abort

    def _extend(self, sample: _Sample, completion) -> bool:
        """Appends a delta token by token; True when a stop string finished the sample."""
        logprobs = completion.logprobs
        for position, token_id in enumerate(completion.token_ids):
            sample.token_ids.append(token_id)
            self.num_output_tokens += 1
            if sample.logprobs is not None and position < len(logprobs):
                self._append_logprobs(sample, logprobs[position])
            if sample.detokenizer is not None and self._hit_stop_string(sample, token_id):
                return True
        if completion.finish_reason is not None:
            self._finish(sample, completion.finish_reason, completion.stop_token_id)
        return False

    def _finish(self, sample: _Sample, reason: str, stop_reason: int | str | None) -> None:
        sample.finish_reason = reason
        sample.stop_reason = stop_reason
        self._num_unfinished -= 1

    def _hit_stop_string(self, sample: _Sample, token_id: int) -> bool:
        delta = sample.detokenizer.add(token_id)
        sample.text += delta
        # NOTE: as in vLLM, stop strings are not looked for before min_tokens tokens.
        if len(sample.token_ids) < self.params.min_tokens:
            return False
        match = find_stop_string(sample.text, len(delta), self._stops)
        if match is None:
            return False
        position, stop = match
        sample.text = sample.text[:position]
        self._finish(sample, "stop", stop)
        return True

    def _take_prompt_logprobs(self, core_output) -> None:
        # The core sends them with the request's first tokens (none for a one-token prompt).
        scored = core_output.prompt_logprobs
        if scored or any(c.token_ids for c in core_output.outputs):
            self.prompt_logprobs = [None] + [self._logprob_entry(t) for t in scored]

    def _logprob_entry(self, token_logprobs) -> dict[int, Logprob]:
        """The scored token first, then the top-N that are not it, by rank."""
        entry = {
            token_logprobs.token_id: Logprob(
                token_logprobs.logprob,
                token_logprobs.rank,
                self._decode_token(token_logprobs.token_id),
            )
        }
        for rank, (token_id, logprob) in enumerate(token_logprobs.top, start=1):
            entry.setdefault(token_id, Logprob(logprob, rank, self._decode_token(token_id)))
        return entry

    def _append_logprobs(self, sample: _Sample, token_logprobs) -> None:
        sample.logprobs.append(self._logprob_entry(token_logprobs))
        sample.cumulative_logprob += token_logprobs.logprob

    def take_stream_text(self, index: int = 0) -> str:
        """Text of sample `index` not yet streamed. While it runs, the last len(longest stop)-1
        characters are held back: they may turn out to start a stop string."""
        return self._take_text(self._samples[index])

    def _take_text(self, sample: _Sample) -> str:
        end = len(sample.text)
        if sample.finish_reason is None and self._stops:
            end = max(sample.num_streamed_chars, end - max(map(len, self._stops)) + 1)
        delta = sample.text[sample.num_streamed_chars : end]
        sample.num_streamed_chars = end
        return delta

    def take_delta_output(self) -> RequestOutput | None:
        """What changed since the last call: each sample with new text, tokens or a finish,
        carrying only those (cumulative_logprob stays the running total); None if nothing did.

        Text is held back as take_stream_text holds it, so the deltas' texts, token ids and
        logprobs concatenate to to_output()'s; finish_reason is set on a sample's last delta.
        """
        completions = []
        for sample in self._samples:
            text = self._take_text(sample)
            start = sample.num_streamed_tokens
            token_ids = sample.token_ids[start:]
            newly_finished = sample.finish_reason is not None and not sample.finish_reported
            if not (text or token_ids or newly_finished):
                continue
            sample.num_streamed_tokens = len(sample.token_ids)
            sample.finish_reported = sample.finish_reason is not None
            completions.append(
                CompletionOutput(
                    index=sample.index,
                    text=text,
                    token_ids=token_ids,
                    cumulative_logprob=sample.cumulative_logprob,
                    logprobs=None if sample.logprobs is None else sample.logprobs[start:],
                    finish_reason=sample.finish_reason,
                    stop_reason=sample.stop_reason,
                )
            )
        if not completions:
            return None
        prompt_logprobs = None
        if self.prompt_logprobs is not None and not self._prompt_logprobs_streamed:
            prompt_logprobs, self._prompt_logprobs_streamed = self.prompt_logprobs, True
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=self.prompt_token_ids,
            outputs=completions,
            finished=self.finished,
            num_cached_tokens=self.num_cached_tokens,
            prompt_logprobs=prompt_logprobs,
        )

    def to_output(self) -> RequestOutput:
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=list(self.prompt_token_ids),
            outputs=[self._completion(s) for s in self._samples],
            finished=self.finished,
            num_cached_tokens=self.num_cached_tokens,
            prompt_logprobs=self.prompt_logprobs,
        )

    @staticmethod
    def _completion(sample: _Sample) -> CompletionOutput:
        return CompletionOutput(
            index=sample.index,
            text=sample.text,
            token_ids=list(sample.token_ids),
            cumulative_logprob=sample.cumulative_logprob,
            logprobs=sample.logprobs,
            finish_reason=sample.finish_reason,
            stop_reason=sample.stop_reason,
        )
