"""The prompt forms Engine.generate() accepts, as vLLM accepts them, reduced to one shape."""

from __future__ import annotations

import numbers

# A str, a list of str, a list of token ids, a list of lists of token ids, or dicts
# {"prompt": str} / {"prompt_token_ids": [...]} (alone or in a list).
PromptInputs = str | list | dict

# (text or None, token ids or None): at least one is set; text is tokenized later.
ParsedPrompt = tuple[str | None, list[int] | None]


def parse_prompts(prompts: PromptInputs) -> list[ParsedPrompt]:
    """Splits `prompts` into single prompts; a malformed one raises ValueError naming it."""
    if isinstance(prompts, (str, dict)):
        return [_parse_one(0, prompts)]
    if not isinstance(prompts, (list, tuple)):
        raise ValueError(
            f"prompts must be a str, a list of str, token ids, a list of token id lists or "
            f"prompt dicts, got {type(prompts).__name__}"
        )
    if prompts and all(_is_token_id(x) for x in prompts):
        return [_parse_one(0, list(prompts))]
    return [_parse_one(index, prompt) for index, prompt in enumerate(prompts)]


def _parse_one(index: int, prompt) -> ParsedPrompt:
    if isinstance(prompt, str):
        return prompt, None
    if isinstance(prompt, dict):
        return _parse_dict(index, prompt)
    if isinstance(prompt, (list, tuple)):
        return None, _token_ids(index, prompt)
    raise ValueError(
        f"prompt {index} must be a str, a list of token ids or a prompt dict, "
        f"got {type(prompt).__name__}"
    )


def _parse_dict(index: int, prompt: dict) -> ParsedPrompt:
    unknown = set(prompt) - {"prompt", "prompt_token_ids"}
    if unknown:
        raise ValueError(
            f"prompt {index} has unsupported keys {sorted(unknown)}; "
            'use {"prompt": str} or {"prompt_token_ids": [...]}'
        )
    text = prompt.get("prompt")
    if text is not None and not isinstance(text, str):
        raise ValueError(f'prompt {index}: "prompt" must be a str, got {type(text).__name__}')
    if "prompt_token_ids" in prompt:
        return text, _token_ids(index, prompt["prompt_token_ids"])
    if text is None:
        raise ValueError(f'prompt {index} needs "prompt" or "prompt_token_ids"')
    return text, None


def _token_ids(index: int, token_ids) -> list[int]:
    if not isinstance(token_ids, (list, tuple)):
        raise ValueError(
            f"prompt {index}: token ids must be a list of int, got {type(token_ids).__name__}"
        )
    for position, token_id in enumerate(token_ids):
        if not _is_token_id(token_id):
            raise ValueError(
                f"prompt {index} has {token_id!r} at position {position}; token ids are ints"
            )
    return [int(t) for t in token_ids]


def _is_token_id(value) -> bool:
    # bool is an Integral but never a token id; numpy integers are Integral too.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
