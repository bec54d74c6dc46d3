"""The server's settings (no FastAPI import: the CLI reads the defaults)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_N = 16


@dataclass
class ServerConfig:
    """served_model_names: the names clients may put in `model`; the first is the one responses
    carry. chat_template: a Jinja template that replaces the tokenizer's."""

    served_model_names: list[str]
    api_key: str | None = None
    chat_template: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_n: int = DEFAULT_MAX_N
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        if not self.served_model_names:
            raise ValueError("served_model_names must hold at least one name")
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be at least 1, got {self.max_body_bytes}")
        if self.max_n < 1:
            raise ValueError(f"max_n must be at least 1, got {self.max_n}")
        if self.api_key == "":
            raise ValueError("api_key must not be empty; leave it out to serve without a key")
