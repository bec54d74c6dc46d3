"""SamplingParams validation: each invalid field raises ValueError naming the field and value."""

import pytest

from ember.sampling_params import SamplingParams


@pytest.mark.parametrize(
    ("stop", "shown"),
    [("", "''"), (["ok", ""], "''"), ([3], "3"), (5, "5"), (["a", None], "None")],
)
def test_invalid_stop(stop, shown):
    # Python-only field: checked before the core is consulted.
    with pytest.raises(ValueError, match="stop") as info:
        SamplingParams(stop=stop)
    assert shown in str(info.value)


try:
    import ember._core  # noqa: F401

    HAS_CORE = True
except ImportError:
    HAS_CORE = False
needs_core = pytest.mark.skipif(not HAS_CORE, reason="ember._core is not built")


@needs_core
def test_defaults_are_valid_and_match_vllm():
    params = SamplingParams()
    assert (params.n, params.temperature, params.top_p, params.top_k) == (1, 1.0, 1.0, 0)
    assert (params.max_tokens, params.min_tokens, params.logprobs) == (16, 0, None)
    assert params.stop == [] and params.stop_token_ids == []
    assert params.skip_special_tokens is True


@needs_core
def test_stop_string_becomes_a_list_and_core_params_carry_the_fields():
    params = SamplingParams(
        stop="END", stop_token_ids=[3], temperature=0.5, seed=7, logprobs=2, max_tokens=9
    )
    assert params.stop == ["END"]
    converted = params.to_core()
    assert (converted.temperature, converted.seed, converted.logprobs) == (0.5, 7, 2)
    assert (list(converted.stop_token_ids), converted.max_tokens) == ([3], 9)


@needs_core
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n", 0),
        ("temperature", -0.5),
        ("top_p", 1.5),
        ("top_p", 0.0),
        ("top_k", -2),
        ("min_p", 1.5),
        ("repetition_penalty", -1.5),
        ("max_tokens", 0),
        ("min_tokens", -3),
        ("logprobs", 21),
        ("logprobs", -1),
        ("seed", -1),
        ("n", "2"),
        ("skip_special_tokens", "yes"),
    ],
)
def test_invalid_field_names_field_and_value(field, value):
    with pytest.raises(ValueError) as info:
        SamplingParams(**{field: value})
    message = str(info.value)
    assert field in message, message
    # The C++ core prints floats the shortest way (0.0 as "0"), as %g does.
    shown = f"{value:g}" if isinstance(value, float) else str(value)
    assert shown in message, message


@needs_core
def test_changed_field_is_caught_by_validate():
    params = SamplingParams()
    params.max_tokens = 0
    with pytest.raises(ValueError, match="max_tokens"):
        params.validate()


@needs_core
def test_logit_bias_is_normalized_and_reaches_the_core():
    params = SamplingParams(logit_bias={5: 2, 7: -100.0, 0: 100})
    assert params.logit_bias == {0: 100.0, 5: 2.0, 7: -100.0}
    assert all(type(v) is float for v in params.logit_bias.values())
    assert params.to_core().logit_bias == {0: 100.0, 5: 2.0, 7: -100.0}
    assert SamplingParams().logit_bias == {}
    assert SamplingParams(logit_bias=None).to_core().logit_bias == {}


@needs_core
@pytest.mark.parametrize(
    ("logit_bias", "shown"),
    [
        ([(1, 2.0)], "list"),
        ({"5": 1.0}, "'5'"),
        ({True: 1.0}, "True"),
        ({1.0: 1.0}, "1.0"),
        ({-1: 1.0}, "-1"),
        ({2**31: 1.0}, str(2**31)),
        ({3: "big"}, "'big'"),
        ({3: None}, "None"),
        ({3: 100.5}, "100.5"),
        ({3: -101}, "-101"),
        ({3: float("nan")}, "nan"),
        ({3: float("inf")}, "inf"),
    ],
)
def test_invalid_logit_bias_names_field_and_value(logit_bias, shown):
    with pytest.raises(ValueError, match="logit_bias") as info:
        SamplingParams(logit_bias=logit_bias)
    assert shown in str(info.value)


@needs_core
def test_logit_bias_range_message_names_the_token_and_the_range():
    with pytest.raises(ValueError) as info:
        SamplingParams(logit_bias={42: 250.0})
    assert str(info.value) == "logit_bias[42] must be a number in [-100, 100], got 250.0"


@needs_core
def test_changed_logit_bias_is_caught_by_validate_and_to_core():
    params = SamplingParams()
    params.logit_bias = {1: 500}
    with pytest.raises(ValueError, match=r"logit_bias\[1\]"):
        params.validate()
    # The core checks the range itself too.
    core = SamplingParams().to_core()
    core.logit_bias = {1: 500.0}
    with pytest.raises(ValueError, match=r"logit_bias\[1\] must be a number in \[-100, 100\]"):
        core.validate()
