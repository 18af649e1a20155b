"""A chat prompt as provider prompt caches see it, and the markers placed on it.

Anthropic caches the prompt in the order tools → system → messages, block by block: one ``Block`` per
tool, system block and message content block (a string is one text block), each identified by its
content without any ``cache_control``. A prefix's identity is the digest of its blocks; a breakpoint
is a ``cache_control`` on the block that ends it. Pure functions over plain data: reading a prompt
never modifies the request; ``mark_*`` return or write the marked copy.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import orjson

from gateway.types import CacheMark, ChatRequest, Message, Tool

if TYPE_CHECKING:
    from gateway.pipeline import Call

TTL = Literal["5m", "1h"]
TTL_S: Mapping[TTL, float] = {"5m": 300.0, "1h": 3600.0}
LOOKBACK_BLOCKS = 20  # Anthropic checks this many blocks before a breakpoint for a cached prefix

# ---- the prompt as the planner sees it ----------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Block:
    """One cacheable block: a tool, a system block or a message content block, in cache order.
    ``where`` locates it in its request (``(i,)`` for a tool or system block, ``(message, part)``);
    ``key`` is its content without any cache marker; ``mark`` the client's own marker's TTL;
    ``markable``: Anthropic accepts ``cache_control`` on it (not on thinking blocks or empty text)."""

    section: Literal["tools", "system", "messages"]
    where: tuple[int, ...]
    key: bytes
    tokens: int
    mark: TTL | None = None
    markable: bool = True


@dataclass(slots=True, frozen=True)
class Prompt:
    """A request's blocks and, for each message, the index of its last block (-1: no blocks)."""

    blocks: tuple[Block, ...]
    message_ends: tuple[int, ...]


def _estimate(text: str, chars_per_token: float) -> int:
    return math.ceil(len(text) / chars_per_token)


def _mark_ttl(control: Any) -> TTL | None:
    if isinstance(control, Mapping) and control.get("type") == "ephemeral":
        return "1h" if control.get("ttl") == "1h" else "5m"
    return None


_UNMARKABLE = frozenset({"thinking", "redacted_thinking"})


def json_key(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def anthropic_prompt(body: Mapping[str, Any], chars_per_token: float = 4.0) -> Prompt:
    """The blocks of an Anthropic Messages body (a string is one text block, as Anthropic caches it).
    Does not modify ``body``."""
    blocks: list[Block] = []

    def add(section: Any, where: tuple[int, ...], block: Any, tag: bytes) -> None:
        mark = None
        markable = True
        if isinstance(block, str):
            text: Any = block
            key = json_key({"text": block, "type": "text"})
            markable = bool(block)
        else:
            control = block.get("cache_control") if isinstance(block, dict) else None
            if control is not None:
                mark = _mark_ttl(control)
                block = {k: v for k, v in block.items() if k != "cache_control"}
            text = block.get("text") if isinstance(block, dict) else None
            key = json_key(block)
            kind = block.get("type") if isinstance(block, dict) else None
            markable = isinstance(block, dict) and kind not in _UNMARKABLE and (kind != "text" or bool(text))
        tokens = _estimate(text if isinstance(text, str) else key.decode(), chars_per_token)
        blocks.append(Block(section, where, tag + key, tokens, mark, markable))

    for i, tool in enumerate(body.get("tools") or ()):
        add("tools", (i,), tool, b"tools:")
    system = body.get("system")
    for i, part in enumerate([system] if isinstance(system, str) else system or ()):
        add("system", (i,), part, b"system:")
    ends: list[int] = []
    for m, msg in enumerate(body.get("messages") or ()):
        content = msg.get("content") if isinstance(msg, Mapping) else None
        tag = str(msg.get("role") if isinstance(msg, Mapping) else "").encode() + b"|messages:"
        for j, part in enumerate([content] if isinstance(content, str) else content or ()):
            add("messages", (m, j), part, tag)
        ends.append(len(blocks) - 1)
    return Prompt(tuple(blocks), tuple(ends))


def _ttl_of(mark: CacheMark | None) -> TTL | None:
    return None if mark is None else (mark.ttl or "5m")


def tool_key(tool: Tool) -> bytes:
    return json_key([tool.name, tool.description, tool.parameters, tool.strict])


def canonical_prompt(req: ChatRequest, chars_per_token: float = 4.0) -> Prompt:
    """The blocks of a canonical request. Does not modify ``req``."""
    blocks: list[Block] = []
    for i, tool in enumerate(req.tools):
        key = tool_key(tool)
        blocks.append(
            Block(
                "tools", (i,), b"tools:" + key, _estimate(key.decode(), chars_per_token), _ttl_of(tool.cache)
            )
        )
    for i, part in enumerate(req.system):
        est = _estimate(part.text, chars_per_token)
        blocks.append(Block("system", (i,), b"system:" + part.text.encode(), est, _ttl_of(part.cache)))
    ends: list[int] = []
    for m, msg in enumerate(req.messages):
        for j, p in enumerate(msg.content):
            plain = replace(p, cache=None)
            text = getattr(plain, "text", None)
            key = repr(plain).encode()
            est = _estimate(text if isinstance(text, str) else key.decode(), chars_per_token)
            markable = not isinstance(text, str) or bool(text)
            tag = msg.role.encode() + b"|"
            blocks.append(Block("messages", (m, j), tag + key, est, _ttl_of(p.cache), markable))
        ends.append(len(blocks) - 1)
    return Prompt(tuple(blocks), tuple(ends))


# ---- prefixes ----------------------------------------------------------------------------------------------


def prefix_digests(prompt: Prompt) -> list[bytes]:
    """The digest of the prompt up to and including each block (Anthropic's cache identity)."""
    h = hashlib.blake2b(digest_size=16)
    out: list[bytes] = []
    for b in prompt.blocks:
        h.update(b.key)
        h.update(b"\x00")
        out.append(h.copy().digest())
    return out


def section_end(prompt: Prompt, section: str) -> int:
    last = -1
    for i, b in enumerate(prompt.blocks):
        if b.section == section:
            last = i
    return last


def tokens_upto(prompt: Prompt) -> list[int]:
    total, out = 0, []
    for b in prompt.blocks:
        total += b.tokens
        out.append(total)
    return out


def openai_stable_prefix(body: Mapping[str, Any]) -> bytes:
    """An OpenAI chat body's tools and system texts, serialised as ``canonical_prompt`` serialises the
    canonical request's (so a translated request gets the same key)."""
    tools = []
    for t in body.get("tools") or ():
        fn = t.get("function") if isinstance(t, Mapping) else None
        if isinstance(fn, Mapping):
            tool = [fn.get("name"), fn.get("description"), fn.get("parameters") or {}, fn.get("strict")]
            tools.append(json_key(tool).decode())
    texts: list[Any] = []
    for m in body.get("messages") or ():
        if not (isinstance(m, Mapping) and m.get("role") in ("system", "developer")):
            break  # leading instructions only, as the canonical request's system
        content = m.get("content")
        if isinstance(content, str):
            texts.append(content)
        else:
            texts += [p.get("text") for p in content or () if isinstance(p, Mapping)]
    return json_key([tools, texts])


# ---- OpenAI's stable prefix, and marking a prompt --------------------------------------------------------


def _control(ttl: TTL) -> dict[str, str]:
    return {"type": "ephemeral", "ttl": ttl}


def mark_anthropic_body(call: Call, prompt: Prompt, marks: Sequence[tuple[int, TTL]]) -> None:
    """Adds ``cache_control`` to the native body's blocks (a string system prompt or message content
    becomes one text block), through ``call.rewrite``; the client's objects are copied, never mutated."""
    body = call.payload
    tools = list(body.get("tools") or ())
    system = body.get("system")
    system_blocks = [{"type": "text", "text": system}] if isinstance(system, str) else list(system or ())
    messages = list(body.get("messages") or ())
    touched: set[str] = set()
    for index, ttl in marks:
        block = prompt.blocks[index]
        if block.section == "tools":
            tools[block.where[0]] = {**tools[block.where[0]], "cache_control": _control(ttl)}
        elif block.section == "system":
            system_blocks[block.where[0]] = {**system_blocks[block.where[0]], "cache_control": _control(ttl)}
        else:
            m, j = block.where
            msg = dict(messages[m])
            content = msg.get("content")
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or ())
            parts[j] = {**parts[j], "cache_control": _control(ttl)}
            msg["content"] = parts
            messages[m] = msg
        touched.add(block.section)
    if "tools" in touched:
        call.rewrite("tools", tools)
    if "system" in touched:
        call.rewrite("system", system_blocks)
    if "messages" in touched:
        call.rewrite("messages", messages)


def mark_canonical(req: ChatRequest, prompt: Prompt, marks: Sequence[tuple[int, TTL]]) -> ChatRequest:
    """``req`` with ``CacheMark``s on the planned blocks."""
    tools = list(req.tools)
    system = list(req.system)
    messages = list(req.messages)
    for index, ttl in marks:
        block = prompt.blocks[index]
        mark = CacheMark(ttl)
        if block.section == "tools":
            tools[block.where[0]] = replace(tools[block.where[0]], cache=mark)
        elif block.section == "system":
            system[block.where[0]] = replace(system[block.where[0]], cache=mark)
        else:
            m, j = block.where
            parts = list(messages[m].content)
            parts[j] = replace(parts[j], cache=mark)
            messages[m] = Message(messages[m].role, tuple(parts), messages[m].name)
    return replace(req, tools=tuple(tools), system=tuple(system), messages=tuple(messages))
