"""Exact keys: what changes the answer changes the key; what does not, does not."""

from __future__ import annotations

from dataclasses import replace

from cache.exact import last_user_text, request_key, scope_key
from gateway.types import (
    CacheMark,
    ChatRequest,
    ImagePart,
    Message,
    ResponseFormat,
    Sampling,
    TextPart,
    Tool,
    ToolChoice,
)

BASE = ChatRequest(
    model="gpt-4o-mini",
    system=(TextPart("Be brief."),),
    messages=(Message("user", (TextPart("Hello there"),)),),
    sampling=Sampling(temperature=0),
)


def test_fields_that_do_not_change_the_answer_leave_the_key_alone() -> None:
    k = request_key(BASE, "ns")
    assert request_key(replace(BASE, stream=True, stream_usage=True), "ns") == k
    assert request_key(replace(BASE, user="u1", metadata={"store": True}), "ns") == k
    marked = replace(BASE, system=(TextPart("Be brief.", cache=CacheMark("1h")),))
    assert request_key(marked, "ns") == k


def test_everything_that_changes_the_answer_changes_the_key() -> None:
    k = request_key(BASE, "ns")
    variants = [
        replace(BASE, model="gpt-4o"),
        replace(BASE, system=(TextPart("Be long."),)),
        replace(BASE, messages=(Message("user", (TextPart("Hello there!"),)),)),
        replace(BASE, tools=(Tool("f", parameters={"type": "object"}),)),
        replace(BASE, tool_choice=ToolChoice("required")),
        replace(BASE, sampling=Sampling(temperature=0, top_p=0.5)),
        replace(BASE, stop=("x",)),
        replace(BASE, max_tokens=10),
        replace(BASE, response_format=ResponseFormat("json_object")),
        replace(BASE, n=2),
    ]
    keys = {request_key(v, "ns") for v in variants}
    assert k not in keys and len(keys) == len(variants)
    assert request_key(BASE, "other") != k


def test_scope_leaves_out_only_the_last_user_turn() -> None:
    other_q = replace(BASE, messages=(Message("user", (TextPart("Hi, how are you"),)),))
    assert scope_key(other_q, "ns") == scope_key(BASE, "ns")
    assert scope_key(replace(other_q, model="gpt-4o"), "ns") != scope_key(BASE, "ns")
    assert scope_key(BASE, "ns2") != scope_key(BASE, "ns")
    earlier = replace(
        BASE,
        messages=(
            Message("user", (TextPart("Earlier"),)),
            Message("assistant", (TextPart("Yes"),)),
            *BASE.messages,
        ),
    )
    assert scope_key(earlier, "ns") != scope_key(BASE, "ns")


def test_only_a_text_user_turn_is_embedded() -> None:
    assert last_user_text(BASE) == "Hello there"
    img = replace(BASE, messages=(Message("user", (TextPart("What is this?"), ImagePart(url="http://x"))),))
    assert last_user_text(img) is None
    prefill = replace(BASE, messages=(*BASE.messages, Message("assistant", (TextPart("Sure"),))))
    assert last_user_text(prefill) is None


def test_another_embedder_s_vectors_live_in_other_scopes() -> None:
    assert scope_key(BASE, "ns", "") == scope_key(BASE, "ns")  # float32 MiniLM: the scopes it always had
    assert scope_key(BASE, "ns", "onnx:int8-mixed") != scope_key(BASE, "ns")
    assert scope_key(BASE, "ns", "onnx:int8-mixed") != scope_key(BASE, "ns", "onnx:int8")
