"""The ``local`` provider kind: ThriftGate's own inference engine (``local_engine``) as an in-process
``ChatProvider``.

It takes canonical requests (``gateway.types.ChatRequest``) and answers canonical responses or stream
events; the pipeline renders them in whichever API the client speaks (``gateway.wire``), so the local
model serves the OpenAI and the Anthropic SDK alike, streamed or not, and counts tokens for Anthropic's
count_tokens with its own tokenizer. Every request shares one ``AsyncLLMEngine``, so concurrent clients
are batched continuously.

Structured output goes through constrained decoding (``local_engine.constrained``, llguidance): a
``response_format`` of ``json_object`` or ``json_schema`` masks every token so the output is JSON matching
the schema, and ``tools`` (unless ``tool_choice`` is "none") make the output one call
``{"name": ..., "arguments": ...}`` of a listed tool (forced by "required" or a named tool; with "auto" the
model may answer in text instead), returned as a tool call and streamed as tool-call deltas. The tools and
the schema are also described to the model in the system prompt.

What the engine cannot serve is refused with a 400 naming the field (``InvalidRequest``) before anything
is generated: images, invalid schemas, and fields of either API with no meaning here
(``ChatRequest.native``: ``logit_bias``, ``thinking`` ...).

Provider options (``providers.local.options`` in thriftgate.yaml, all optional): ``model_name`` (a model built
by ``thriftgate local build [--gguf PATH --name NAME]``, default ``smollm2-135m-instruct``; it is served with its
own tokenizer and chat template), ``model_dir`` (default: the settings' ``local_model_dir`` + ``/`` + model_name), ``variant`` ("default" = the manifest's choice),
``num_slots`` (8), ``max_seq_len`` (2048), ``speculative`` ("auto" | "ngram" | "draft" | "off"), ``threads`` (2),
``prefix_cache_mb`` (256), ``memory_budget_mb`` (none), ``default_temperature`` (0.2), ``default_top_p`` (0.9)
and ``default_max_tokens`` (256), used when a request sets none. Memory: the KV cache is preallocated for
``num_slots x max_seq_len`` positions (``ModelRunner.kv_bytes_per_token`` each: the cache is float16, 23,040
bytes for SmolLM2, 377 MB for 8 x 2,048) and
the prefix cache holds at most ``prefix_cache_mb``; with ``memory_budget_mb`` both count in that one total
(the prefix cache gets what the KV cache leaves, and a KV cache larger than the budget is refused at load).
The engine loads on the first request (in a worker thread, the event loop keeps serving), or at startup
with ``preload`` (false): ``/readyz`` then answers 503 until it has loaded. ``/readyz`` reports the engine's
state ("not loaded", "loading", "ready", "failed") under ``providers`` either way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import InvalidRequest, UpstreamError
from gateway.providers.base import Readiness, UpstreamRequest, UpstreamResponse
from gateway.providers.registry import ProviderContext, register_provider_kind
from gateway.types import (
    ChatRequest,
    ChatResponse,
    Choice,
    StopReason,
    StreamEvent,
    StreamStart,
    StreamStop,
    TextDelta,
    TextPart,
    ToolCallDelta,
    ToolCallPart,
    ToolCallStart,
    ToolResultPart,
    Usage,
    UsageReport,
)

if TYPE_CHECKING:
    from gateway.settings import ProviderSettings
    from local_engine.async_engine import AsyncLLMEngine, GenerationOutput
    from local_engine.sampling import SamplingParams
    from local_engine.tokenizer import Tokenizer

log = logging.getLogger(__name__)

MODEL_SUBDIR = "smollm2-135m-instruct"
MAX_CHOICES = 8


@dataclass(slots=True, frozen=True)
class SamplingDefaults:
    """Sampling used where the client sets none. SmolLM2's own generation config recommends temperature
    0.2 and top-p 0.9: at the APIs' default of 1.0 a 135M model rambles."""

    temperature: float = 0.2
    top_p: float = 0.9
    max_tokens: int = 256


@dataclass(slots=True)
class _Generation:
    """What one choice produced, accumulated from the engine's deltas."""

    text: str = ""
    finish_reason: str | None = None
    stop_sequence: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def add(self, out: GenerationOutput) -> None:
        self.text += out.text
        self.prompt_tokens = out.prompt_tokens
        self.completion_tokens = out.completion_tokens
        self.cached_tokens = out.cached_tokens
        if out.finished:
            self.finish_reason = out.finish_reason
            self.stop_sequence = out.stop_sequence


def _stop_reason(gen: _Generation) -> StopReason:
    if gen.finish_reason == "length":
        return StopReason.MAX_TOKENS
    if gen.stop_sequence is not None:
        return StopReason.STOP_SEQUENCE
    return StopReason.END


def _usage(prompt: int, cached: int, completion: int) -> Usage:
    return Usage(input_tokens=prompt - cached, cache_read_tokens=cached, output_tokens=completion)


DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@dataclass(slots=True, frozen=True)
class OutputPlan:
    """How a request's output is constrained: an llguidance grammar (None: free text), whether the output
    is a tool call (or, with "auto", possibly text), and what the model is told about it."""

    grammar: str | None = None
    tool_call: bool = False
    instructions: str = ""


def output_plan(req: ChatRequest) -> OutputPlan:
    """The constraint for ``req``'s tools / response_format. Raises ``InvalidRequest`` naming the field."""
    from local_engine.constrained import GrammarError, json_schema_grammar, tool_call_grammar

    choice = req.tool_choice.mode if req.tool_choice is not None else "auto"
    if req.tools and choice != "none":
        tools = req.tools
        if choice == "tool":
            tools = tuple(
                t for t in req.tools if req.tool_choice is not None and t.name == req.tool_choice.name
            )
            if not tools:
                raise InvalidRequest("tool_choice names a tool that is not in tools", param="tool_choice")
        try:
            grammar = tool_call_grammar([(t.name, t.parameters) for t in tools], allow_text=choice == "auto")
        except GrammarError as exc:
            raise InvalidRequest(f"The local model cannot use these tools: {exc}", param="tools") from None
        lines = [
            "You can call these tools. To call one, answer with only a JSON object "
            '{"name": <tool name>, "arguments": <the arguments as a JSON object>}.'
        ]
        for t in tools:
            desc = f": {t.description}" if t.description else ""
            lines.append(f"- {t.name}{desc}. Arguments schema: {json.dumps(dict(t.parameters or {}))}")
        if choice == "auto":
            lines.append("If no tool is needed, answer in plain text.")
        return OutputPlan(grammar, True, "\n".join(lines))
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return OutputPlan()
    if fmt.type == "json_schema" and fmt.schema is None:
        raise InvalidRequest("response_format json_schema needs a schema", param="response_format")
    schema = fmt.schema if fmt.type == "json_schema" else None
    try:
        grammar = json_schema_grammar(schema)
    except GrammarError as exc:
        raise InvalidRequest(
            f"The local model cannot use this schema: {exc}", param="response_format"
        ) from None
    if schema is None:
        return OutputPlan(grammar, False, "Answer with a JSON object.")
    return OutputPlan(grammar, False, f"Answer with JSON matching this schema: {json.dumps(dict(schema))}")


def _part_text(part: object, i: int) -> str:
    if isinstance(part, TextPart):
        return part.text
    if isinstance(part, ToolCallPart):
        return json.dumps({"name": part.name, "arguments": json.loads(part.arguments or "{}")})
    if isinstance(part, ToolResultPart):
        body = "".join(p.text for p in part.content if isinstance(p, TextPart))
        return f"Result of tool call {part.tool_call_id}{' (error)' if part.is_error else ''}: {body}"
    kind = type(part).__name__.removesuffix("Part").lower()
    raise InvalidRequest(
        f"The local model accepts text only; message {i} has a {kind} part", param="messages"
    )


def chat_messages(req: ChatRequest, plan: OutputPlan | None = None) -> list[dict[str, str]]:
    """The request as the chat template's messages (role, text), with the output plan's instructions in
    the system prompt. Raises ``InvalidRequest`` naming what the local model cannot take."""
    if req.native is not None and req.native.fields:
        name = next(iter(req.native.fields))
        raise InvalidRequest(f"The local model does not support '{name}'", param=name)
    plan = plan if plan is not None else output_plan(req)
    out: list[dict[str, str]] = []
    system = "".join(p.text for p in req.system)
    if plan.instructions:
        system = (system or DEFAULT_SYSTEM) + "\n\n" + plan.instructions
    if system:
        out.append({"role": "system", "content": system})
    for i, message in enumerate(req.messages):
        try:
            text = "".join(_part_text(part, i) for part in message.content)
        except ValueError:  # a tool call whose arguments are not JSON
            raise InvalidRequest(
                f"message {i} has a tool call whose arguments are not JSON", param="messages"
            ) from None
        out.append({"role": message.role, "content": text})
    return out


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """The local engine's queue and output counter at one moment (the dashboard samples it)."""

    waiting: int
    """Requests admitted by the engine and waiting for a slot."""
    running: int
    """Requests holding a slot (prefilling or decoding)."""
    generated_tokens: int
    """Tokens generated since the engine started (only grows)."""


class LocalProvider:
    """In-process ``ChatProvider`` over one ``AsyncLLMEngine``; never touches the network."""

    def __init__(self, name: str, options: Mapping[str, Any], default_model_root: str) -> None:
        self.name = name
        self.kind = "local"
        self._options = dict(options)
        subdir = str(self._options.get("model_name") or MODEL_SUBDIR)
        self._model_dir = Path(self._options.get("model_dir") or Path(default_model_root) / subdir)
        self._max_seq_len = int(self._options.get("max_seq_len", 2048))
        base = SamplingDefaults()
        self._defaults = SamplingDefaults(
            temperature=float(self._options.get("default_temperature", base.temperature)),
            top_p=float(self._options.get("default_top_p", base.top_p)),
            max_tokens=int(self._options.get("default_max_tokens", base.max_tokens)),
        )
        self._preload = _flag(self._options.get("preload", False))
        self._engine: AsyncLLMEngine | None = None
        self._tokenizer: Tokenizer | None = None
        self._lock = asyncio.Lock()
        self._loading = False
        self._load_error: str | None = None
        self._load_task: asyncio.Task[None] | None = None

    def readiness(self) -> Readiness:
        """ "ready" once the engine is loaded and running; "loading" while it loads; "failed" (with why)
        after a load failed; else "not loaded". It gates ``/readyz`` only with ``preload``."""
        if self._engine is not None and self._engine.running:
            return Readiness("ready", self._preload)
        if self._loading:
            return Readiness("loading", self._preload)
        if self._load_error is not None:
            return Readiness("failed", self._preload, self._load_error)
        return Readiness("not loaded", self._preload)

    def begin_loading(self) -> None:
        """With ``preload``, load the engine now in the background (``/readyz`` waits for it)."""
        if self._preload and self._load_task is None and self._engine is None:
            self._load_task = asyncio.get_running_loop().create_task(self._preload_engine())

    async def _preload_engine(self) -> None:
        try:
            await self.engine()
        except Exception:  # recorded for /readyz by engine(); a request retries the load
            log.exception("preloading the local engine failed")

    def prefix_cache_bytes(self) -> int:
        """The prefix cache's byte budget: ``prefix_cache_mb``, within what ``memory_budget_mb`` leaves
        after the KV cache. Raises ``UpstreamError`` when the KV cache alone exceeds the budget."""
        from local_engine.runner import ModelConfig, ModelRunner, load_manifest, manifest_kv_dtype

        o = self._options
        prefix = int(float(o.get("prefix_cache_mb", 256)) * (1 << 20))
        budget = o.get("memory_budget_mb")
        if budget is None:
            return prefix
        manifest = load_manifest(self._model_dir)
        config = ModelConfig.from_dict(manifest["config"])
        per_token = ModelRunner.kv_bytes_per_token(config, manifest_kv_dtype(manifest))
        kv = per_token * self._max_seq_len * int(o.get("num_slots", 8))
        left = int(float(budget) * (1 << 20)) - kv
        if left < 0:
            raise UpstreamError(
                f"the local engine's KV cache ({kv >> 20} MB for num_slots x max_seq_len) exceeds "
                f"memory_budget_mb ({budget}); lower num_slots or max_seq_len"
            )
        return min(prefix, left)

    def _check_built(self) -> None:
        if not (self._model_dir / "manifest.json").exists():
            raise UpstreamError(
                f"the local model is not built in {self._model_dir}: run `thriftgate local build`"
            )

    async def engine(self) -> AsyncLLMEngine:
        """The started engine, loading it on first use. Raises UpstreamError if the model is not built."""
        if self._engine is not None:
            return self._engine
        async with self._lock:
            if self._engine is None:
                self._loading = True
                try:
                    self._engine = await self._load()
                    self._load_error = None
                except Exception as exc:
                    self._load_error = f"{type(exc).__name__}: {exc}"
                    raise
                finally:
                    self._loading = False
                self._tokenizer = self._engine.tokenizer  # type: ignore[assignment]
        return self._engine

    async def _load(self) -> AsyncLLMEngine:
        self._check_built()
        from local_engine.async_engine import AsyncLLMEngine

        o = self._options
        engine = await asyncio.to_thread(
            AsyncLLMEngine.from_model_dir,
            self._model_dir,
            str(o.get("variant", "default")),
            num_slots=int(o.get("num_slots", 8)),
            max_seq_len=self._max_seq_len,
            speculative=o.get("speculative", "auto"),
            threads=int(o.get("threads", 2)),
            prefix_cache_bytes=self.prefix_cache_bytes(),
        )
        await engine.start()
        log.info("local engine started", extra={"model_dir": str(self._model_dir)})
        return engine

    def load(self) -> EngineLoad | None:
        """The engine's queue and output counter now; None before it has loaded. Reads only: lengths and
        a counter the engine's thread updates, each read atomically (so the three may be a step apart)."""
        engine = self._engine
        if engine is None:
            return None
        core = engine.engine
        scheduler = core.scheduler
        return EngineLoad(
            waiting=scheduler.num_waiting,
            running=scheduler.num_slots - scheduler.num_free_slots,
            generated_tokens=core.stats.generated_tokens,
        )

    async def tokenizer(self) -> Tokenizer:
        """The model's tokenizer (loaded alone, without the engine, when only counting)."""
        if self._tokenizer is None:
            self._check_built()
            from local_engine.tokenizer import Tokenizer

            self._tokenizer = await asyncio.to_thread(Tokenizer.load, self._model_dir)
        return self._tokenizer

    async def _prompt(self, req: ChatRequest, plan: OutputPlan | None = None) -> list[int]:
        tokenizer = await self.tokenizer()
        prompt = tokenizer.apply_chat_template(chat_messages(req, plan), add_generation_prompt=True)
        return tokenizer.encode(prompt)

    def _params(self, req: ChatRequest, prompt_tokens: int, grammar: str | None = None) -> SamplingParams:
        from local_engine.sampling import SamplingParams

        if not 1 <= req.n <= MAX_CHOICES:
            raise InvalidRequest(f"The local model serves n from 1 to {MAX_CHOICES}", param="n")
        s, d = req.sampling, self._defaults
        max_tokens = req.max_tokens if req.max_tokens is not None else d.max_tokens
        if max_tokens < 1:
            raise InvalidRequest("max_tokens must be a positive integer", param="max_tokens")
        if prompt_tokens + max_tokens > self._max_seq_len:
            raise InvalidRequest(
                f"the prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) exceeds the local "
                f"model's context of {self._max_seq_len} tokens",
                param="max_tokens",
            )
        try:
            return SamplingParams(
                max_tokens=max_tokens,
                temperature=d.temperature if s.temperature is None else s.temperature,
                top_p=d.top_p if s.top_p is None else s.top_p,
                top_k=s.top_k or 0,
                seed=s.seed,
                stop=tuple(x for x in req.stop if x),
                grammar=grammar,
            )
        except ValueError as exc:  # out-of-range values: SamplingParams names the field first
            raise InvalidRequest(str(exc), param=str(exc).split(" ", 1)[0]) from None

    async def complete(self, request: ChatRequest, model: str) -> ChatResponse:
        plan = output_plan(request)
        prompt_ids = await self._prompt(request, plan)
        params = self._params(request, len(prompt_ids), plan.grammar)
        engine = await self.engine()
        gens = await asyncio.gather(*(_collect(engine, prompt_ids, params) for _ in range(request.n)))
        first = gens[0]
        return ChatResponse(
            id=_new_id("chatcmpl-"),
            model=model,
            choices=tuple(_choice(g, plan.tool_call) for g in gens),
            usage=_usage(first.prompt_tokens, first.cached_tokens, sum(g.completion_tokens for g in gens)),
            created=int(time.time()),
        )

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamEvent]:
        plan = output_plan(request)
        prompt_ids = await self._prompt(request, plan)
        params = self._params(request, len(prompt_ids), plan.grammar)
        engine = await self.engine()
        return _events(engine, prompt_ids, params, request.n, model, plan.tool_call)

    async def count_tokens(self, request: ChatRequest, model: str) -> int:
        return len(await self._prompt(request))

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """The local model takes canonical requests only (the pipeline never sends it wire bytes)."""
        raise UpstreamError(
            f"the local provider serves chat requests only, not {request.method} {request.path}"
        )

    async def aclose(self) -> None:
        if self._load_task is not None:
            self._load_task.cancel()
            await asyncio.gather(self._load_task, return_exceptions=True)
            self._load_task = None
        if self._engine is not None:
            await self._engine.stop()
            self._engine = None


def _flag(value: object) -> bool:
    """A boolean option from YAML or the environment ("true"/"1"/"yes" and their opposites)."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def _choice(gen: _Generation, tool_call: bool) -> Choice:
    """A finished generation as a choice: a tool call when the output is one, else text."""
    if tool_call:
        from local_engine.constrained import ToolCallParser

        parser = ToolCallParser()
        events = parser.feed(gen.text) + parser.finish()
        if parser.name is not None and gen.finish_reason == "stop":
            arguments = "".join(text for kind, text in events if kind == "args")
            call = ToolCallPart(id=_new_id("call_"), name=parser.name, arguments=arguments)
            return Choice(content=(call,), stop_reason=StopReason.TOOL_USE)
    return Choice(
        content=(TextPart(gen.text),), stop_reason=_stop_reason(gen), stop_sequence=gen.stop_sequence
    )


async def _collect(engine: AsyncLLMEngine, prompt_ids: list[int], params: SamplingParams) -> _Generation:
    gen = _Generation()
    async for out in engine.generate(prompt_ids, params):
        gen.add(out)
    return gen


async def _merged(
    engine: AsyncLLMEngine, prompt_ids: list[int], params: SamplingParams, n: int
) -> AsyncGenerator[tuple[int, GenerationOutput], None]:
    """The n generations' outputs, interleaved as they are produced; closing it aborts them all."""
    if n == 1:
        async for out in engine.generate(prompt_ids, params):
            yield 0, out
        return
    queue: asyncio.Queue[tuple[int, GenerationOutput] | BaseException | None] = asyncio.Queue()

    async def pump(index: int) -> None:
        try:
            async for out in engine.generate(prompt_ids, params):
                await queue.put((index, out))
        except BaseException as exc:  # re-raised in the consumer
            await queue.put(exc)
            raise
        finally:
            await queue.put(None)

    tasks = [asyncio.create_task(pump(i)) for i in range(n)]
    try:
        remaining = n
        while remaining:
            item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _events(
    engine: AsyncLLMEngine,
    prompt_ids: list[int],
    params: SamplingParams,
    n: int,
    model: str,
    tool_call: bool = False,
) -> AsyncGenerator[StreamEvent, None]:
    from local_engine.constrained import ToolCallParser

    gens = [_Generation() for _ in range(n)]
    parsers = [ToolCallParser() for _ in range(n)] if tool_call else None
    yield StreamStart(id=_new_id("chatcmpl-"), model=model, created=int(time.time()))
    outputs = _merged(engine, prompt_ids, params, n)
    try:
        async for index, out in outputs:
            gen = gens[index]
            gen.add(out)
            if parsers is None:
                if out.text:
                    yield TextDelta(out.text, index=index)
                if out.finished:
                    yield StreamStop(_stop_reason(gen), gen.stop_sequence, index=index)
                continue
            parser = parsers[index]
            events = parser.feed(out.text) + (parser.finish() if out.finished else [])
            for kind, text in events:
                if kind == "text":
                    yield TextDelta(text, index=index)
                elif kind == "start":
                    yield ToolCallStart(id=_new_id("call_"), name=text, index=index)
                else:
                    yield ToolCallDelta(text, index=index)
            if out.finished:
                called = parser.name is not None and gen.finish_reason == "stop"
                reason = StopReason.TOOL_USE if called else _stop_reason(gen)
                yield StreamStop(reason, gen.stop_sequence, index=index)
    finally:
        await outputs.aclose()
    first = gens[0]
    yield UsageReport(
        _usage(first.prompt_tokens, first.cached_tokens, sum(g.completion_tokens for g in gens))
    )


def _factory(name: str, settings: ProviderSettings, context: ProviderContext) -> LocalProvider:
    options = settings.options
    root = str(context.extras.get("local_model_dir", "./data/models"))
    return LocalProvider(name, options, root)


register_provider_kind("local", _factory)
