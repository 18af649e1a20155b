"""What an API handler gets (``Ctx``) and gives back (``Reply`` or a ``StreamPlan``), and the one
error it raises (``SimError``), which each API renders in its own format."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import orjson

from tests.upstream.config import SimConfig
from tests.upstream.prompt_cache import CacheBlock, CacheUsage


class SimError(Exception):
    """A request the simulated API refuses: rendered as that API's error body with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        error_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.error_type = error_type
        self.headers = headers or {}


@dataclass(slots=True)
class Reply:
    """A complete (non-streaming) answer; ``tokens`` output tokens pace its latency."""

    status: int
    body: bytes
    tokens: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    media_type: str = "application/json"

    @classmethod
    def json(cls, obj: object, *, tokens: int = 0, status: int = 200) -> Reply:
        return cls(status=status, body=orjson.dumps(obj), tokens=tokens)


@dataclass(slots=True)
class Ctx:
    """Per-request context from the shell: the config, this request's sequence number (for ids),
    the wall-clock second, and the two prompt caches already scoped to (API key, model)."""

    config: SimConfig
    seq: int
    now: int
    openai_cached: Callable[[Sequence[str]], int]
    anthropic_cache: Callable[[Sequence[CacheBlock]], CacheUsage]


def require(body: object, name: str, kind: type | tuple[type, ...], what: str) -> object:
    """``body[name]`` checked for presence and type; a 400 ``SimError`` naming the field otherwise."""
    if not isinstance(body, dict):
        raise SimError(400, "The request body must be a JSON object.")
    if name not in body or body[name] is None:
        raise SimError(
            400, f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter"
        )
    value = body[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise SimError(400, f"Invalid type for '{name}': expected {what}.", param=name, code="invalid_type")
    return value


def optional(body: dict[str, object], names: dict[str, tuple[type | tuple[type, ...], str]]) -> None:
    """400 ``SimError`` when a present, non-null ``body[name]`` is not of its expected type."""
    for name, (kind, what) in names.items():
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, kind) or (
            isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,))
        ):
            raise SimError(
                400, f"Invalid type for '{name}': expected {what}.", param=name, code="invalid_type"
            )
