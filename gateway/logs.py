"""Structured logging: JSON lines with the request id, and a redaction filter for anything key-shaped.

Every line is one JSON object: ``ts``, ``level``, ``logger``, ``msg``, ``request_id`` (when the record has
one: pass ``extra={"request_id": ...}``) and any other extras, plus ``exc`` with the traceback when one is
attached. Secrets never reach a log line in clear: ``RedactionFilter`` masks provider keys (``sk-...``,
``sk-ant-...``), virtual keys (``tg-...``) and ``Bearer ...`` credentials in the message, its arguments
and the extras. The filter sits on the handler ``configure_logging`` installs and on every logger made by
``get_logger`` (a logger's own filters see records before any handler does, pytest's caplog included).
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

import orjson

_KEY_RE = re.compile(
    r"(?:\bBearer\s+[A-Za-z0-9._~+/=-]{4,}"
    r"|\bsk-(?:ant-)?[A-Za-z0-9_-]{6,}"
    r"|\btg-[A-Za-z0-9_-]{6,})"
)

# LogRecord attributes that are not extras.
_RESERVED = frozenset(
    vars(logging.LogRecord("n", logging.INFO, "p", 0, "m", None, None)).keys() | {"message", "asctime"}
)
_HANDLER_MARK = "_thriftgate_handler"


def redact(text: str) -> str:
    """Masks every key-shaped substring of ``text`` (keeps a short prefix so a reader can tell which kind)."""
    if "sk-" not in text and "tg-" not in text and "Bearer" not in text:
        return text
    return _KEY_RE.sub(_mask, text)


def _mask(m: re.Match[str]) -> str:
    s = m.group(0)
    if s.startswith("Bearer"):
        return "Bearer [REDACTED]"
    if s.startswith("sk-ant-"):
        return "sk-ant-[REDACTED]"
    return s[:3] + "[REDACTED]"


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(v) for v in value)
    return value


class RedactionFilter(logging.Filter):
    """Rewrites the record in place (message, args and extras) with keys masked; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg = redact(record.getMessage())
            record.args = None
        elif isinstance(record.msg, str):
            record.msg = redact(record.msg)
        for name, value in list(record.__dict__.items()):
            if name not in _RESERVED:
                record.__dict__[name] = _redact_value(value)
        if record.exc_info:
            # Keep only the redacted text: the live exception object could carry a key in its args.
            if not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class JSONFormatter(logging.Formatter):
    """One JSON object per line (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _RESERVED and not name.startswith("_"):
                out[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        return orjson.dumps(out, default=str).decode()


_FILTER = RedactionFilter()  # stateless: sharing one instance is safe


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with the redaction filter attached (idempotent)."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RedactionFilter) for f in logger.filters):
        logger.addFilter(_FILTER)
    return logger


def configure_logging(level: str = "INFO", *, json_lines: bool = True) -> logging.Handler:
    """Installs one stderr handler on the root logger (replacing one installed earlier by this function,
    leaving other handlers alone), with the redaction filter and the JSON (or plain) formatter. Mutates
    the process-wide logging configuration: call it once per process (``create_app`` does)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _HANDLER_MARK, False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    handler.addFilter(_FILTER)
    handler.setFormatter(
        JSONFormatter() if json_lines else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root.addHandler(handler)
    root.setLevel(level.upper())
    # httpx and uvicorn's access log write a line per request at INFO: too costly for a gateway's hot path,
    # and redundant with the request log (one row per request, failures also logged here with their id).
    for name in ("httpx", "uvicorn.access"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    return handler
