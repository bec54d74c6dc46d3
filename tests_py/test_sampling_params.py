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
