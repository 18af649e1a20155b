"""The asyncio face of the engine: concurrent `generate()` streams over one step loop thread.

One dedicated thread owns the `LLMEngine` and runs its step loop (onnxruntime releases the GIL, so
the event loop stays responsive); `generate()` hands requests and aborts to that thread through a
command list and receives each step's outputs through `loop.call_soon_threadsafe`. All concurrent
streams share the scheduler, so they are batched continuously. Leaving a stream early (closing the
iterator, or cancelling the task that consumes it) aborts its request, which frees its slot.

Exceptions: `EngineError` (base) ← `EngineStopped` (the engine stopped or its loop failed while a
stream was open; the loop's own error is chained as `__cause__`).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from pathlib import Path

from local_engine.engine import LLMEngine, RequestOutput, SpeculativeMode
from local_engine.protocols import TokenizerLike
from local_engine.sampling import SamplingParams, TokenLogprob


class EngineError(Exception):
    """Base of the engine's own errors."""


class EngineStopped(EngineError):
    """The engine is not running (never started, stopped, or its step loop failed)."""


@dataclass(slots=True, frozen=True)
class GenerationOutput:
    """One streamed piece of a generation: deltas (`text`, `token_ids`, `logprobs`) and running totals."""

    request_id: str
    text: str
    token_ids: list[int]
    finished: bool
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    logprobs: list[TokenLogprob] | None = None
    stop_sequence: str | None = None

    @classmethod
    def from_request_output(cls, out: RequestOutput) -> GenerationOutput:
        return cls(
            request_id=out.request_id,
            text=out.new_text,
            token_ids=list(out.new_token_ids),
            finished=out.finished,
            finish_reason=out.finish_reason,
            prompt_tokens=out.prompt_tokens,
            completion_tokens=out.completion_tokens,
            cached_tokens=out.cached_tokens,
            logprobs=None if out.logprobs is None else list(out.logprobs),
            stop_sequence=out.stop_sequence,
        )


_Item = RequestOutput | BaseException


class AsyncLLMEngine:
    """Runs an `LLMEngine` in its own thread and streams its outputs to asyncio tasks."""

    def __init__(self, engine: LLMEngine, tokenizer: TokenizerLike) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self._cond = threading.Condition()
        self._commands: list[tuple[str, str, list[int] | None, SamplingParams | None]] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._streams: dict[str, asyncio.Queue[_Item]] = {}
        self._failure: BaseException | None = None
        self._ids = itertools.count()

    @classmethod
    def from_model_dir(
        cls,
        model_dir: Path,
        variant: str = "default",
        *,
        num_slots: int = 8,
        max_seq_len: int = 4096,
        speculative: SpeculativeMode = "auto",
        threads: int = 2,
        prefix_cache_bytes: int = 256 << 20,
        draft_variant: str = "int4",
    ) -> AsyncLLMEngine:
        """Load a converted model directory (see `local_engine.convert`). A draft model (the
        `draft_variant`, INT4 by default, with its own slots) is loaded only for speculative="draft":
        on CPU it was measured slower than plain decoding, so "auto" uses prompt lookup."""
        from local_engine.runner import ModelRunner
        from local_engine.tokenizer import Tokenizer

        tokenizer = Tokenizer.load(Path(model_dir))
        runner = ModelRunner(
            Path(model_dir), variant, num_slots=num_slots, max_seq_len=max_seq_len, threads=threads
        )
        draft = None
        if speculative == "draft":
            draft = ModelRunner(
                Path(model_dir), draft_variant, num_slots=num_slots, max_seq_len=max_seq_len, threads=threads
            )
        from local_engine.constrained import GrammarCompiler

        def compiler() -> GrammarCompiler:
            return GrammarCompiler(tokenizer.hf.to_str(), runner.vocab_size, tokenizer.stop_ids)

        engine = LLMEngine(
            runner,
            tokenizer,
            num_slots=num_slots,
            prefix_cache_bytes=prefix_cache_bytes,
            speculative=speculative,
            draft_runner=draft,
            grammar_compiler=compiler,
        )
        return cls(engine, tokenizer)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    async def start(self) -> None:
        """Start the step loop thread (idempotent)."""
        if self.running:
            return
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        self._failure = None
        self._thread = threading.Thread(target=self._run, name="llm-engine-step-loop", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Stop the step loop after its current step; open streams end with `EngineStopped`."""
        thread = self._thread
        if thread is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify()
        await asyncio.to_thread(thread.join)
        self._thread = None
        self._commands.clear()
        for seq in (*self.engine.scheduler.running, *self.engine.scheduler.waiting):
            self.engine.abort(seq.request_id)  # the loop thread is gone: this thread owns the engine
        self._fail_streams(EngineStopped("the engine was stopped"))

    async def generate(
        self, prompt: str | Sequence[int], params: SamplingParams, request_id: str | None = None
    ) -> AsyncGenerator[GenerationOutput, None]:
        """Stream a generation as it is decoded; the last item has `finished` set.

        A string prompt is encoded as is (apply the chat template first). Raises `ValueError` for an
        invalid prompt and `EngineStopped` if the engine stops meanwhile. Closing the iterator early
        or cancelling the consuming task aborts the request.
        """
        if not self.running:
            raise EngineStopped("the engine is not running; call start() first")
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        rid = request_id if request_id is not None else f"req-{next(self._ids)}"
        if rid in self._streams:
            raise ValueError(f"request {rid!r} is already streaming")
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._streams[rid] = queue
        self._submit(("add", rid, ids, params))
        finished = False
        try:
            while not finished:
                item = await queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finished
                yield GenerationOutput.from_request_output(item)
        finally:
            self._streams.pop(rid, None)
            if not finished:
                self._submit(("abort", rid, None, None))

    # ---- the loop thread ----
    def _submit(self, command: tuple[str, str, list[int] | None, SamplingParams | None]) -> None:
        with self._cond:
            self._commands.append(command)
            self._cond.notify()

    def _run(self) -> None:
        engine = self.engine
        try:
            while True:
                with self._cond:
                    while not (self._commands or self._stopping or engine.has_unfinished()):
                        self._cond.wait()
                    if self._stopping:
                        return
                    commands, self._commands = self._commands, []
                for kind, rid, ids, params in commands:
                    if kind == "abort":
                        engine.abort(rid)
                        continue
                    assert ids is not None and params is not None
                    try:
                        engine.add_request(rid, ids, params)
                    except ValueError as exc:
                        self._deliver_threadsafe(rid, exc)
                if engine.has_unfinished():
                    for out in engine.step():
                        self._deliver_threadsafe(out.request_id, out)
        except BaseException as exc:  # the loop died: every open stream must hear about it
            self._failure = exc
            failure = EngineStopped("the engine's step loop failed")
            failure.__cause__ = exc
            assert self._loop is not None
            try:
                self._loop.call_soon_threadsafe(self._fail_streams, failure)
            except RuntimeError:  # the event loop is closed: nobody is listening
                pass

    def _deliver_threadsafe(self, rid: str, item: _Item) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._deliver, rid, item)

    def _deliver(self, rid: str, item: _Item) -> None:
        queue = self._streams.get(rid)
        if queue is not None:  # else the stream was closed and its request aborted
            queue.put_nowait(item)

    def _fail_streams(self, error: EngineError) -> None:
        for queue in self._streams.values():
            queue.put_nowait(error)
