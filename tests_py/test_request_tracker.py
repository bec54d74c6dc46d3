"""RequestTracker on hand-made core outputs: stop strings, abort requests, logprobs, n > 1."""

import importlib.util
import sys
from types import SimpleNamespace

import pytest

import ember
from ember.request_tracker import RequestTracker
from ember.sampling_params import SamplingParams
from test_detokenizer import byte_level_tokenizer
from test_engine_fake_core import FakeSamplingParams


@pytest.fixture(autouse=True)
def core_sampling_params(monkeypatch):
    """SamplingParams validates through the core; without a built one, a fake stands in."""
    if importlib.util.find_spec("ember._core") is None:
        fake = SimpleNamespace(SamplingParams=FakeSamplingParams)
        monkeypatch.setattr(ember, "_core", fake, raising=False)
        monkeypatch.setitem(sys.modules, "ember._core", fake)


def completion(index, token_ids, finish_reason=None, stop_token_id=None, logprobs=()):
    return SimpleNamespace(
        index=index,
        token_ids=token_ids,
        logprobs=list(logprobs),
        finish_reason=finish_reason,
        stop_token_id=stop_token_id,
    )


def step_output(*completions, num_cached_tokens=0):
    return SimpleNamespace(outputs=list(completions), num_cached_tokens=num_cached_tokens)


def make_tracker(params, tokenizer=None):
    tokenizer = tokenizer or byte_level_tokenizer()
    return RequestTracker("r", "p", [1], params, tokenizer, lambda t: tokenizer.decode([t]))


def test_stop_string_finishes_sample_truncates_text_and_asks_for_abort():
    tokenizer = byte_level_tokenizer()
    tracker = make_tracker(SamplingParams(stop=["fox"], max_tokens=50), tokenizer)
    ids = tokenizer("the quick brown fox jumps", add_special_tokens=False).input_ids
    to_abort = []
    for token_id in ids:
        to_abort += tracker.apply(step_output(completion(0, [token_id])))
    assert to_abort == [0]
    out = tracker.to_output().outputs[0]
    assert out.text == "the quick brown "
    assert (out.finish_reason, out.stop_reason) == ("stop", "fox")
    assert tracker.finished
    assert tracker.apply(step_output(completion(0, [], finish_reason="abort"))) == []
    assert tracker.to_output().outputs[0].finish_reason == "stop"  # the abort echo is ignored


def test_core_finish_reasons_pass_through():
    tracker = make_tracker(SamplingParams(n=2, max_tokens=2))
    tracker.apply(step_output(completion(0, [5]), completion(1, [6])))
    assert not tracker.finished
    tracker.apply(step_output(completion(0, [7], "stop", stop_token_id=7)))
    tracker.apply(step_output(completion(1, [8], "length"), num_cached_tokens=4))
    out = tracker.to_output()
    assert out.finished and out.num_cached_tokens == 4
    assert [(c.token_ids, c.finish_reason, c.stop_reason) for c in out.outputs] == [
        ([5, 7], "stop", 7),
        ([6, 8], "length", None),
    ]
    assert out.outputs[0].logprobs is None and out.outputs[0].cumulative_logprob is None


def test_token_count_and_finished_follow_every_sample():
    """num_output_tokens and finished are counts kept as tokens arrive: a stop string in the
    middle of a delta drops the tokens after it, and the tracker finishes with its last sample."""
    tokenizer = byte_level_tokenizer()
    tracker = make_tracker(SamplingParams(n=2, stop=["fox"], max_tokens=50), tokenizer)
    ids = tokenizer("the fox jumps", add_special_tokens=False).input_ids
    fox_end = next(i for i in range(len(ids)) if "fox" in tokenizer.decode(ids[: i + 1])) + 1
    assert fox_end < len(ids)
    assert tracker.apply(step_output(completion(0, ids), completion(1, [5, 6]))) == [0]
    assert tracker.num_output_tokens == fox_end + 2
    assert not tracker.finished
    tracker.apply(step_output(completion(0, [7], "abort"), completion(1, [8])))  # abort echo
    assert tracker.num_output_tokens == fox_end + 3
    assert not tracker.finished
    tracker.apply(step_output(completion(1, [], "length")))
    assert tracker.finished
    out = tracker.to_output()
    assert tracker.num_output_tokens == sum(len(c.token_ids) for c in out.outputs)
    assert [c.finish_reason for c in out.outputs] == ["stop", "length"]


def test_logprobs_hold_sampled_token_and_top_n():
    tracker = make_tracker(SamplingParams(logprobs=2))
    token = SimpleNamespace(token_id=9, logprob=-1.5, rank=3, top=[(4, -0.5), (5, -1.0)])
    tracker.apply(step_output(completion(0, [9], "length", logprobs=[token])))
    out = tracker.to_output().outputs[0]
    (entry,) = out.logprobs
    assert {t: (lp.logprob, lp.rank) for t, lp in entry.items()} == {
        9: (-1.5, 3),
        4: (-0.5, 1),
        5: (-1.0, 2),
    }
    assert out.cumulative_logprob == pytest.approx(-1.5)


def test_stream_text_holds_back_a_possible_stop_prefix():
    tokenizer = byte_level_tokenizer()
    tracker = make_tracker(SamplingParams(stop=["END"]), tokenizer)
    ids = tokenizer("abc E", add_special_tokens=False).input_ids
    tracker.apply(step_output(completion(0, ids)))
    assert tracker.take_stream_text() == "abc"  # " E" may start "END"... 2 chars held back
    tracker.apply(step_output(completion(0, tokenizer("x", add_special_tokens=False).input_ids)))
    tracker.apply(step_output(completion(0, [], "length")))
    assert tracker.take_stream_text() == " Ex"
