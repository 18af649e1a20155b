"""A request-log row made safe for its table: every field bounded to its column and cleaned.

A row holds values a client chose (the model name, the path) before anything was authorized, so it is
cleaned before it is queued, never after a database has refused it:

* text: NUL and other control characters removed (tab and newline kept in ``error``), lone surrogates
  replaced by U+FFFD (they cannot be encoded in UTF-8), then cut to the column's length, the last kept
  character replaced by ``…`` so a cut value is visibly cut. ``path`` and ``error`` are ``TEXT`` columns,
  bounded here all the same (``TEXT_LIMITS``);
* integers: clamped to the column's range (tokens to ``[0, 2**31 - 1]``, the status to ``[0, 999]``);
* floats: a non-finite value becomes NULL; money is clamped to what ``NUMERIC(20, 10)`` holds;
* a missing or unusable value becomes the column's neutral value (``""``, 0, false, NULL).

``clean_row`` is pure and total: it never raises on any mapping, so a replayed spill file written by an
older version (or edited by hand) is cleaned the same way before it is written again.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from typing import Any

from sqlalchemy import String

from gateway.content import clean_content
from gateway.storage.models import RequestLogRow

INT32_MAX = 2**31 - 1
MONEY_MAX = 9_999_999_999.0  # NUMERIC(20, 10): ten digits before the point
TEXT_LIMITS = {"path": 2048, "error": 4096}
"""Bounds for the ``TEXT`` columns (the others take their ``VARCHAR`` length from the table)."""

TEXT_COLUMNS: dict[str, int] = {
    **{
        c.name: int(c.type.length)
        for c in RequestLogRow.__table__.columns
        if isinstance(c.type, String) and c.type.length is not None
    },
    **TEXT_LIMITS,
}
REQUIRED_TEXT = frozenset(
    c.name for c in RequestLogRow.__table__.columns if c.name in TEXT_COLUMNS and not c.nullable
)
TOKEN_COLUMNS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "reasoning_tokens",
)
FLOAT_COLUMNS = ("latency_ms", "ttft_ms")
MONEY_COLUMNS = ("cost_usd", "counterfactual_usd", "saving_usd")
BOOL_COLUMNS = ("stream", "usage_estimated", "priced")

COLUMNS: tuple[str, ...] = tuple(c.name for c in RequestLogRow.__table__.columns if c.name != "id")
"""The row's keys, in the table's column order (``id`` is the database's)."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_KEEP_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def clean_text(value: Any, limit: int, *, keep_lines: bool = False) -> str:
    """``value`` as text of at most ``limit`` characters, without control characters or lone surrogates."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit and text.isprintable():  # the common case: nothing to do
        return text
    text = (_CONTROL_KEEP_LINES if keep_lines else _CONTROL).sub("", text)
    text = _SURROGATE.sub("\ufffd", text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def text_value(value: Any, limit: int, *, keep_lines: bool = False) -> str | None:
    """``clean_text`` of ``value``; None stays None."""
    if value is None:
        return None
    if type(value) is str and len(value) <= limit and value.isprintable():
        return value
    return clean_text(value, limit, keep_lines=keep_lines)


def int_value(value: Any, high: int) -> int:
    """``value`` as an integer in ``[0, high]`` (0 when it is not a number)."""
    if type(value) is int and 0 <= value <= high:
        return value
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return 0
    return min(max(number, 0), high)


def float_value(value: Any, bound: float) -> float | None:
    """``value`` as a finite float in ``[-bound, bound]``; None when missing, not a number or not finite."""
    if value is None:
        return None
    if type(value) is float and -bound <= value <= bound:  # NaN fails the comparison
        return value
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if not math.isfinite(number):
        return None
    return min(max(number, -bound), bound)


def clean_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``row`` with exactly the log's columns (``COLUMNS``, in order; plus its ``content`` when it
    carries a valid one: content logging), each bounded and cleaned
    (see the module docstring). Pure; never raises."""
    out: dict[str, Any] = {}
    for name in COLUMNS:
        value = row.get(name)
        limit = TEXT_COLUMNS.get(name)
        if limit is not None:
            text = text_value(value, limit, keep_lines=name == "error")
            out[name] = "" if text is None and name in REQUIRED_TEXT else text
        elif name == "created_at":
            created = float_value(value, 1e11)
            out[name] = created if created is not None and created > 0 else time.time()
        elif name == "status_code":
            out[name] = int_value(value, 999)
        elif name in TOKEN_COLUMNS:
            out[name] = int_value(value, INT32_MAX)
        elif name in MONEY_COLUMNS:
            out[name] = float_value(value, MONEY_MAX)
        elif name in FLOAT_COLUMNS:
            out[name] = float_value(value, 1e300)
        else:
            out[name] = bool(value)
    if not out["cache"]:
        out["cache"] = "miss"
    content = clean_content(row.get("content"))
    if content is not None:
        out["content"] = content
    return out
