"""The ``local`` provider kind: ThriftGate's own inference engine (``local_engine``) as an in-process upstream.

It speaks the same wire APIs as the hosted upstreams — ``/v1/chat/completions`` (OpenAI) and ``/v1/messages``
(Anthropic), JSON and SSE, with usage and stop reasons — so the surfaces treat it like any other provider:
the request bytes go in, the API's own response bytes (or SSE events) come out, usage is read from them.
Every request shares one ``AsyncLLMEngine``, so concurrent clients are batched continuously.

Provider options (``providers.local.options`` in thriftgate.yaml, all optional): ``model_dir`` (default: the
settings' ``local_model_dir`` + ``/smollm2-135m-instruct``), ``variant`` ("default" = the manifest's choice),
``num_slots`` (8), ``max_seq_len`` (4096), ``speculative`` ("auto" | "ngram" | "draft" | "off"), ``threads`` (2),
``default_temperature`` (0.2) and ``default_top_p`` (0.9), used when a request sets none.
The engine loads on the first request (in a worker thread, the event loop keeps serving).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import orjson

from gateway.errors import UpstreamError
from gateway.providers.base import UpstreamRequest, UpstreamResponse
from gateway.providers.local_wire import (
    Choice,
    LocalRequest,
    SamplingDefaults,
    WireError,
    anthropic_message_start,
    anthropic_stop,
    anthropic_usage,
    error_body,
    new_id,
    now,
    openai_chunk,
    openai_finish,
    openai_usage,
    parse_anthropic_messages,
    parse_openai_chat,
    render_anthropic_message,
    render_openai_completion,
)
from gateway.providers.registry import ProviderContext, register_provider_kind
from gateway.sse import encode_event

if TYPE_CHECKING:
    from gateway.settings import ProviderSettings
    from local_engine.async_engine import AsyncLLMEngine, GenerationOutput
    from local_engine.tokenizer import Tokenizer

log = logging.getLogger(__name__)

MODEL_SUBDIR = "smollm2-135m-instruct"
_JSON = [("content-type", "application/json")]
_SSE = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]


class LocalProvider:
    """In-process provider over one ``AsyncLLMEngine``; ``send`` never touches the network."""

    def __init__(self, name: str, options: Mapping[str, Any], default_model_root: str) -> None:
        self.name = name
        self.kind = "local"
        self._options = dict(options)
        self._model_dir = Path(self._options.get("model_dir") or Path(default_model_root) / MODEL_SUBDIR)
        self._max_seq_len = int(self._options.get("max_seq_len", 4096))
        base = SamplingDefaults()
        self._defaults = SamplingDefaults(
            temperature=float(self._options.get("default_temperature", base.temperature)),
            top_p=float(self._options.get("default_top_p", base.top_p)),
        )
        self._engine: AsyncLLMEngine | None = None
        self._lock = asyncio.Lock()

    async def engine(self) -> AsyncLLMEngine:
        """The started engine, loading it on first use. Raises UpstreamError if the model is not built."""
        if self._engine is not None:
            return self._engine
        async with self._lock:
            if self._engine is None:
                if not (self._model_dir / "manifest.json").exists():
                    raise UpstreamError(
                        f"the local model is not built in {self._model_dir}: run `thriftgate local build`"
                    )
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
                )
                await engine.start()
                log.info("local engine started", extra={"model_dir": str(self._model_dir)})
                self._engine = engine
        return self._engine

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        path = request.path.rstrip("/")
        if request.method != "POST" or path not in ("/v1/chat/completions", "/v1/messages"):
            api = "anthropic" if path.startswith("/v1/messages") else "openai"
            body = error_body(api, 404, f"the local model does not serve {request.method} {request.path}")
            return UpstreamResponse(404, list(_JSON), body, None)
        api = "openai" if path == "/v1/chat/completions" else "anthropic"
        try:
            data = orjson.loads(request.body or b"")
            if not isinstance(data, dict):
                raise WireError("the body must be a JSON object")
            parse = parse_openai_chat if api == "openai" else parse_anthropic_messages
            req = parse(data, self._defaults)
        except orjson.JSONDecodeError:
            return UpstreamResponse(
                400, list(_JSON), error_body(api, 400, "the body is not valid JSON"), None
            )
        except WireError as exc:
            return UpstreamResponse(400, list(_JSON), error_body(api, 400, exc.message, exc.param), None)

        engine = await self.engine()
        tokenizer = cast("Tokenizer", engine.tokenizer)
        prompt = tokenizer.apply_chat_template(req.messages, add_generation_prompt=True)
        prompt_ids = tokenizer.encode(prompt)
        if len(prompt_ids) + req.params.max_tokens > self._max_seq_len:
            message = (
                f"the prompt ({len(prompt_ids)} tokens) plus max_tokens ({req.params.max_tokens}) exceeds the "
                f"local model's context of {self._max_seq_len} tokens"
            )
            return UpstreamResponse(400, list(_JSON), error_body(api, 400, message, "max_tokens"), None)

        if not req.stream:
            choices = await asyncio.gather(*(_collect(engine, prompt_ids, req) for _ in range(req.n)))
            if api == "openai":
                body = render_openai_completion(req, choices, new_id("chatcmpl-"), now())
            else:
                body = render_anthropic_message(req, choices[0], new_id("msg_"))
            return UpstreamResponse(200, list(_JSON), body, None)

        stream = (
            _openai_stream(engine, prompt_ids, req)
            if api == "openai"
            else _anthropic_stream(engine, prompt_ids, req)
        )
        return UpstreamResponse(200, list(_SSE), None, stream, closer=stream.aclose)

    async def aclose(self) -> None:
        if self._engine is not None:
            await self._engine.stop()
            self._engine = None


async def _collect(engine: AsyncLLMEngine, prompt_ids: list[int], req: LocalRequest) -> Choice:
    choice = Choice()
    async for out in engine.generate(prompt_ids, req.params):
        _accumulate(choice, out)
    return choice


def _accumulate(choice: Choice, out: GenerationOutput) -> None:
    choice.text += out.text
    choice.prompt_tokens = out.prompt_tokens
    choice.completion_tokens = out.completion_tokens
    choice.cached_tokens = out.cached_tokens
    if out.finished:
        choice.finish_reason = out.finish_reason
        choice.stop_sequence = out.stop_sequence


async def _merged(
    engine: AsyncLLMEngine, prompt_ids: list[int], req: LocalRequest
) -> AsyncGenerator[tuple[int, GenerationOutput], None]:
    """The n generations' outputs, interleaved as they are produced; closing it aborts them all."""
    if req.n == 1:
        async for out in engine.generate(prompt_ids, req.params):
            yield 0, out
        return
    queue: asyncio.Queue[tuple[int, GenerationOutput] | BaseException | None] = asyncio.Queue()

    async def pump(index: int) -> None:
        try:
            async for out in engine.generate(prompt_ids, req.params):
                await queue.put((index, out))
        except BaseException as exc:  # re-raised in the consumer
            await queue.put(exc)
            raise
        finally:
            await queue.put(None)

    tasks = [asyncio.create_task(pump(i)) for i in range(req.n)]
    try:
        remaining = req.n
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


async def _openai_stream(
    engine: AsyncLLMEngine, prompt_ids: list[int], req: LocalRequest
) -> AsyncGenerator[bytes, None]:
    cid, created = new_id("chatcmpl-"), now()
    choices = [Choice() for _ in range(req.n)]
    yield b"".join(
        openai_chunk(
            req,
            cid,
            created,
            [
                {
                    "index": i,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
        )
        for i in range(req.n)
    )
    outputs = _merged(engine, prompt_ids, req)
    try:
        async for index, out in outputs:
            _accumulate(choices[index], out)
            if out.text:
                delta = {
                    "index": index,
                    "delta": {"content": out.text},
                    "logprobs": None,
                    "finish_reason": None,
                }
                yield openai_chunk(req, cid, created, [delta])
            if out.finished:
                end = {
                    "index": index,
                    "delta": {},
                    "logprobs": None,
                    "finish_reason": openai_finish(out.finish_reason),
                }
                yield openai_chunk(req, cid, created, [end])
    finally:
        await outputs.aclose()
    if req.include_usage:
        usage = openai_usage(
            choices[0].prompt_tokens, sum(c.completion_tokens for c in choices), choices[0].cached_tokens
        )
        yield openai_chunk(req, cid, created, [], usage)
    yield b"data: [DONE]\n\n"


async def _anthropic_stream(
    engine: AsyncLLMEngine, prompt_ids: list[int], req: LocalRequest
) -> AsyncGenerator[bytes, None]:
    mid = new_id("msg_")
    choice = Choice()
    started = False
    outputs = _merged(engine, prompt_ids, req)
    try:
        async for _, out in outputs:
            _accumulate(choice, out)
            if not started:
                started = True
                yield anthropic_message_start(req, mid, out.prompt_tokens, out.cached_tokens)
                yield encode_event(
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "text", "text": ""},
                    },
                    "content_block_start",
                )
                yield encode_event({"type": "ping"}, "ping")
            if out.text:
                yield encode_event(
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": out.text},
                    },
                    "content_block_delta",
                )
    finally:
        await outputs.aclose()
    yield encode_event({"type": "content_block_stop", "index": 0}, "content_block_stop")
    stop_reason, stop_sequence = anthropic_stop(choice)
    yield encode_event(
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
            "usage": anthropic_usage(choice.prompt_tokens, choice.completion_tokens, choice.cached_tokens),
        },
        "message_delta",
    )
    yield encode_event({"type": "message_stop"}, "message_stop")


def _factory(name: str, settings: ProviderSettings, context: ProviderContext) -> LocalProvider:
    options = settings.options
    root = str(context.extras.get("local_model_dir", "./data/models"))
    return LocalProvider(name, options, root)


register_provider_kind("local", _factory)
