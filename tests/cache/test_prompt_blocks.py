"""A prompt's blocks (cache/prompt_blocks.py): the same blocks read from a native body and from its
canonical form, the client's marks read, and marks written without touching the client's objects."""

from __future__ import annotations

from typing import Any

from cache.prompt_blocks import anthropic_prompt, canonical_prompt, mark_canonical, prefix_digests
from gateway.types import CacheMark, ChatRequest, Message, TextPart, WireAPI
from gateway.wire import parse_request, render_request

SYSTEM = "rules " * 50
TOOLS = [
    {"name": f"tool{i}", "description": "does things", "input_schema": {"type": "object"}} for i in range(2)
]


def body(*turns: str, system: Any = SYSTEM, tools: Any = None) -> dict[str, Any]:
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    out: dict[str, Any] = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": msgs}
    if system is not None:
        out["system"] = system
    if tools is not None:
        out["tools"] = tools
    return out


def test_canonical_and_native_prompts_agree() -> None:
    raw = body("hi", system=SYSTEM, tools=TOOLS)
    native = anthropic_prompt(raw)
    canonical = canonical_prompt(parse_request(WireAPI.ANTHROPIC_MESSAGES, raw))
    assert [b.section for b in native.blocks] == [b.section for b in canonical.blocks]
    assert [b.where for b in native.blocks] == [b.where for b in canonical.blocks]
    assert native.message_ends == canonical.message_ends == (len(TOOLS) + 1,)
    req = ChatRequest(
        model="m",
        system=(TextPart("s", cache=CacheMark("1h")),),
        messages=(Message("user", (TextPart("x"),)),),
    )
    assert canonical_prompt(req).blocks[0].mark == "1h"


def test_a_string_is_the_same_prefix_as_one_text_block() -> None:
    as_string = anthropic_prompt(body("hi", system="be brief"))
    as_blocks = anthropic_prompt(
        body("hi", system=[{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}])
    )
    assert prefix_digests(as_string) == prefix_digests(as_blocks)
    assert as_blocks.blocks[0].mark == "5m" and as_string.blocks[0].mark is None


def test_marks_render_as_cache_control_on_the_planned_blocks() -> None:
    raw = body("hi", "hello", "more", tools=TOOLS)
    req = parse_request(WireAPI.ANTHROPIC_MESSAGES, raw)
    prompt = canonical_prompt(req)
    marked = mark_canonical(req, prompt, [(2, "1h"), (len(prompt.blocks) - 1, "5m")])
    out = render_request(WireAPI.ANTHROPIC_MESSAGES, marked, model="m", default_max_tokens=10)
    assert out["system"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert out["messages"][-1]["content"][0]["cache_control"] == {"type": "ephemeral", "ttl": "5m"}
    assert "cache_control" not in str(out["tools"])
    assert req.system[0].cache is None  # the original is untouched


def test_thinking_blocks_and_empty_text_cannot_carry_a_mark() -> None:
    raw = body("q", "a", "")
    raw["messages"][1]["content"] = [
        {"type": "thinking", "thinking": "hm", "signature": "sig"},
        {"type": "text", "text": "a"},
    ]
    blocks = anthropic_prompt(raw).blocks
    assert [b.markable for b in blocks] == [True, True, False, True, False]
