"""Engine's Python layer (prompts, detokenization, stop strings, aborts, streaming) on a fake
core that emits a scripted token sequence, so it runs without the C++ engine."""

import importlib
import sys
import types

import pytest

import ember
from ember.sampling_params import SamplingParams
from test_detokenizer import byte_level_tokenizer

SCRIPT = "the quick brown fox jumps over the lazy dog"
MAX_MODEL_LEN = 64


class FakeSamplingParams(types.SimpleNamespace):
    def validate(self):
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")


class FakeConfig(types.SimpleNamespace):
    def validate(self):
        pass


class FakeCore:
    """One token per sample per step, from SCRIPT's token ids; "length" at max_tokens."""

    def __init__(self, config):
        tokenizer = byte_level_tokenizer()
        self.script = tokenizer(SCRIPT, add_special_tokens=False).input_ids
        self.model_info = types.SimpleNamespace(
            vocab_size=len(tokenizer), max_model_len=MAX_MODEL_LEN
        )
        self.requests = {}
        self.added, self.aborted = [], []
        self.fail_at_step = None

    def validate_request(self, prompt_token_ids, params):
        pass  # the real checks are the C++ core's, tested in test_bad_input.py

    def add_request(self, request_id, prompt_token_ids, params):
        self.added.append(request_id)
        self.requests[request_id] = {"params": params, "counts": [0] * params.n, "done": {}}

    def abort(self, request_id, sample_index=None):
        self.aborted.append((request_id, sample_index))
        request = self.requests.get(request_id)
        if request is not None:
            indices = range(len(request["counts"])) if sample_index is None else [sample_index]
            for i in indices:
                request["done"].setdefault(i, "abort-pending")

    def has_unfinished_requests(self):
        return bool(self.requests)

    def step(self):
        if self.fail_at_step is not None:
            self.fail_at_step -= 1
            if self.fail_at_step < 0:
                raise RuntimeError("forward pass failed")
        return [self._advance(rid) for rid in list(self.requests)]

    def _advance(self, request_id):
        request = self.requests[request_id]
        completions = []
        for index, count in enumerate(request["counts"]):
            state = request["done"].get(index)
            if state == "abort-pending":
                request["done"][index] = "abort"
                completions.append(_completion(index, [], "abort"))
            elif state is None:
                token = self.script[(count + index) % len(self.script)]
                request["counts"][index] += 1
                finished = count + 1 == request["params"].max_tokens
                if finished:
                    request["done"][index] = "length"
                completions.append(_completion(index, [token], "length" if finished else None))
        finished = len(request["done"]) == len(request["counts"])
        if finished:
            del self.requests[request_id]
        return types.SimpleNamespace(
            request_id=request_id, outputs=completions, finished=finished, num_cached_tokens=0
        )


def _completion(index, token_ids, finish_reason):
    return types.SimpleNamespace(
        index=index,
        token_ids=token_ids,
        logprobs=[],
        finish_reason=finish_reason,
        stop_token_id=None,
    )


@pytest.fixture
def engine(tmp_path, monkeypatch):
    fake = types.SimpleNamespace(
        SamplingParams=FakeSamplingParams, EngineConfig=FakeConfig, Engine=FakeCore
    )
    monkeypatch.setattr(ember, "_core", fake, raising=False)
    monkeypatch.setitem(sys.modules, "ember._core", fake)
    # Without a built core, ember.engine is first imported here, bound to the fake: forget it
    # afterwards so no later test sees the fake.
    newly_imported = "ember.engine" not in sys.modules
    engine_module = importlib.import_module("ember.engine")
    monkeypatch.setattr(engine_module, "_core", fake)
    (tmp_path / "config.json").write_text("{}")
    byte_level_tokenizer().save_pretrained(tmp_path)
    yield engine_module.Engine(tmp_path)
    if newly_imported:
        sys.modules.pop("ember.engine", None)
        vars(ember).pop("engine", None)


def script_text(num_tokens, offset=0):
    tokenizer = byte_level_tokenizer()
    ids = tokenizer(SCRIPT, add_special_tokens=False).input_ids
    return tokenizer.decode([ids[(offset + i) % len(ids)] for i in range(num_tokens)])


def test_generate_returns_text_in_input_order(engine):
    outputs = engine.generate(["a", "b"], SamplingParams(max_tokens=5), use_tqdm=False)
    assert [o.prompt for o in outputs] == ["a", "b"]
    for output in outputs:
        (completion,) = output.outputs
        assert completion.text == script_text(5)
        assert (completion.finish_reason, completion.stop_reason) == ("length", None)
        assert output.finished and len(completion.token_ids) == 5
    assert not engine.core.requests


def test_stop_string_aborts_only_that_sample(engine):
    params = SamplingParams(n=2, max_tokens=12, stop=["fox"])
    (output,) = engine.generate("x", params, use_tqdm=False)
    first, second = output.outputs
    assert (first.text, first.finish_reason, first.stop_reason) == (
        "the quick brown ",
        "stop",
        "fox",
    )
    assert (second.finish_reason, second.stop_reason) == ("stop", "fox")
    assert "fox" not in second.text
    assert sorted(engine.core.aborted) == [(output.request_id, 0), (output.request_id, 1)]
    # The core applies aborts at its next step; their echo is ignored by whoever steps next.
    (again,) = engine.generate("y", SamplingParams(max_tokens=2), use_tqdm=False)
    assert again.outputs[0].text == script_text(2)
    assert not engine.core.requests


def test_failure_mid_run_aborts_every_request(engine):
    engine.core.fail_at_step = 2
    with pytest.raises(RuntimeError, match="forward pass failed"):
        engine.generate(["a", "b", "c"], SamplingParams(max_tokens=10), use_tqdm=False)
    assert sorted(engine.core.aborted) == [(rid, None) for rid in sorted(engine.core.added)]


def test_stream_yields_the_generated_text(engine):
    deltas = list(engine.stream("x", SamplingParams(max_tokens=7)))
    assert "".join(deltas) == script_text(7) and len(deltas) > 1


def test_closing_a_stream_early_aborts_it(engine):
    stream = engine.stream("x", SamplingParams(max_tokens=30))
    next(stream)
    stream.close()
    assert engine.core.aborted == [(engine.core.added[0], None)]


def test_chat_applies_the_template(engine):
    engine.get_tokenizer().chat_template = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    (output,) = engine.chat([{"role": "user", "content": "hi"}], SamplingParams(max_tokens=2))
    assert output.prompt == "[hi]"
    assert output.prompt_token_ids == engine.get_tokenizer()("[hi]").input_ids


def test_text_prompt_without_tokenizer(engine, monkeypatch):
    monkeypatch.setattr(engine, "_tokenizer", None)
    with pytest.raises(ValueError, match="prompt 0 is text but .*skip_tokenizer_init=True"):
        engine.generate("hi", use_tqdm=False)
    (output,) = engine.generate([[5, 6]], SamplingParams(max_tokens=3), use_tqdm=False)
    assert output.outputs[0].text == "" and len(output.outputs[0].token_ids) == 3
