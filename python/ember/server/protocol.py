"""The HTTP API's request and response bodies, as OpenAI names them and vLLM extends them.

Request models check types only; ranges and cross-field rules are checked when a request becomes
SamplingParams (ember's own rules, named in the 400's message). Unknown request fields are
ignored, as vLLM does, except those that would change the output and that ember cannot honour
(tools, response_format, suffix, ...): those are declared so that they can be refused.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer


def random_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ----- shared request fields ------------------------------------------------------------------


class StreamOptions(_Request):
    include_usage: bool | None = False


class SamplingRequest(_Request):
    """Fields that /v1/completions and /v1/chat/completions share."""

    model: str | None = Field(None, description="a served model name; omitted: the only model")
    n: int | None = Field(1, description="completions per prompt, at most the server's --max-n")
    temperature: float | None = Field(None, description="0 is greedy; default 1")
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = Field(
        None, description="token id (as a string) -> bias in [-100, 100] added to its logit"
    )
    seed: int | None = None
    stop: str | list[str] | None = Field(None, description="stop strings, not included")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, description="accepted and ignored")
    # vLLM's extensions
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int | None = 0
    ignore_eos: bool | None = False
    stop_token_ids: list[int] | None = None
    skip_special_tokens: bool | None = True
    prompt_logprobs: int | None = Field(
        None, description="0..20: each prompt token's logprob and the top N (not with stream)"
    )
    # Declared only so that a request asking for them is refused rather than served wrongly.
    best_of: int | None = None
    use_beam_search: bool | None = False
    response_format: dict[str, Any] | None = None


# ----- /v1/completions --------------------------------------------------------------------------


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="text, a list of texts, token ids or a list of token id lists"
    )
    max_tokens: int | None = Field(
        16, description="default 16 (OpenAI's); null: what fits in the context"
    )
    echo: bool | None = Field(False, description="prepend the prompt to each completion")
    logprobs: int | None = Field(None, description="0..20: the sampled token and the top N")
    suffix: str | None = None


class CompletionLogprobs(_Response):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class PromptLogprob(_Response):
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


# vLLM's shape: per prompt token, null for the first, else token id (a string) -> PromptLogprob
# for the token itself and the top N.
PromptLogprobsField = list[dict[str, PromptLogprob] | None] | None


class CompletionChoice(_Response):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = Field(
        None, description="the stop string or stop token id that ended the completion"
    )
    prompt_logprobs: PromptLogprobsField = None


class UsageInfo(_Response):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class CompletionResponse(_Response):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo


class CompletionStreamResponse(_Response):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


# ----- /v1/chat/completions ---------------------------------------------------------------------


class ChatMessageParam(_Request):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = Field(
        None, description='a string or a list of {"type": "text", "text": ...} parts'
    )
    name: str | None = None


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessageParam]
    max_tokens: int | None = Field(None, description="deprecated alias of max_completion_tokens")
    max_completion_tokens: int | None = Field(None, description="default: what fits in the context")
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, description="0..20, needs logprobs: true")
    # vLLM's extensions
    echo: bool | None = Field(
        False, description="prepend the last message's content when its role is the reply's"
    )
    add_generation_prompt: bool | None = True
    chat_template: str | None = Field(None, description="a Jinja template for this request")
    # Declared only so that a request asking for them is refused.
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None


class ChatLogprob(_Response):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatLogprobsContent(ChatLogprob):
    top_logprobs: list[ChatLogprob] = Field(default_factory=list)


class ChatLogprobs(_Response):
    content: list[ChatLogprobsContent] | None = None


class ChatMessage(_Response):
    role: str
    content: str | None = None


class ChatChoice(_Response):
    index: int
    message: ChatMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionResponse(_Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    prompt_logprobs: PromptLogprobsField = None


class DeltaMessage(_Response):
    role: str | None = None
    content: str | None = None


class ChatStreamChoice(_Response):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    @field_serializer("delta")
    def _delta_without_nulls(self, delta: DeltaMessage) -> dict[str, str]:
        # OpenAI's deltas carry only what changed: the role once, then content.
        return delta.model_dump(exclude_none=True)


class ChatCompletionStreamResponse(_Response):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatStreamChoice]
    usage: UsageInfo | None = None


# ----- /v1/models, /tokenize, /detokenize, /version, errors -------------------------------------


class ModelCard(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ember"
    root: str | None = None
    parent: str | None = None
    max_model_len: int


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeRequest(_Request):
    """Either `prompt` (text, special tokens added by default) or `messages` (the chat template
    applied, as /v1/chat/completions would)."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessageParam] | None = None
    add_special_tokens: bool | None = None
    add_generation_prompt: bool | None = True
    chat_template: str | None = None


class TokenizeResponse(_Response):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(_Request):
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(_Response):
    prompt: str


class VersionResponse(_Response):
    version: str


class ErrorInfo(_Response):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(_Response):
    error: ErrorInfo
