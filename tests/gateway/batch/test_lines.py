"""Validation of a job's requests at submission: each bad one named by its line (OpenAI) or index
(Anthropic); equal requests share a digest whatever their key order."""

from __future__ import annotations

import json

import pytest

from gateway.api.anthropic import MESSAGES
from gateway.api.openai import CHAT, EMBEDDINGS
from gateway.batch import lines
from gateway.errors import InvalidRequest


def chat(custom_id: str = "a", **body: object) -> bytes:
    payload = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **body}
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": payload}
    ).encode()


def openai_line(n: int, raw: bytes, **kw: object) -> lines.Item:
    return lines.openai_line(n, raw, "/v1/chat/completions", CHAT.validate, CHAT.output_cap, **kw)  # type: ignore[arg-type]


def test_a_good_line() -> None:
    item = openai_line(3, chat("x", max_tokens=7))
    assert (item.line, item.custom_id, item.model, item.output_cap) == (3, "x", "gpt-4o-mini", 7)
    assert json.loads(item.body)["max_tokens"] == 7


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"not json", "not valid JSON"),
        (b"[1]", "JSON object"),
        (json.dumps({"method": "POST", "url": "/v1/chat/completions", "body": {}}).encode(), "custom_id"),
        (chat().replace(b'"POST"', b'"GET"'), "method"),
        (chat().replace(b"/v1/chat/completions", b"/v1/embeddings"), "url"),
        (chat(messages="x"), "messages"),
        (chat(stream=True), "streaming"),
        (json.dumps({"custom_id": "a", "url": "/v1/chat/completions", "body": []}).encode(), "body"),
    ],
)
def test_bad_lines_are_named(raw: bytes, says: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        openai_line(12, raw)
    assert err.value.message.startswith("Line 12:") and says in err.value.message


def test_model_override_and_allow_list() -> None:
    assert openai_line(1, chat(), model="cheap").model == "cheap"
    with pytest.raises(InvalidRequest, match="may not use the model 'gpt-4o-mini'"):
        openai_line(1, chat(), allowed=frozenset({"cheap"}))


def test_embeddings_lines() -> None:
    raw = json.dumps(
        {"custom_id": "e", "url": "/v1/embeddings", "body": {"model": "text-embedding-3-small", "input": "x"}}
    ).encode()
    item = lines.openai_line(1, raw, "/v1/embeddings", EMBEDDINGS.validate, EMBEDDINGS.output_cap)
    assert item.model == "text-embedding-3-small"


def test_anthropic_requests_are_named_by_index() -> None:
    good = {
        "custom_id": "ok_1",
        "params": {
            "model": "claude-haiku-4-5",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "x"}],
        },
    }
    assert lines.anthropic_request(0, good, MESSAGES.validate, MESSAGES.output_cap).output_cap == 5
    with pytest.raises(InvalidRequest, match=r"requests\.4\.custom_id"):
        lines.anthropic_request(4, {**good, "custom_id": "has space"}, MESSAGES.validate, MESSAGES.output_cap)
    with pytest.raises(InvalidRequest, match=r"requests\.2\.params: .*max_tokens"):
        bad = {"custom_id": "b", "params": {"model": "m", "messages": [{"role": "user", "content": "x"}]}}
        lines.anthropic_request(2, bad, MESSAGES.validate, MESSAGES.output_cap)


def test_digest_ignores_key_order_and_duplicates_are_tracked() -> None:
    a = lines.digest("/v1/x", {"a": 1, "b": [1, 2]})
    assert a == lines.digest("/v1/x", {"b": [1, 2], "a": 1})
    assert a != lines.digest("/v1/y", {"a": 1, "b": [1, 2]})
    seen = lines.Duplicates()
    first, again, other = openai_line(1, chat("1")), openai_line(2, chat("2")), openai_line(3, chat("3", n=2))
    assert (seen.original(first), seen.original(again), seen.original(other)) == (None, 1, None)
    seen.check_custom_id(first, "Line 1")
    with pytest.raises(InvalidRequest, match="Line 4: the custom_id '1' is used more than once"):
        seen.check_custom_id(openai_line(4, chat("1")), "Line 4")
