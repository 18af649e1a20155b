"""The simulator's tokenizer and answers (tests/upstream/tokens.py): pure functions, milliseconds."""

from __future__ import annotations

import json

import pytest

from tests.upstream.tokens import answer_text, count_tokens, pieces, schema_value, tokenize


def test_tokenizer_counts_words_and_punctuation() -> None:
    assert tokenize("Hello, world!") == ["Hello", ",", "world", "!"]
    assert count_tokens("  a_b  c-d\n") == 4
    assert count_tokens("") == 0


@pytest.mark.parametrize("n", [1, 3, 4, 5, 16, 40])
def test_answer_retokenizes_to_exactly_n_tokens(n: int) -> None:
    text = answer_text("What is the capital of France?", n)
    assert count_tokens(text) == n
    assert len(pieces(text)) == n
    assert "".join(pieces(text)) == text


def test_answers_depend_on_prompt_and_choice() -> None:
    a = answer_text("tell me about cats", 12)
    assert a.startswith("Simulated answer to: tell me about cats")
    assert a != answer_text("tell me about dogs", 12)
    assert a != answer_text("tell me about cats", 12, choice=1)
    assert answer_text("tell me about cats", 12) == a  # deterministic


def test_schema_value_follows_schema_with_refs() -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "kind": {"enum": ["a", "b"]},
            "pet": {"$ref": "#/$defs/Pet"},
            "maybe": {"anyOf": [{"type": "number"}, {"type": "null"}]},
        },
        "$defs": {"Pet": {"type": "object", "properties": {"legs": {"type": "integer"}}}},
    }
    value = schema_value(schema, "one two three", 30)
    assert isinstance(value["name"], str) and value["name"]
    assert isinstance(value["age"], int)
    assert isinstance(value["tags"], list)
    assert value["kind"] == "a"
    assert isinstance(value["pet"]["legs"], int)
    assert isinstance(value["maybe"], float)
    assert json.loads(json.dumps(value)) == value
