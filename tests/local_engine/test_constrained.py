"""Constrained decoding (local_engine.constrained): the tool-call stream parser, and JSON / tool-call
grammars driving the real model, whose every output must parse and validate against its schema."""

from __future__ import annotations

import json

import jsonschema
import pytest

from local_engine.constrained import (
    GrammarCompiler,
    GrammarError,
    ToolCallParser,
    json_schema_grammar,
    tool_call_grammar,
)
from local_engine.engine import LLMEngine
from local_engine.runner import ModelRunner
from local_engine.sampling import SamplingParams
from local_engine.tokenizer import Tokenizer
from tests.local_engine.conftest import chat

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 3},
    },
    "required": ["name", "age", "hobbies"],
    "additionalProperties": False,
}


def feed_all(parser: ToolCallParser, pieces: list[str]) -> list[tuple[str, str]]:
    events = [e for piece in pieces for e in parser.feed(piece)]
    return events + parser.finish()


def merge(events: list[tuple[str, str]]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for kind, text in events:
        if out and out[-1][0] == kind and kind != "start":
            out[-1] = (kind, out[-1][1] + text)
        else:
            out.append((kind, text))
    return out


@pytest.mark.parametrize("size", [1, 2, 3, 7, 100])
def test_tool_call_parser_splits_name_and_arguments_in_any_chunking(size: int) -> None:
    text = '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}'
    pieces = [text[i : i + size] for i in range(0, len(text), size)]
    assert merge(feed_all(ToolCallParser(), pieces)) == [
        ("start", "get_weather"),
        ("args", '{"city": "Paris", "unit": "celsius"}'),
    ]


def test_tool_call_parser_passes_plain_text_through() -> None:
    assert merge(feed_all(ToolCallParser(), ["Hel", "lo {there}"])) == [("text", "Hello {there}")]
    assert merge(feed_all(ToolCallParser(), ['{"na'])) == [("text", '{"na')]  # never completed


def test_invalid_schemas_and_empty_tools_are_refused() -> None:
    with pytest.raises(GrammarError):
        tool_call_grammar([], allow_text=False)
    with pytest.raises(GrammarError):
        json_schema_grammar({"type": "object", "properties": 3})  # type: ignore[dict-item]


@pytest.fixture(scope="module")
def compiler(real_tokenizer: Tokenizer, real_runner: ModelRunner) -> GrammarCompiler:
    return GrammarCompiler(real_tokenizer.hf.to_str(), real_runner.vocab_size, real_tokenizer.stop_ids)


def generate(
    runner: ModelRunner,
    tokenizer: Tokenizer,
    compiler: GrammarCompiler,
    prompt: str,
    grammar: str,
    **kw: object,
) -> str:
    engine = LLMEngine(runner, tokenizer, speculative="auto", grammar_compiler=lambda: compiler)
    params = SamplingParams(max_tokens=200, grammar=grammar, **kw)  # type: ignore[arg-type]
    engine.add_request("r", chat(tokenizer, prompt), params)
    ids: list[int] = []
    reason = None
    while engine.has_unfinished():
        for out in engine.step():
            ids += out.new_token_ids
            reason = out.finish_reason or reason
    assert reason == "stop"
    return tokenizer.decode(ids)


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_json_schema_output_validates(
    real_runner: ModelRunner, real_tokenizer: Tokenizer, compiler: GrammarCompiler, temperature: float
) -> None:
    text = generate(
        real_runner,
        real_tokenizer,
        compiler,
        "Describe a fictional person as JSON with a name, an age and hobbies.",
        json_schema_grammar(PERSON),
        temperature=temperature,
        seed=3,
    )
    jsonschema.validate(json.loads(text), PERSON)


@pytest.mark.slow
def test_json_object_mode_gives_an_object(
    real_runner: ModelRunner, real_tokenizer: Tokenizer, compiler: GrammarCompiler
) -> None:
    text = generate(
        real_runner,
        real_tokenizer,
        compiler,
        "List two colors as JSON.",
        json_schema_grammar(None),
        temperature=0.0,
    )
    assert isinstance(json.loads(text), dict)


@pytest.mark.slow
def test_a_forced_tool_call_names_a_tool_and_validates(
    real_runner: ModelRunner, real_tokenizer: Tokenizer, compiler: GrammarCompiler
) -> None:
    grammar = tool_call_grammar(
        [("get_weather", WEATHER), ("get_time", {"type": "object"})], allow_text=False
    )
    text = generate(
        real_runner, real_tokenizer, compiler, "What is the weather in Paris?", grammar, temperature=0.0
    )
    call = json.loads(text)
    assert call["name"] in ("get_weather", "get_time")
    if call["name"] == "get_weather":
        jsonschema.validate(call["arguments"], WEATHER)
    events = merge(feed_all(ToolCallParser(), list(text)))
    assert events[0] == ("start", call["name"])
    assert json.loads(events[1][1]) == call["arguments"]
