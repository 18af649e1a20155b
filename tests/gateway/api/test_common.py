"""The surfaces' field checks."""

from __future__ import annotations

import pytest

from gateway.api.common import optional_bool, optional_int, require_int, require_list, require_str
from gateway.errors import InvalidRequest


def test_field_checks_name_the_field() -> None:
    payload = {"model": "", "messages": [], "stream": "yes", "max_tokens": 1.5}
    for check, name in (
        (require_str, "model"),
        (require_list, "messages"),
        (optional_bool, "stream"),
        (require_int, "max_tokens"),
    ):
        with pytest.raises(InvalidRequest) as info:
            check(payload, name)
        assert info.value.param == name and f"'{name}'" in info.value.message
    assert optional_bool({}, "stream") is False and optional_bool({"stream": None}, "stream") is False


def test_optional_int_takes_the_first_integer_field() -> None:
    assert (
        optional_int({"max_completion_tokens": 5, "max_tokens": 9}, "max_completion_tokens", "max_tokens")
        == 5
    )
    assert optional_int({"max_tokens": 9}, "max_completion_tokens", "max_tokens") == 9
    assert optional_int({"max_tokens": True}, "max_tokens") is None
    assert optional_int({}, "max_tokens") is None
