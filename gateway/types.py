"""Canonical types shared by every package: plain frozen dataclasses, no I/O.

``routing/``, ``cache/`` and the gateway import these; ``local_engine/`` imports nothing of ours.

The canonical request and response are what the caches key on, what the router reads, and what the
two wire APIs (OpenAI chat completions, Anthropic messages) are translated through (``gateway/wire/``).
They are built only when something needs them: a request whose surface and target speak the same API,
with nothing to rewrite, is forwarded as the client's bytes and never parsed into this form.

    ChatRequest ── model, system, messages[Message(role, content[Part])], tools, tool_choice,
                   sampling, stop, max_tokens, response_format, stream, metadata, native
    ChatResponse ─ choices[Choice(content[Part], stop_reason)], usage
    StreamEvent ── StreamStart | TextDelta | ToolCallStart | ToolCallDelta | StreamStop
                   | UsageReport | StreamError
    RouteDecision ─ target ModelRoute, fallbacks, reason
    CacheOutcome ── status (miss, hit-exact, hit-semantic, bypass) and the cached answer

Token accounting is normalised so that the kinds never overlap:

    total input = input_tokens + cache_read_tokens + cache_write_5m_tokens + cache_write_1h_tokens

``input_tokens`` is the input billed at the plain input price (OpenAI's ``prompt_tokens`` minus
``cached_tokens``; Anthropic's ``input_tokens`` as reported, which already excludes cache reads and
writes). ``output_tokens`` includes reasoning tokens; ``reasoning_tokens`` is the part of it that was
reasoning, kept for reporting only (it is never billed twice).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

# ---- where a request came from and what saved money -------------------------------------------------


class Surface(enum.StrEnum):
    """The endpoint a request arrived on."""

    OPENAI_CHAT = "openai.chat"
    OPENAI_EMBEDDINGS = "openai.embeddings"
    OPENAI_RESPONSES = "openai.responses"
    OPENAI_MODELS = "openai.models"
    ANTHROPIC_MESSAGES = "anthropic.messages"
    ANTHROPIC_COUNT_TOKENS = "anthropic.count_tokens"
    OPENAI_FILES = "openai.files"
    OPENAI_BATCHES = "openai.batches"
    ANTHROPIC_BATCHES = "anthropic.batches"
    PASSTHROUGH = "passthrough"


class WireAPI(enum.StrEnum):
    """A chat wire format the canonical request translates to and from."""

    OPENAI_CHAT = "openai.chat"
    ANTHROPIC_MESSAGES = "anthropic.messages"


class SavingMechanism(enum.StrEnum):
    """What produced the difference between the counterfactual cost and the cost."""

    CACHE = "cache"
    ROUTING = "routing"
    PREFIX_CACHE = "prefix_cache"
    BATCH = "batch"
    LOCAL = "local"


# ---- usage and money -------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Usage:
    """Tokens of one request, by billing kind (see the module docstring). Immutable: combine with
    ``dataclasses.replace`` or ``+``."""

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

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_write_5m_tokens + other.cache_write_5m_tokens,
            self.cache_write_1h_tokens + other.cache_write_1h_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
        )


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


# ---- the canonical request ---------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class CacheMark:
    """A provider prompt-cache breakpoint after the element that carries it (Anthropic
    ``cache_control: {"type": "ephemeral", "ttl": ...}``). OpenAI caches prefixes on its own and has no
    marker: rendering for OpenAI drops marks (documented)."""

    ttl: Literal["5m", "1h"] | None = None
    """None: the provider's default (5 minutes), as the client left it unspecified."""


@dataclass(slots=True, frozen=True)
class TextPart:
    text: str
    cache: CacheMark | None = None


@dataclass(slots=True, frozen=True)
class ImagePart:
    """An image by URL or inline base64 data (exactly one of ``url`` and ``data``)."""

    url: str | None = None
    data: str | None = None
    """Base64 payload, without the ``data:`` prefix."""
    media_type: str | None = None
    """For ``data``: ``image/png``, ``image/jpeg``, ``image/gif`` or ``image/webp``."""
    detail: str | None = None
    """OpenAI's ``detail`` (low, high, auto); Anthropic has none."""
    cache: CacheMark | None = None


@dataclass(slots=True, frozen=True)
class ToolCallPart:
    """The model asks for a tool (OpenAI ``tool_calls[i]``, Anthropic ``tool_use``)."""

    id: str
    name: str
    arguments: str
    """The arguments as JSON text, as OpenAI carries them (Anthropic's ``input`` object, serialised
    compactly). Streams build it by concatenating argument deltas."""
    cache: CacheMark | None = None


@dataclass(slots=True, frozen=True)
class ToolResultPart:
    """A tool's answer, sent by the client (OpenAI ``role: tool`` message, Anthropic ``tool_result``)."""

    tool_call_id: str
    content: tuple[TextPart | ImagePart, ...]
    is_error: bool = False
    cache: CacheMark | None = None


Part = TextPart | ImagePart | ToolCallPart | ToolResultPart
Role = Literal["user", "assistant", "system"]


@dataclass(slots=True, frozen=True)
class Message:
    """One turn. ``system`` appears here only for an instruction given after the conversation started
    (OpenAI allows it); leading instructions are ``ChatRequest.system``. Tool results are parts of a
    ``user`` turn (as Anthropic has them; an OpenAI ``tool`` message becomes one)."""

    role: Role
    content: tuple[Part, ...]
    name: str | None = None
    """OpenAI's participant ``name``; Anthropic has none."""


@dataclass(slots=True, frozen=True)
class Tool:
    """A function the model may call."""

    name: str
    description: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    """Its JSON Schema (never mutated)."""
    strict: bool | None = None
    cache: CacheMark | None = None


@dataclass(slots=True, frozen=True)
class ToolChoice:
    """``auto`` (the model decides), ``none``, ``required`` (some tool: Anthropic ``any``) or ``tool``
    (the one named)."""

    mode: Literal["auto", "none", "required", "tool"] = "auto"
    name: str | None = None


@dataclass(slots=True, frozen=True)
class Sampling:
    """Parameters that change the output distribution. None: the provider's default."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None


@dataclass(slots=True, frozen=True)
class ResponseFormat:
    """Structured output: ``json_object`` (any JSON object) or ``json_schema`` (``schema``)."""

    type: Literal["text", "json_object", "json_schema"]
    schema: Mapping[str, Any] | None = None
    name: str | None = None
    strict: bool | None = None


@dataclass(slots=True, frozen=True)
class NativeFields:
    """Fields of the source API that change the output but have no canonical form (OpenAI's
    ``presence_penalty``, ``logit_bias``, ``reasoning_effort`` ...; Anthropic's ``thinking`` ...), kept so
    that rendering back into ``api`` loses nothing and so that cache keys include them. Rendering into
    the other API refuses them with a 400 naming the first one."""

    api: WireAPI
    fields: Mapping[str, Any]


@dataclass(slots=True, frozen=True)
class ChatRequest:
    """One chat request in canonical form (see the module docstring)."""

    model: str
    messages: tuple[Message, ...]
    system: tuple[TextPart, ...] = ()
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    sampling: Sampling = Sampling()
    stop: tuple[str, ...] = ()
    max_tokens: int | None = None
    """The output cap; None when the client set none (OpenAI allows that, Anthropic does not)."""
    response_format: ResponseFormat | None = None
    n: int = 1
    """Choices to generate (OpenAI ``n``; Anthropic serves 1 only)."""
    stream: bool = False
    stream_usage: bool = False
    """OpenAI ``stream_options.include_usage``: the client wants the final usage chunk."""
    user: str | None = None
    """End-user id (OpenAI ``user``, Anthropic ``metadata.user_id``): attribution, not output."""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    """Fields that change neither the output nor the bill (OpenAI ``store``, ``metadata``,
    ``service_tier``, ``prompt_cache_key`` ...), carried only into the API they came from."""
    native: NativeFields | None = None


# ---- the canonical response --------------------------------------------------------------------------


class StopReason(enum.StrEnum):
    END = "end_turn"
    MAX_TOKENS = "max_tokens"
    STOP_SEQUENCE = "stop_sequence"
    TOOL_USE = "tool_use"
    CONTENT_FILTER = "content_filter"
    REFUSAL = "refusal"


@dataclass(slots=True, frozen=True)
class Choice:
    content: tuple[TextPart | ToolCallPart, ...]
    stop_reason: StopReason | None
    stop_sequence: str | None = None
    refusal: str | None = None
    """OpenAI's ``message.refusal`` text (Anthropic signals a refusal by ``stop_reason`` only)."""


@dataclass(slots=True, frozen=True)
class ChatResponse:
    """A complete answer. ``choices`` has one entry unless the request asked for ``n`` > 1."""

    id: str
    model: str
    choices: tuple[Choice, ...]
    usage: Usage
    created: int = 0
    """Unix seconds (OpenAI's ``created``)."""


# ---- stream events -----------------------------------------------------------------------------------
# ``index`` is the choice index (always 0 unless n > 1); ``call`` numbers a choice's tool calls from 0.


@dataclass(slots=True, frozen=True)
class StreamStart:
    """The first event: ids, and the input usage when the provider reports it up front (Anthropic)."""

    id: str
    model: str
    created: int = 0
    usage: Usage | None = None


@dataclass(slots=True, frozen=True)
class TextDelta:
    text: str
    index: int = 0
    refusal: bool = False
    """The piece belongs to the choice's refusal (OpenAI ``delta.refusal``, ``Choice.refusal``), not its
    content."""


@dataclass(slots=True, frozen=True)
class ToolCallStart:
    id: str
    name: str
    call: int = 0
    index: int = 0


@dataclass(slots=True, frozen=True)
class ToolCallDelta:
    arguments: str
    """The next piece of the arguments' JSON text."""
    call: int = 0
    index: int = 0


@dataclass(slots=True, frozen=True)
class StreamStop:
    reason: StopReason | None
    stop_sequence: str | None = None
    index: int = 0


@dataclass(slots=True, frozen=True)
class UsageReport:
    """The request's usage so far (cumulative: a later report replaces an earlier one)."""

    usage: Usage


@dataclass(slots=True, frozen=True)
class StreamError:
    """The upstream reported an error mid-stream; the stream ends after it."""

    message: str
    type: str = "api_error"


StreamEvent = StreamStart | TextDelta | ToolCallStart | ToolCallDelta | StreamStop | UsageReport | StreamError


# ---- routing and caching -----------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class ModelRoute:
    """Where one model name goes. ``prices`` is None when the price is unknown."""

    alias: str
    provider: str
    provider_kind: str
    upstream_model: str
    prices: ModelPrices | None


@dataclass(slots=True, frozen=True)
class RouteDecision:
    """The router's answer: serve with ``target``, falling back through ``fallbacks`` in order.

    ``requested`` is the route of the model as the client named it; for ``auto``, the strongest model of
    the auto set (what the client would have used without routing); None when there is no such model.
    Accounting prices the counterfactual there."""

    target: ModelRoute
    fallbacks: tuple[ModelRoute, ...] = ()
    reason: str = "requested"
    requested: ModelRoute | None = None


class CacheStatus(enum.StrEnum):
    MISS = "miss"
    HIT_EXACT = "hit-exact"
    HIT_SEMANTIC = "hit-semantic"
    BYPASS = "bypass"


@dataclass(slots=True, frozen=True)
class CacheOutcome:
    """What the cache lookup found. On a hit, ``response`` is the stored answer and
    ``counterfactual_usd`` what it cost when it was first paid for."""

    status: CacheStatus
    response: ChatResponse | None = None
    similarity: float | None = None
    entry_id: str | None = None
    counterfactual_usd: float | None = None


MISS = CacheOutcome(CacheStatus.MISS)


# ---- the request log ---------------------------------------------------------------------------------


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
    usage_estimated: bool = False
    """The usage was estimated by the gateway (the upstream never reported it: a client that left
    mid-stream, a stream cut before its usage event)."""
    cost_usd: float | None = None
    counterfactual_usd: float | None = None
    saving_usd: float | None = None
    saving_mechanism: str | None = None
    priced: bool = False
    cache: str = "miss"
    route_reason: str | None = None
    plan: str | None = None
    """The prompt-prefix planner's decision (``cache/prefix.py``): breakpoints placed and their TTLs
    (``bp=2 system:1h history:5m``), why none were (``bp=0 (no reuse expected)``), or the OpenAI
    ``prompt_cache_key`` set (``key=tg-...``). None: the planner did not look at the request."""
    error: str | None = None
    created_at: float = 0.0  # unix seconds
    content: dict[str, Any] | None = None
    """``request_content`` columns (``gateway.content.content_row``) when content logging is on."""
