"""Typed reads of a client's JSON body: each raises ``InvalidRequest`` naming the field's path, in the
path style of the API being parsed (OpenAI ``messages[2].content[0]``, Anthropic ``messages.2.content.0``).

Pure functions over plain data; shared by ``openai_chat`` and ``anthropic_messages``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.errors import InvalidRequest
from gateway.wire import Untranslatable


def invalid(path: str, what: str) -> InvalidRequest:
    return InvalidRequest(f"{path}: {what}", param=path)


def obj(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise invalid(path, "expected an object")
    return value


def array(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise invalid(path, "expected an array")
    return value


def string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise invalid(path, "expected a string")
    return value


def opt_string(value: Any, path: str) -> str | None:
    return None if value is None else string(value, path)


def opt_bool(value: Any, path: str) -> bool | None:
    if value is None:
        return None
    if not isinstance(value, bool):
        raise invalid(path, "expected a boolean")
    return value


def opt_int(value: Any, path: str, *, minimum: int | None = None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(path, "expected an integer")
    if minimum is not None and value < minimum:
        raise invalid(path, f"must be at least {minimum}")
    return value


def opt_number(value: Any, path: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(path, "expected a number")
    return value


def stop_list(value: Any, path: str) -> tuple[str, ...]:
    """A stop string or a list of them (None: no stops)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return tuple(value)
    raise invalid(path, "expected a string or an array of strings")


def no_extra(value: Mapping[str, Any], allowed: frozenset[str], path: str, join: str) -> None:
    """Raise ``Untranslatable`` for the first key of ``value`` outside ``allowed`` whose value is not
    null: a field the canonical form has no place for must not be dropped silently."""
    for key, item in value.items():
        if key not in allowed and item is not None:
            field = f"{path}{join}{key}" if path else key
            raise Untranslatable(f"{field}: not supported by the gateway's translation", param=field)
