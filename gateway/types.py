"""Canonical types shared by every package: plain dataclasses, no I/O.

Token accounting is normalised so that the kinds never overlap:

    total input = input_tokens + cache_read_tokens + cache_write_5m_tokens + cache_write_1h_tokens

``input_tokens`` is the input billed at the plain input price (OpenAI's ``prompt_tokens`` minus
``cached_tokens``; Anthropic's ``input_tokens`` as reported, which already excludes cache reads and
writes). ``output_tokens`` includes reasoning tokens; ``reasoning_tokens`` is the part of it that was
reasoning, kept for reporting only (it is never billed twice).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Surface(enum.StrEnum):
    """The wire API a request arrived on."""

    OPENAI_CHAT = "openai.chat"
    OPENAI_EMBEDDINGS = "openai.embeddings"
    OPENAI_RESPONSES = "openai.responses"
    OPENAI_MODELS = "openai.models"
    ANTHROPIC_MESSAGES = "anthropic.messages"
    ANTHROPIC_COUNT_TOKENS = "anthropic.count_tokens"
    PASSTHROUGH = "passthrough"


class SavingMechanism(enum.StrEnum):
    """What produced the difference between the counterfactual cost and the cost."""

    CACHE = "cache"
    ROUTING = "routing"
    PREFIX_CACHE = "prefix_cache"
    BATCH = "batch"
    LOCAL = "local"


@dataclass(slots=True)
class Usage:
    """Tokens of one request, by billing kind (see the module docstring)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_input_tokens(self) -> int:
        return (
            self.input_tokens
            + self.cache_read_tokens
            + self.cache_write_5m_tokens
            + self.cache_write_1h_tokens
        )

    @property
    def total_tokens(self) -> int:
        return self.total_input_tokens + self.output_tokens


@dataclass(slots=True, frozen=True)
class ModelPrices:
    """USD per million tokens. ``None`` for a kind means the price of that kind is unknown."""

    input: float | None
    output: float | None
    cache_read: float | None = None
    cache_write_5m: float | None = None
    cache_write_1h: float | None = None


@dataclass(slots=True, frozen=True)
class Cost:
    """USD by component. ``total`` is None when any token kind that was used has no known price."""

    input: float | None
    output: float | None
    cache_read: float | None
    cache_write: float | None
    total: float | None


@dataclass(slots=True)
class RequestRecord:
    """One row of the request log: everything needed to account for a request after the fact."""

    request_id: str
    surface: str
    method: str
    path: str
    key_id: str | None = None
    requested_model: str | None = None
    served_model: str | None = None
    provider: str | None = None
    status_code: int = 0
    stream: bool = False
    latency_ms: float | None = None
    ttft_ms: float | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = None
    counterfactual_usd: float | None = None
    saving_usd: float | None = None
    saving_mechanism: str | None = None
    priced: bool = False
    cache: str = "miss"
    error: str | None = None
    created_at: float = 0.0  # unix seconds
