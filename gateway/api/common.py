"""Field checks the surfaces share: the few fields the pipeline relies on, each raising ``InvalidRequest``
naming the field."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.errors import InvalidRequest


def require_str(payload: Mapping[str, Any], name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"'{name}' is required and must be a non-empty string", param=name)
    return value


def require_list(payload: Mapping[str, Any], name: str) -> list[Any]:
    value = payload.get(name)
    if not isinstance(value, list) or not value:
        raise InvalidRequest(f"'{name}' is required and must be a non-empty array", param=name)
    return value


def optional_bool(payload: Mapping[str, Any], name: str) -> bool:
    value = payload.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{name}' must be a boolean", param=name)
    return value


def require_int(payload: Mapping[str, Any], name: str) -> int:
    value = payload.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest(f"'{name}' is required and must be an integer", param=name)
    return value


def optional_int(payload: Mapping[str, Any], *names: str) -> int | None:
    """The first of ``names`` that holds an integer (an output cap under one of its names), or None."""
    for name in names:
        value = payload.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None
