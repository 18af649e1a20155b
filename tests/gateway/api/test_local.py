"""The local model served through the gateway: both SDKs, streaming and not, on the real SmolLM2 engine."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from gateway.settings import ModelPriceOverride, ModelSettings, ProviderSettings
from local_engine.convert import build_all

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"
ZERO = ModelPriceOverride(input=0, output=0, cache_read=0, cache_write_5m=0, cache_write_1h=0)


@pytest.fixture(scope="module")
def model_root() -> Path:
    root = Path(os.environ.get("THRIFTGATE_LOCAL_MODEL_DIR", "data/models"))
    build_all(root)
    return root


@pytest.fixture
def local_gateway(gateway_factory: Callable[..., Any], model_root: Path) -> Callable[..., Any]:
    def start(variant: str = "default", preload: bool = False, **overrides: Any) -> Any:
        options = {"num_slots": 4, "max_seq_len": 2048, "speculative": "ngram", "variant": variant}
        if preload:
            options["preload"] = True
        providers = {"local": ProviderSettings(kind="local", options=options)}
        models = {
            "thriftgate-local": ModelSettings(provider="local", model="smollm2-135m-instruct", prices=ZERO)
        }
        return gateway_factory(
            providers=providers, models=models, local_model_dir=str(model_root), **overrides
        )

    return start


def test_both_surfaces_stream_and_not_give_the_same_greedy_answer(local_gateway: Callable[..., Any]) -> None:
    messages: list[Any] = [{"role": "user", "content": QUESTION}]
    with local_gateway() as gw:
        oa = openai.OpenAI(base_url=gw.openai_url, api_key="sk-anything", max_retries=0)
        raw = oa.chat.completions.with_raw_response.create(
            model="thriftgate-local", messages=messages, max_tokens=24, temperature=0
        )
        completion = raw.parse()
        text = completion.choices[0].message.content or ""
        assert text.strip()  # the answer's quality is the engine's quality gate (tests/local_engine)
        assert raw.headers["x-thriftgate-model"] in ("thriftgate-local", "smollm2-135m-instruct")
        assert completion.usage is not None and completion.usage.prompt_tokens > 10

        chunks = list(
            oa.chat.completions.create(
                model="thriftgate-local",
                messages=messages,
                max_tokens=24,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == text
        usage_chunks = [c for c in chunks if c.usage is not None]
        assert len(usage_chunks) == 1 and usage_chunks[0].usage is not None
        assert usage_chunks[0].usage.completion_tokens == completion.usage.completion_tokens

        an = anthropic.Anthropic(base_url=gw.url, api_key="sk-ant-anything", max_retries=0)
        # anthropic 2.x no longer takes sampling arguments; the wire field still exists and we honour it
        greedy: Any = {"temperature": 0}
        message = an.messages.create(
            model="thriftgate-local", max_tokens=24, messages=messages, extra_body=greedy
        )
        assert message.content[0].type == "text" and message.content[0].text == text
        assert message.usage.output_tokens == completion.usage.completion_tokens
        with an.messages.stream(
            model="thriftgate-local", max_tokens=24, messages=messages, extra_body=greedy
        ) as s:
            assert "".join(s.text_stream) == text
            final = s.get_final_message()
        assert final.stop_reason in ("end_turn", "max_tokens")

    rows = gw.rows()
    assert len(rows) == 4
    assert {r["provider"] for r in rows} == {"local"}
    assert all(r["status_code"] == 200 and r["cost_usd"] == 0 and r["output_tokens"] > 0 for r in rows)


def test_concurrent_clients_share_the_engine_and_match_sequential_output(
    local_gateway: Callable[..., Any],
) -> None:
    prompts = ["Name a colour.", "Say hello in French.", "What is 2+2?", "Name a fruit."]
    # float32: the INT4/INT8 kernels quantize activations per call, so their batched numbers differ slightly
    # from batch-1 numbers and greedy outputs may diverge; float32 is batch-invariant to argmax here.
    with local_gateway(variant="fp32") as gw:

        async def ask(client: openai.AsyncOpenAI, prompt: str) -> str:
            r = await client.chat.completions.create(
                model="thriftgate-local",
                messages=[{"role": "user", "content": prompt}],
                max_tokens=16,
                temperature=0,
            )
            return r.choices[0].message.content or ""

        async def run() -> tuple[list[str], list[str]]:
            client = openai.AsyncOpenAI(base_url=gw.openai_url, api_key="sk-x", max_retries=0)
            one_by_one = [await ask(client, p) for p in prompts]
            together = await asyncio.gather(*(ask(client, p) for p in prompts))
            return one_by_one, list(together)

        one_by_one, together = asyncio.run(run())
    assert together == one_by_one
    assert all(one_by_one)


def test_shared_system_prompt_is_served_from_the_prefix_cache(local_gateway: Callable[..., Any]) -> None:
    system = "You are a meticulous assistant for a railway company. " * 40
    with local_gateway() as gw:
        oa = openai.OpenAI(base_url=gw.openai_url, api_key="sk-x", max_retries=0)
        usages = []
        for question in ("When does the first train leave?", "Is there a dining car?"):
            r = oa.chat.completions.create(
                model="thriftgate-local",
                messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
                max_tokens=4,
                temperature=0,
            )
            assert r.usage is not None and r.usage.prompt_tokens_details is not None
            usages.append(r.usage)
    assert usages[0].prompt_tokens_details is not None and usages[1].prompt_tokens_details is not None
    assert usages[1].prompt_tokens_details.cached_tokens >= 0.8 * usages[0].prompt_tokens
    rows = gw.rows()
    assert rows[1]["cache_read_tokens"] == usages[1].prompt_tokens_details.cached_tokens


def test_requests_the_local_model_cannot_serve_get_errors_in_each_api_format(
    local_gateway: Callable[..., Any],
) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    with local_gateway() as gw:
        oa = openai.OpenAI(base_url=gw.openai_url, api_key="sk-x", max_retries=0)
        with pytest.raises(openai.BadRequestError) as info:
            oa.chat.completions.create(
                model="thriftgate-local",
                messages=[{"role": "user", "content": "x"}],
                tools=[tool],  # type: ignore[list-item]
                tool_choice={"type": "function", "function": {"name": "not_a_tool"}},
            )
        assert "tool_choice" in str(info.value)
        with pytest.raises(openai.BadRequestError, match="context"):
            oa.chat.completions.create(
                model="thriftgate-local", messages=[{"role": "user", "content": "x"}], max_tokens=100_000
            )
        an = anthropic.Anthropic(base_url=gw.url, api_key="sk-ant-x", max_retries=0)
        with pytest.raises(anthropic.BadRequestError):
            an.messages.create(
                model="thriftgate-local",
                max_tokens=8,
                messages=[
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "url", "url": "http://x"}}],
                    }
                ],
            )


def test_count_tokens_uses_the_local_tokenizer(local_gateway: Callable[..., Any], model_root: Path) -> None:
    from local_engine.tokenizer import Tokenizer

    messages: list[Any] = [{"role": "user", "content": QUESTION}]
    with local_gateway() as gw:
        an = anthropic.Anthropic(base_url=gw.url, api_key="sk-ant-x", max_retries=0)
        counted = an.messages.count_tokens(model="thriftgate-local", system="Be brief.", messages=messages)
        made = an.messages.create(
            model="thriftgate-local", max_tokens=4, system="Be brief.", messages=messages
        )
    tokenizer = Tokenizer.load(model_root / "smollm2-135m-instruct")
    prompt = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}],
        add_generation_prompt=True,
    )
    assert counted.input_tokens == len(tokenizer.encode(prompt))
    # the count is what the model is then billed for (its input, cached or not)
    assert counted.input_tokens == made.usage.input_tokens + (made.usage.cache_read_input_tokens or 0)
    count_row = gw.rows()[0]
    assert count_row["surface"] == "anthropic.count_tokens" and count_row["status_code"] == 200
    assert count_row["cost_usd"] == 0


# ---- structured output: constrained decoding on thriftgate-local ----

CITY_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "country": {"type": "string", "maxLength": 40},
        "population_millions": {"type": "number"},
    },
    "required": ["city", "country", "population_millions"],
    "additionalProperties": False,
}
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather of a city",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 40},
            "unit": {"enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
}
TIME_TOOL = {
    "name": "get_time",
    "description": "Current time in a timezone",
    "parameters": {
        "type": "object",
        "properties": {"timezone": {"type": "string", "maxLength": 40}},
        "required": ["timezone"],
        "additionalProperties": False,
    },
}
TOOL_SCHEMAS = {t["name"]: t["parameters"] for t in (WEATHER_TOOL, TIME_TOOL)}


def test_json_schema_and_json_object_on_the_openai_surface(local_gateway: Callable[..., Any]) -> None:
    import jsonschema
    from pydantic import BaseModel

    class City(BaseModel):
        city: str
        country: str
        population_millions: float

    fmt: Any = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY_SCHEMA, "strict": True}}
    messages: Any = [{"role": "user", "content": "Tell me about Paris as JSON."}]
    with local_gateway() as gw:
        oa = openai.OpenAI(base_url=gw.openai_url, api_key="sk-x", max_retries=0)
        for temperature in (0.0, 0.8):
            done = oa.chat.completions.create(
                model="thriftgate-local",
                messages=messages,
                response_format=fmt,
                max_tokens=120,
                temperature=temperature,
                seed=1,
            )
            text = done.choices[0].message.content or ""
            jsonschema.validate(json.loads(text), CITY_SCHEMA)
            assert done.choices[0].finish_reason == "stop"
        parsed = oa.chat.completions.parse(
            model="thriftgate-local", messages=messages, response_format=City, max_tokens=120, temperature=0
        )
        assert isinstance(parsed.choices[0].message.parsed, City)
        with oa.chat.completions.stream(
            model="thriftgate-local", messages=messages, response_format=City, max_tokens=120, temperature=0
        ) as stream:
            chunks = [e for e in stream if e.type == "content.delta"]
            final = stream.get_final_completion()
        assert len(chunks) > 1  # streamed piece by piece
        assert isinstance(final.choices[0].message.parsed, City)

        for stream_it in (False, True):
            kwargs: Any = {"response_format": {"type": "json_object"}, "max_tokens": 80, "temperature": 0}
            if stream_it:
                pieces = oa.chat.completions.create(
                    model="thriftgate-local", messages=messages, stream=True, **kwargs
                )
                text = "".join(c.choices[0].delta.content or "" for c in pieces if c.choices)
            else:
                out = oa.chat.completions.create(model="thriftgate-local", messages=messages, **kwargs)
                text = out.choices[0].message.content or ""
            assert isinstance(json.loads(text), dict)


def test_tool_calls_on_the_openai_surface(local_gateway: Callable[..., Any]) -> None:
    import jsonschema

    tools: Any = [{"type": "function", "function": t} for t in (WEATHER_TOOL, TIME_TOOL)]
    messages: Any = [{"role": "user", "content": "What is the weather in Paris right now?"}]
    choices: list[Any] = ["required", {"type": "function", "function": {"name": "get_time"}}]
    with local_gateway() as gw:
        oa = openai.OpenAI(base_url=gw.openai_url, api_key="sk-x", max_retries=0)
        for tool_choice in choices:
            done = oa.chat.completions.create(
                model="thriftgate-local",
                messages=messages,
                tools=tools,
                tool_choice=tool_choice,
                max_tokens=120,
                temperature=0,
            )
            choice = done.choices[0]
            assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
            call: Any = choice.message.tool_calls[0]
            if isinstance(tool_choice, dict):
                assert call.function.name == "get_time"
            jsonschema.validate(json.loads(call.function.arguments), TOOL_SCHEMAS[call.function.name])

            with oa.chat.completions.stream(
                model="thriftgate-local",
                messages=messages,
                tools=tools,
                tool_choice=tool_choice,
                max_tokens=120,
                temperature=0,
            ) as stream:
                deltas = [e for e in stream if e.type == "tool_calls.function.arguments.delta"]
                final = stream.get_final_completion()
            assert len(deltas) > 1  # the arguments arrive as deltas
            streamed: Any = final.choices[0].message.tool_calls
            assert streamed and streamed[0].function.name == call.function.name
            assert json.loads(streamed[0].function.arguments) == json.loads(call.function.arguments)
            assert final.choices[0].finish_reason == "tool_calls"

        # a tool result goes back to the model as the next turn's context
        follow = [
            *messages,
            {"role": "assistant", "tool_calls": [call.model_dump(include={"id", "type", "function"})]},
            {"role": "tool", "tool_call_id": call.id, "content": "18 degrees and sunny"},
        ]
        after = oa.chat.completions.create(
            model="thriftgate-local",
            messages=follow,
            tools=tools,
            tool_choice="none",
            max_tokens=30,
            temperature=0,
        )
        assert after.choices[0].message.content


def test_tool_use_and_output_format_on_the_anthropic_surface(local_gateway: Callable[..., Any]) -> None:
    import jsonschema

    tools: Any = [
        {"name": t["name"], "description": t["description"], "input_schema": t["parameters"]}
        for t in (WEATHER_TOOL, TIME_TOOL)
    ]
    messages: Any = [{"role": "user", "content": "What is the weather in Paris right now?"}]
    greedy: Any = {"temperature": 0}
    with local_gateway() as gw:
        an = anthropic.Anthropic(base_url=gw.url, api_key="sk-ant-x", max_retries=0)
        for tool_choice in ({"type": "any"}, {"type": "tool", "name": "get_weather"}):
            message = an.messages.create(
                model="thriftgate-local",
                max_tokens=120,
                messages=messages,
                tools=tools,
                tool_choice=tool_choice,  # type: ignore[arg-type]
                extra_body=greedy,
            )
            assert message.stop_reason == "tool_use"
            block: Any = next(b for b in message.content if b.type == "tool_use")
            jsonschema.validate(block.input, TOOL_SCHEMAS[block.name])
            if tool_choice["type"] == "tool":
                assert block.name == "get_weather"
            with an.messages.stream(
                model="thriftgate-local",
                max_tokens=120,
                messages=messages,
                tools=tools,
                tool_choice=tool_choice,  # type: ignore[arg-type]
                extra_body=greedy,
            ) as stream:
                kinds = [e.type for e in stream]
                final = stream.get_final_message()
            assert kinds.count("input_json") > 1  # input_json_delta events, accumulated by the SDK
            streamed: Any = next(b for b in final.content if b.type == "tool_use")
            assert (streamed.name, streamed.input) == (block.name, block.input)
            assert final.stop_reason == "tool_use"

        fmt: Any = {"output_config": {"format": {"type": "json_schema", "schema": CITY_SCHEMA}}, **greedy}
        ask: Any = [{"role": "user", "content": "Tell me about Paris as JSON."}]
        message = an.messages.create(model="thriftgate-local", max_tokens=120, messages=ask, extra_body=fmt)
        text = message.content[0].text  # type: ignore[union-attr]
        jsonschema.validate(json.loads(text), CITY_SCHEMA)
        with an.messages.stream(model="thriftgate-local", max_tokens=120, messages=ask, extra_body=fmt) as s:
            assert json.loads("".join(s.text_stream)) == json.loads(text)


def test_the_default_variant_answers_the_factual_questions_as_well_as_fp32(
    local_gateway: Callable[..., Any], model_root: Path
) -> None:
    """The quality bar's answer score, asked through the gateway: every question of
    ``local_engine.quality.FACTUAL_QUESTIONS`` at temperature 0, default variant against float32."""
    from local_engine.quality import ANSWER_TOKENS, FACTUAL_QUESTIONS, is_correct

    async def score(gw: Any) -> tuple[int, str]:
        client = openai.AsyncOpenAI(base_url=gw.openai_url, api_key="sk-x", max_retries=0)

        async def ask(question: str) -> str:
            r = await client.chat.completions.create(
                model="thriftgate-local",
                messages=[{"role": "user", "content": question}],
                max_tokens=ANSWER_TOKENS,
                temperature=0,
            )
            return r.choices[0].message.content or ""

        answers = await asyncio.gather(*(ask(q) for q, _ in FACTUAL_QUESTIONS))
        right = sum(is_correct(a, acc) for a, (_, acc) in zip(answers, FACTUAL_QUESTIONS, strict=True))
        return right, answers[0]

    with local_gateway() as gw:
        default_score, france = asyncio.run(score(gw))
    with local_gateway(variant="fp32") as gw:
        fp32_score, fp32_france = asyncio.run(score(gw))
    assert "Paris" in fp32_france and "Paris" in france
    assert len(FACTUAL_QUESTIONS) >= 50
    assert default_score >= fp32_score, (default_score, fp32_score)


def test_a_preloaded_engine_is_ready_only_once_loaded(local_gateway: Callable[..., Any]) -> None:
    import httpx

    from tests.waiting import wait_until

    seen: list[tuple[int, str]] = []

    def ready() -> bool:
        r = httpx.get(f"{gw.url}/readyz")
        seen.append((r.status_code, r.json()["providers"]["local"]["status"]))
        return r.status_code == 200

    with local_gateway(preload=True) as gw:
        wait_until(ready, timeout_s=300)
        oa = openai.OpenAI(base_url=gw.openai_url, api_key="sk-anything", max_retries=0)
        completion = oa.chat.completions.create(
            model="thriftgate-local", messages=[{"role": "user", "content": QUESTION}], max_tokens=4
        )
    assert completion.choices[0].message.content
    assert seen[-1] == (200, "ready")
    assert all(code == 503 and status == "loading" for code, status in seen[:-1])
