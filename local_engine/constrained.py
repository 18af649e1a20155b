"""Constrained decoding: a token mask compiled from a grammar (JSON schema, Lark), applied before sampling.

The constraint engine is llguidance (PyPI ``llguidance``, the Rust library behind Guidance, also used
by vLLM and llama.cpp): it works offline from the tokenizer's JSON alone, compiles JSON schemas and
Lark grammars lazily (no up-front automaton over the 49,152-token vocabulary), and computes a mask in
well under a millisecond for typical schemas. We chose it over writing our own because a JSON-schema
compiler that is exact over a byte-level BPE vocabulary (tokens spanning several JSON lexemes, escapes,
numbers split digit by digit) is a project of its own.

``GrammarCompiler`` wraps the tokenizer (built once, about a second) and makes a ``Constraint`` per
request. The grammar builders here turn the APIs' structured-output requests into llguidance grammars:
``json_schema_grammar`` (``response_format`` json_schema / json_object) and ``tool_call_grammar``
(``tools`` with ``tool_choice``), whose output is ``{"name": "<tool>", "arguments": <json>}`` (see
``ToolCallParser``), or free text when the choice is "auto".
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

TOOL_PREFIX = '{"name": "'
TOOL_MIDDLE = '", "arguments": '
TOOL_SUFFIX = "}"


# JSON without free whitespace between tokens: a small model otherwise can spend its whole budget on
# newlines and indentation (measured: every invalid output of the first structured bench run did)
COMPACT: dict[str, Any] = {"whitespace_flexible": False}


class GrammarError(ValueError):
    """The grammar (or schema) cannot be compiled."""


def json_schema_grammar(schema: Mapping[str, Any] | None) -> str:
    """An llguidance grammar for JSON matching ``schema`` (any JSON object when None)."""
    import llguidance

    try:
        grammar = str(
            llguidance.LLMatcher.grammar_from_json_schema(
                dict(schema or {"type": "object"}), overrides={"whitespace_flexible": False}
            )
        )
    except (ValueError, TypeError) as exc:
        raise GrammarError(f"invalid JSON schema: {exc}") from None
    return validated(grammar)


def validated(grammar: str) -> str:
    """``grammar`` if llguidance can compile it; else ``GrammarError`` with its message."""
    import llguidance

    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error and not error.startswith("WARNING"):
        raise GrammarError(error)
    return grammar


def tool_call_grammar(tools: Sequence[tuple[str, Mapping[str, Any]]], *, allow_text: bool) -> str:
    """A grammar for one call of one of ``tools`` (name, parameters schema), written as
    ``{"name": "<name>", "arguments": <arguments JSON>}``; with ``allow_text`` the output may instead
    be plain text (not starting with ``{``), which is how "auto" lets the model answer directly."""
    import llguidance

    if not tools:
        raise GrammarError("no tools to call")
    rules = []
    alternatives = []
    for i, (name, parameters) in enumerate(tools):
        schema: dict[str, Any] = dict(parameters) if parameters else {"type": "object"}
        schema.setdefault("type", "object")
        guidance = schema.get("x-guidance")
        schema["x-guidance"] = {**(guidance if isinstance(guidance, dict) else {}), **COMPACT}
        prefix = json.dumps(TOOL_PREFIX + name + TOOL_MIDDLE)
        rules.append(f"call_{i}: {prefix} args_{i} {json.dumps(TOOL_SUFFIX)}")
        rules.append(f"args_{i}: %json {json.dumps(schema)}")
        alternatives.append(f"call_{i}")
    if allow_text:
        alternatives.append("TEXT")
        rules.append(r"TEXT: /(?s:[^{\s].*)/")
    lark = "start: " + " | ".join(alternatives) + "\n" + "\n".join(rules) + "\n"
    return validated(str(llguidance.LLMatcher.grammar_from_lark(lark)))


CLOSE_WITHIN = 32  # tokens before max_tokens at which a constrained output starts closing


def _outside_score(text: str) -> float:
    # a comma (-2) must beat another digit (-3): an object with required keys left can only go on
    weights = {"}": 10.0, "]": 10.0, '"': 2.0, ":": 1.0, ",": -2.0, "{": -10.0, "[": -10.0}
    body = text.strip()
    if not body:
        return -3.0
    return sum(weights.get(c, -3.0 if c.isdigit() else -1.0) for c in body)


def closing_scores(token_texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per token, how much it moves a JSON text towards its end, outside a string and inside one.
    Outside: closing brackets count most, commas and opening brackets (which start more content)
    count against. Inside a string: tokens that close it first (then as outside). Used only near the
    token budget (see ``Constraint.apply``)."""
    outside = np.array([_outside_score(t) for t in token_texts], np.float32)
    inside = np.array(
        [50.0 + _outside_score(t[1:]) if t.startswith('"') else -float(len(t)) for t in token_texts],
        np.float32,
    )
    return outside, inside


class JsonScanner:
    """Tracks whether a JSON text, fed piece by piece, is inside a string."""

    __slots__ = ("escaped", "in_string")

    def __init__(self) -> None:
        self.in_string = False
        self.escaped = False

    def feed(self, text: str) -> None:
        for c in text:
            if self.escaped:
                self.escaped = False
            elif self.in_string and c == "\\":
                self.escaped = True
            elif c == '"':
                self.in_string = not self.in_string


@dataclass(slots=True)
class Constraint:
    """One request's grammar state: ``apply`` masks a row of logits, ``advance`` consumes the sampled
    token. ``done`` once the grammar is complete (only a stop token could follow).

    A small model can loop inside an unbounded structure (nested objects, endless strings) until the
    token budget runs out, which would leave the JSON unfinished. So within ``CLOSE_WITHIN`` tokens of
    the budget the constraint closes the output: among the tokens the grammar allows it ranks those
    that end strings, arrays and objects first (``closing_scores``), the model's logits breaking ties.
    """

    matcher: Any  # llguidance.LLMatcher
    vocab_size: int
    scores: tuple[np.ndarray, np.ndarray] | None = None  # closing_scores of the vocabulary
    token_texts: Sequence[str] = ()
    close_within: int = CLOSE_WITHIN
    _mask: np.ndarray = field(init=False)
    _scanner: JsonScanner = field(init=False)

    def __post_init__(self) -> None:
        self._mask = np.full((1, (self.vocab_size + 31) // 32), -1, dtype=np.int32)
        self._scanner = JsonScanner()

    def allowed(self) -> np.ndarray:
        """Boolean ``[vocab]``: the tokens the grammar allows next."""
        self.matcher.unsafe_compute_mask_ptr(self._mask.ctypes.data, self._mask.nbytes)
        bits = np.unpackbits(self._mask.view(np.uint8), bitorder="little")[: self.vocab_size]
        return bits.astype(bool)

    def apply(self, logits: np.ndarray, remaining: int | None = None) -> np.ndarray:
        """A copy of ``logits [vocab]`` with the disallowed tokens at -inf; with ``remaining`` tokens of
        budget left, at most ``close_within``, the closing tokens are ranked first."""
        allowed = self.allowed()
        if remaining is not None and self.scores is not None and remaining <= self.close_within:
            scores = self.scores[1] if self._scanner.in_string else self.scores[0]
            logits = logits + scores * np.float32(1e4)
        return np.where(allowed, logits, np.float32(-np.inf))

    def advance(self, token: int) -> None:
        if not self.matcher.consume_token(int(token)):
            raise GrammarError(f"the grammar rejected token {token}: {self.matcher.get_error()}")
        if self.token_texts:
            self._scanner.feed(self.token_texts[int(token)])

    @property
    def done(self) -> bool:
        return bool(self.matcher.is_stopped())


class GrammarCompiler:
    """Builds ``Constraint``s for one tokenizer (``tokenizer_json``: the ``tokenizers`` JSON)."""

    def __init__(self, tokenizer_json: str, vocab_size: int, stop_ids: Iterable[int]) -> None:
        import llguidance

        self.vocab_size = vocab_size
        self._tokenizer = llguidance.LLTokenizer(
            tokenizer_json, n_vocab=vocab_size, eos_token=sorted(stop_ids)
        )
        self.token_texts = [self._tokenizer.decode_str([i]) for i in range(vocab_size)]
        self.scores = closing_scores(self.token_texts)

    def constraint(self, grammar: str) -> Constraint:
        import llguidance

        matcher = llguidance.LLMatcher(self._tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise GrammarError(matcher.get_error())
        return Constraint(matcher, self.vocab_size, self.scores, self.token_texts)


@dataclass(slots=True)
class ToolCallParser:
    """Splits a streamed tool-call output (``{"name": "...", "arguments": {...}}``) into the call's
    name and the arguments' text as it arrives; or recognizes plain text (an "auto" answer).

    ``feed(text)`` returns events: ``("text", str)``, ``("start", name)``, ``("args", str)``. The
    wrapper's closing brace is held back until ``finish``.
    """

    buffer: str = ""
    mode: str = "undecided"  # "undecided" | "text" | "args"
    name: str | None = None
    _held: str = ""

    def feed(self, text: str) -> list[tuple[str, str]]:
        events: list[tuple[str, str]] = []
        if self.mode == "text":
            return [("text", text)] if text else []
        if self.mode == "args":
            return self._args(text)
        self.buffer += text
        stripped = self.buffer
        if stripped and not TOOL_PREFIX.startswith(stripped[: len(TOOL_PREFIX)]):
            self.mode = "text"
            out, self.buffer = self.buffer, ""
            return [("text", out)]
        if len(stripped) > len(TOOL_PREFIX):
            rest = stripped[len(TOOL_PREFIX) :]
            end = rest.find(TOOL_MIDDLE)
            if end >= 0:
                self.name = rest[:end]
                self.mode = "args"
                events.append(("start", self.name))
                events.extend(self._args(rest[end + len(TOOL_MIDDLE) :]))
                self.buffer = ""
        return events

    def _args(self, text: str) -> list[tuple[str, str]]:
        text = self._held + text
        keep = len(TOOL_SUFFIX)
        self._held = text[-keep:] if len(text) >= keep else text
        out = text[: len(text) - len(self._held)]
        return [("args", out)] if out else []

    def finish(self) -> list[tuple[str, str]]:
        """Whatever is left once the generation ended (the closing brace dropped)."""
        if self.mode == "args":
            held, self._held = self._held, ""
            rest = held[: -len(TOOL_SUFFIX)] if held.endswith(TOOL_SUFFIX) else held
            return [("args", rest)] if rest else []
        if self.mode == "undecided" and self.buffer:
            self.mode = "text"
            out, self.buffer = self.buffer, ""
            return [("text", out)]
        return []
