"""Content logging (opt-in, ``content_log.enabled``): what each request asked and what it was answered.

Off by default. When on, every chat request's body as the client sent it (its canonical messages and
parameters in its own API's format) and the text of the answer it was served are kept beside its
request-log row, in ``request_content``, for ``thriftgate replay`` and the dashboard's request detail.

**Privacy cost.** Prompts and answers are whatever your users and your application put in them: personal
data, secrets pasted into a chat, documents. Turning this on stores all of that in the gateway's
database, readable by whoever holds the master key or the database, for as long as request-log rows are
kept (``dashboard.retention_days``; null keeps them forever). Each row is scoped to the virtual key that
sent the request and is only ever read back together with that request's own log row.

Bounds: the request body and the answer are each cut at ``content_log.max_chars`` characters (a cut row
says so: ``truncated``; replay skips it). What is captured: complete answers of chat requests (OpenAI chat
completions, Anthropic messages; streamed or not; from a provider, the local model or the cache). Not
captured: errors, cut streams, batch-job items sent through a provider's batch API or answered from the
cache inside a job (their input and output files hold them already; items the gateway sends one by one, to
the local model or a provider without a batch API, are captured like any request), other endpoints.

The capture runs where the pipeline already builds the canonical answer (for the cache); the row is
queued with the log record and written by the log writer in the same transaction, never on the request
path. ``content_row`` is pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.types import ChatResponse, TextPart


def answer_text(response: ChatResponse) -> str:
    """The text parts of ``response``'s first choice, joined (tool calls are not text: left out)."""
    choice = response.choices[0] if response.choices else None
    if choice is None:
        return ""
    return "".join(p.text for p in choice.content if isinstance(p, TextPart))


def content_row(body: bytes | str, answer: str, max_chars: int) -> dict[str, Any]:
    """The ``request_content`` columns (JSON-safe) for a request whose JSON body was ``body`` (as the
    client sent it) and that was answered ``answer``, each bounded to ``max_chars``."""
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    text, answer = text.replace("\x00", ""), answer.replace("\x00", "")
    return {
        "request_json": text[:max_chars],
        "answer_text": answer[:max_chars],
        "truncated": len(text) > max_chars or len(answer) > max_chars,
    }


def clean_content(value: Any, max_chars: int = 1_000_000) -> dict[str, Any] | None:
    """A content dict read back from a spill file, bounded and typed, or None when it is not one. Pure;
    never raises."""
    if not isinstance(value, Mapping):
        return None
    body, answer = value.get("request_json"), value.get("answer_text")
    if not isinstance(body, str) or not isinstance(answer, str):
        return None
    return {
        "request_json": body[:max_chars].replace("\x00", ""),
        "answer_text": answer[:max_chars].replace("\x00", ""),
        "truncated": bool(value.get("truncated")) or len(body) > max_chars or len(answer) > max_chars,
    }
