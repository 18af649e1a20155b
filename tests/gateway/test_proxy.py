"""The pipeline's pure helpers (the pipeline itself is driven end to end in tests/gateway/api/)."""

from __future__ import annotations

import orjson
import pytest

from gateway.api.common import optional_bool, require_int, require_list, require_str
from gateway.errors import InvalidRequest
from gateway.proxy import _estimate_tokens, _usage_json

USAGE = {
    "prompt_tokens": 7,
    "completion_tokens": 3,
    "total_tokens": 10,
    "prompt_tokens_details": {"cached_tokens": 0},
}


def test_usage_of_a_small_body() -> None:
    assert _usage_json(orjson.dumps({"id": "x", "usage": USAGE})) == USAGE
    assert _usage_json(orjson.dumps({"id": "x", "usage": None})) is None
    assert _usage_json(b"not json") is None


def test_usage_of_a_large_body_is_cut_out_without_a_full_parse() -> None:
    data = [{"embedding": [0.125] * 4000, "index": i} for i in range(4)]
    body = orjson.dumps({"data": data, "model": "m", "usage": USAGE})
    assert len(body) > 64 * 1024
    assert _usage_json(body) == USAGE
    # usage first, then a large payload with objects: the key's own object is taken, not a later one
    first = orjson.dumps({"usage": USAGE, "data": data})
    assert _usage_json(first) == USAGE
    nulled = orjson.dumps({"usage": None, "data": data})
    assert _usage_json(nulled) is None


def test_estimate_tokens_adds_the_output_cap() -> None:
    assert _estimate_tokens(b"x" * 400, {"max_tokens": 50}) == 150
    assert _estimate_tokens(b"x" * 400, {"max_completion_tokens": 5}) == 105
    assert _estimate_tokens(b"x" * 40, {"max_tokens": True}) == 10


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
