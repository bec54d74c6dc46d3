"""The prompt forms generate() accepts, parsed without a model."""

import numpy as np
import pytest

from ember.prompts import parse_prompts


@pytest.mark.parametrize(
    ("prompts", "expected"),
    [
        ("hi", [("hi", None)]),
        (["a", "b"], [("a", None), ("b", None)]),
        ([1, 2, 3], [(None, [1, 2, 3])]),
        ([[1, 2], [3]], [(None, [1, 2]), (None, [3])]),
        ({"prompt": "x"}, [("x", None)]),
        ([{"prompt_token_ids": [4]}, "y"], [(None, [4]), ("y", None)]),
        ([np.int64(7), np.int32(8)], [(None, [7, 8])]),
        ([], []),
    ],
)
def test_accepted_forms(prompts, expected):
    assert parse_prompts(prompts) == expected


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        (["ok", 3.5], "prompt 1 must be"),
        ([[1, 2], [3, "x"]], "prompt 1 has 'x' at position 1"),
        ([{"text": "x"}], "prompt 0 has unsupported keys ['text']"),
        ([{}], 'prompt 0 needs "prompt" or "prompt_token_ids"'),
        ([[True, 1]], "prompt 0 has True at position 0"),
        (42, "prompts must be"),
    ],
)
def test_malformed_prompts_name_the_index(prompts, message):
    with pytest.raises(ValueError, match=None) as info:
        parse_prompts(prompts)
    assert message in str(info.value)
