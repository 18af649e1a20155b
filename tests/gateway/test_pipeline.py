"""The pipeline's pure helpers (the pipeline itself is driven end to end in tests/gateway/api/)."""

from __future__ import annotations

import orjson
import pytest

from gateway.errors import InvalidRequest
from gateway.pipeline import _usage_json, check_model_name

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


def test_model_names_that_could_split_a_header_or_fill_a_column_are_refused() -> None:
    check_model_name("openai/gpt-4o-2024-08-06")
    for bad in ("gpt\r\nx-evil: 1", "a\x00b", "m" * 257, "tab\there"):
        with pytest.raises(InvalidRequest) as info:
            check_model_name(bad)
        assert info.value.param == "model"
