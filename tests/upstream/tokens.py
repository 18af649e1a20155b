"""The simulator's tokenizer and its deterministic answers: pure functions of the request.

Tokenizer: every match of ``\\w+|[^\\w\\s]`` is one token ("Hello, world!" is 4 tokens). Whitespace
is free. Answers are built from tokens and re-tokenize to exactly the count reported.

Answers: ``Simulated answer to: <words of the last user message, cycled>`` (choice ``i > 0`` says
``Simulated answer <i+1> to:`` so that ``n`` choices differ). JSON answers and tool arguments are
generated from the JSON schema (or ``{"answer": ...}`` without one).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any

import orjson

_TOKEN = re.compile(r"\w+|[^\w\s]")
_PIECE = re.compile(r"\s*(?:\w+|[^\w\s])")
_WORD = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    """The tokens of ``text`` (one per word, one per punctuation character)."""
    return _TOKEN.findall(text)


def count_tokens(text: str) -> int:
    """How many tokens ``text`` has under the simulator's tokenizer."""
    return sum(1 for _ in _TOKEN.finditer(text))


def pieces(text: str) -> list[str]:
    """Split ``text`` into one piece per token, each with its leading whitespace; ``"".join`` of
    the pieces is ``text`` without trailing whitespace. Streams send these as deltas."""
    return _PIECE.findall(text)


def json_text(value: Any) -> str:
    """Compact JSON with a space after separators (the form tool arguments usually take)."""
    return orjson.dumps(value).decode()


def words_of(text: str) -> list[str]:
    return _WORD.findall(text) or ["nothing"]


def answer_tokens(prompt: str, n: int, choice: int = 0) -> list[str]:
    """The first ``n`` tokens of the answer to ``prompt`` (choice ``choice``)."""
    head = (
        ["Simulated", "answer", "to", ":"]
        if choice == 0
        else ["Simulated", "answer", str(choice + 1), "to", ":"]
    )
    words = words_of(prompt)
    out = head[:n]
    i = choice
    while len(out) < n:
        out.append(words[i % len(words)])
        i += 1
    return out


def join_tokens(tokens: Iterable[str]) -> str:
    """Join answer tokens into text that re-tokenizes to the same tokens (space before words)."""
    text = ""
    for tok in tokens:
        text += tok if (not text or not (tok[0].isalnum() or tok[0] == "_")) else " " + tok
    return text


def answer_text(prompt: str, n: int, choice: int = 0) -> str:
    return join_tokens(answer_tokens(prompt, n, choice))


def value_for_schema(schema: Any, words: list[str], fill: int = 3, _depth: int = 0) -> Any:
    """A deterministic value that satisfies the common subset of JSON Schema (type, properties,
    required, enum, const, items, anyOf/oneOf, $ref to $defs is resolved by the caller)."""
    if not isinstance(schema, dict) or _depth > 8:
        return " ".join(words[:fill])
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return value_for_schema(schema[key][0], words, fill, _depth + 1)
    typ = schema.get("type")
    if isinstance(typ, list):
        typ = next((t for t in typ if t != "null"), "null")
    if typ == "object" or (typ is None and "properties" in schema):
        props = schema.get("properties") or {}
        return {k: value_for_schema(v, words, fill, _depth + 1) for k, v in props.items()}
    if typ == "array":
        return [value_for_schema(schema.get("items", {"type": "string"}), words, fill, _depth + 1)]
    if typ == "integer":
        return len(words)
    if typ == "number":
        return len(words) + 0.5
    if typ == "boolean":
        return True
    if typ == "null":
        return None
    return " ".join(words[:fill])


def resolve_refs(schema: Any, root: Any = None, _depth: int = 0) -> Any:
    """Inline local ``#/$defs/...`` and ``#/definitions/...`` references (pydantic emits them)."""
    root = schema if root is None else root
    if _depth > 16:
        return {}
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            target: Any = root
            for part in ref[2:].split("/"):
                target = target.get(part, {}) if isinstance(target, dict) else {}
            return resolve_refs(target, root, _depth + 1)
        return {k: resolve_refs(v, root, _depth + 1) for k, v in schema.items()}
    if isinstance(schema, list):
        return [resolve_refs(v, root, _depth + 1) for v in schema]
    return schema


def schema_value(schema: Any, prompt: str, n: int) -> Any:
    """A value for ``schema`` whose first string field holds enough prompt words that the JSON has
    about ``n`` tokens (``{"answer": ...}`` when there is no schema)."""
    if not isinstance(schema, dict) or not schema:
        schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    schema = resolve_refs(schema)
    words = words_of(prompt)
    skeleton = count_tokens(json_text(value_for_schema(schema, [""], 0)))
    fill = max(1, n - skeleton)
    cycled = [words[i % len(words)] for i in range(fill)]
    return value_for_schema(schema, cycled, fill)


def stable_hash(*parts: str | bytes) -> str:
    """A short hex digest, the seed of every id and vector the simulator makes."""
    h = hashlib.blake2b(digest_size=12)
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\x00")
    return h.hexdigest()
