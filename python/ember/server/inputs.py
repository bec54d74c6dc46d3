"""Request inputs as token ids: completion prompts, and chat messages through the chat template.

Prompts are tokenized here, before the engine sees them, because the server must know each
prompt's length to default and check max_tokens against the context.
"""

from __future__ import annotations

from ember.server.errors import bad_request
from ember.server.generation import Prompt
from ember.server.protocol import ChatMessageParam


def _require_tokenizer(engine, what: str):
    tokenizer = engine.tokenizer
    if tokenizer is None:
        raise bad_request(f"{what} needs a tokenizer, and this server's model has none")
    return tokenizer


def completion_prompts(engine, prompt) -> list[Prompt]:
    """`prompt` as OpenAI allows it: text, a list of texts, token ids or a list of token id
    lists. Each text is tokenized as the engine does (with the tokenizer's special tokens)."""
    if isinstance(prompt, str) or (prompt and all(isinstance(x, int) for x in prompt)):
        items = [prompt]
    else:
        items = list(prompt)
    if not items:
        raise bad_request("prompt is empty: give text or at least one token id", param="prompt")
    prompts = []
    for index, item in enumerate(items):
        where = "prompt" if len(items) == 1 else f"prompt {index}"
        if not item:
            raise bad_request(f"{where} is empty: give text or token ids", param="prompt")
        if isinstance(item, str):
            _require_tokenizer(engine, "a text prompt")
            prompts.append(Prompt(item, list(engine.encode(item))))
        else:
            prompts.append(Prompt(None, list(item)))
    return prompts


def echo_text(engine, prompt: Prompt) -> str:
    """The prompt as text, for `echo`: as given, or decoded from its token ids."""
    if prompt.text is not None:
        return prompt.text
    tokenizer = engine.tokenizer
    return "" if tokenizer is None else tokenizer.decode(prompt.token_ids)


def prompt_token_texts(engine, prompt: Prompt) -> list[str]:
    tokenizer = engine.tokenizer
    if tokenizer is None:
        return [f"token_id:{t}" for t in prompt.token_ids]
    return [tokenizer.decode([t]) for t in prompt.token_ids]


def conversation(messages: list[ChatMessageParam]) -> list[dict]:
    """Messages as the chat template takes them; content parts must be text and are joined
    with newlines, as vLLM joins them."""
    if not messages:
        raise bad_request("messages is empty: give at least one message", param="messages")
    result = []
    for index, message in enumerate(messages):
        content = message.content
        if isinstance(content, list):
            texts = []
            for part in content:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise bad_request(
                        f"messages[{index}].content has a part of type {part.get('type')!r}; "
                        'only {"type": "text", "text": ...} parts are supported',
                        param="messages",
                    )
                texts.append(part["text"])
            content = "\n".join(texts)
        entry = {"role": message.role, "content": content}
        if message.name is not None:
            entry["name"] = message.name
        result.append(entry)
    return result


def chat_prompt(
    engine,
    messages: list[dict],
    chat_template: str | None,
    add_generation_prompt: bool,
) -> Prompt:
    """The conversation through the chat template. The template writes the special tokens
    itself, so none are added when its text is tokenized."""
    tokenizer = _require_tokenizer(engine, "chat")
    try:
        text = engine.apply_chat_template(
            messages, chat_template=chat_template, add_generation_prompt=add_generation_prompt
        )
    except Exception as error:  # the template (a program fed by the request) refused them
        raise bad_request(
            f"the chat template could not render these messages: {error}", param="messages"
        ) from None
    token_ids = list(tokenizer(text, add_special_tokens=False).input_ids)
    if not token_ids:
        raise bad_request("the chat template rendered these messages as nothing", "messages")
    return Prompt(text, token_ids)
