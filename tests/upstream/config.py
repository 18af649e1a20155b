"""The simulator's knobs (``SimConfig``) and the faults a test can queue (``Fault``)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

# Anthropic's minimum cacheable prompt per model family (model id prefix -> tokens); others: 1,024.
ANTHROPIC_MIN_CACHE_TOKENS: dict[str, int] = {
    "claude-opus-4-5": 4096,
    "claude-haiku-4-5": 4096,
    "claude-3-5-haiku": 2048,
    "claude-3-haiku": 2048,
}


@dataclass(slots=True)
class SimConfig:
    """Latency, output size, auth and prompt-cache thresholds. Read on every request, so tests may
    change a field while the simulator is serving."""

    ttft_s: float = 0.0  # wait before the first byte (non-stream: before the whole answer)
    per_token_s: float = 0.0  # wait between streamed output tokens (non-stream: times the token count)
    output_tokens: int = 16  # tokens per answer, capped by max_tokens / max_completion_tokens
    api_key: str | None = None  # None: any non-empty key is accepted
    anthropic_min_cache_tokens: int = 1024  # shorter cache_control prefixes are never cached
    # per-model minimums over the one above: the longest model id prefix listed wins
    anthropic_min_cache_tokens_by_model: dict[str, int] = field(
        default_factory=lambda: dict(ANTHROPIC_MIN_CACHE_TOKENS)
    )
    openai_min_cache_tokens: int = 1024  # OpenAI caches prefixes from this length, in 128-token steps
    # OpenAI routing: a (first 256 tokens, prompt_cache_key) group above this many requests a minute
    # overflows onto this many other machines, each with its own cache (0: never)
    openai_machine_rpm: int = 15
    openai_overflow_machines: int = 4
    record: bool = True  # keep every request in ``Simulator.requests`` (benchmarks may turn it off)
    # serve /v1/files, /v1/batches and /v1/messages/batches; off: those paths are unknown URLs (404)
    batches: bool = False
    batch_latency_s: float = 0.0  # a batch shows as in progress this long (on the simulator's clock)
    # a batch still in progress this long after its creation expires: its first ``batch_expire_keep``
    # requests keep their answers, the rest are reported expired (None: batches never expire)
    batch_expire_s: float | None = None
    batch_expire_keep: int = 0

    def anthropic_min_tokens(self, model: str) -> int:
        """The shortest prefix ``model`` caches (see ``anthropic_min_cache_tokens_by_model``)."""
        best, found = -1, self.anthropic_min_cache_tokens
        for prefix, tokens in self.anthropic_min_cache_tokens_by_model.items():
            if model.startswith(prefix) and len(prefix) > best:
                best, found = len(prefix), tokens
        return found


@dataclass(slots=True)
class Fault:
    """A misbehaviour for the next ``times`` matching requests (``path`` None: any API path).

    ``status`` answers that HTTP status with an error body in the API's own format (with
    ``retry-after`` and ``retry-after-ms`` when ``retry_after`` is set); ``delay_s`` sleeps before
    answering. The stream fields apply to streaming requests only: ``cut_after_events`` sends N SSE
    events and then drops the connection (no terminating chunk, no final event);
    ``error_event_after`` sends N events, then an in-stream error event (its type chosen by
    ``status``, default 500 for OpenAI and 529 for Anthropic) and ends; ``ping_comments`` interleaves
    ``: ping`` comment lines (and Anthropic ``event: ping``). A fault that sets only stream fields is
    not consumed by non-streaming requests. On a streaming request, a fault with ``cut_after_events``
    or ``error_event_after`` breaks the stream (``status`` then only picks the error event's type);
    otherwise ``status`` answers before the stream starts. Faults apply after auth and JSON parsing.
    """

    status: int | None = None
    retry_after: float | None = None
    times: int = 1
    path: str | None = None
    delay_s: float = 0.0
    cut_after_events: int | None = None
    error_event_after: int | None = None
    ping_comments: bool = False

    @property
    def stream_only(self) -> bool:
        has_stream = (
            self.cut_after_events is not None or self.error_event_after is not None or self.ping_comments
        )
        return has_stream and self.status is None and not self.delay_s

    def matches(self, path: str, stream: bool) -> bool:
        """Whether this fault applies to a request. Does not modify the fault."""
        if self.path is not None and self.path != path:
            return False
        return stream or not self.stream_only

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fault:
        """Build from the JSON body of ``POST /_sim/faults``; unknown fields raise ``TypeError``."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise TypeError(f"unknown Fault fields: {sorted(unknown)}")
        return cls(**data)
