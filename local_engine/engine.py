"""The synchronous engine: `step()` = schedule → run the model → update from its output.

Exact speculation: kernels sum in another order for one position than for several (MLAS's M=1
GEMM path), so a plain one-token decode step and a verification forward give logits that differ in
the last bits, and greedy text could differ at a near-tie. With speculation on (or ``exact_decode``),
every one-sequence decode step is padded to two positions (``Runner.forward(min_positions=2)``),
which makes its logits bit-identical to the verification forward's: speculative greedy output equals
plain greedy output token for token. Our own kernels (``local_engine.kernels``, the int4-exact variant)
need no padding: one position gives what it gives among several (``ModelRunner.position_invariant``).
A batched decode of several sequences is not padded (its rows already go through the M>1 kernels of
the linear layers; attention stays per sequence).

Speculation policy: only a decode batch of exactly one sequence speculates. With two or more
sequences decoding, one batched forward already spreads the cost of reading the weights over
several tokens, and per-sequence verification forwards would serialise them, so the engine runs a
plain batched decode instead. In "auto" mode the batch-1 speculation is further governed by a
`SpeculationController` that switches it off while it does not pay for itself; "ngram" and
"draft" force it on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from local_engine.constrained import Constraint, GrammarCompiler
from local_engine.prefix_cache import PrefixCache
from local_engine.protocols import Runner, TokenizerLike
from local_engine.sampling import (
    SamplingParams,
    TextStream,
    TokenLogprob,
    logits_to_probs,
    make_rng,
    sample_logits,
    token_logprob,
)
from local_engine.scheduler import DecodeItem, PrefillChunk, Scheduler, SequenceUpdate
from local_engine.scheduler import Sequence as Seq
from local_engine.speculative import (
    AdaptiveDraftLength,
    Drafter,
    DraftModelDrafter,
    NgramDrafter,
    SpeculationController,
    verify_draft,
)

SpeculativeMode = Literal["off", "ngram", "draft", "auto"]


@dataclass(slots=True, frozen=True)
class RequestOutput:
    """What one step produced for one request: deltas since the previous output, and totals."""

    request_id: str
    new_token_ids: tuple[int, ...]
    new_text: str
    finished: bool
    finish_reason: str | None  # "stop", "length" or "abort" once finished
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    logprobs: tuple[TokenLogprob, ...] | None = None
    stop_sequence: str | None = None  # the stop string that finished the request, if one did


@dataclass(slots=True)
class EngineStats:
    steps: int = 0
    prefill_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    speculative_steps: int = 0
    drafted_tokens: int = 0
    accepted_tokens: int = 0

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else None


@dataclass(slots=True)
class _RequestState:
    seq: Seq
    rng: np.random.Generator
    text: TextStream
    draft_len: AdaptiveDraftLength
    logprobs: list[TokenLogprob] = field(default_factory=list)
    constraint: Constraint | None = None


class LLMEngine:
    """Continuous batching over one runner, with a prefix cache and speculative decoding.

    Not thread-safe: one thread calls add_request / abort / step (the async engine's loop thread).
    """

    def __init__(
        self,
        runner: Runner,
        tokenizer: TokenizerLike,
        *,
        num_slots: int | None = None,
        prefix_cache_bytes: int = 256 << 20,
        block_size: int = 32,
        speculative: SpeculativeMode = "auto",
        draft_runner: Runner | None = None,
        max_prefill_chunk: int = 512,
        clock: Callable[[], float] = time.perf_counter,
        grammar_compiler: Callable[[], GrammarCompiler] | None = None,
        exact_decode: bool | None = None,
    ) -> None:
        num_slots = runner.num_slots if num_slots is None else num_slots
        if not 1 <= num_slots <= runner.num_slots:
            raise ValueError(f"num_slots must be in [1, {runner.num_slots}], got {num_slots}")
        self.runner = runner
        self.tokenizer = tokenizer
        self.scheduler = Scheduler(num_slots, max_prefill_chunk=max_prefill_chunk)
        self.prefix_cache = PrefixCache(capacity_bytes=prefix_cache_bytes, block_size=block_size)
        self.stats = EngineStats()
        self.clock = clock
        self.speculative = speculative
        self.drafter: Drafter | None = None
        if speculative == "draft" and draft_runner is None:
            raise ValueError('speculative="draft" needs a draft_runner')
        if draft_runner is not None and speculative in ("draft", "auto"):
            if draft_runner.num_slots < num_slots or draft_runner.vocab_size != runner.vocab_size:
                raise ValueError("the draft runner needs as many slots and the same vocabulary as the target")
            self.drafter = DraftModelDrafter(draft_runner)
        elif speculative in ("ngram", "auto"):
            self.drafter = NgramDrafter()
        self.controller = SpeculationController() if speculative == "auto" else None
        # A one-sequence decode step padded to two positions takes the kernels a verification forward
        # takes (see ModelRunner.forward), so speculative greedy output equals plain greedy exactly.
        exact = speculative != "off" if exact_decode is None else exact_decode
        # (not needed where one position already gives what several give: ModelRunner.position_invariant)
        self.decode_positions = 2 if exact and not getattr(runner, "position_invariant", False) else 1
        self._states: dict[str, _RequestState] = {}
        self._aborted: list[RequestOutput] = []
        self._compiler_factory = grammar_compiler
        self._compiler: GrammarCompiler | None = None

    def _constraint(self, grammar: str) -> Constraint:
        """A fresh constraint for ``grammar`` (the compiler is built on first use, about a second)."""
        if self._compiler is None:
            if self._compiler_factory is None:
                raise ValueError("this engine has no grammar compiler: constrained decoding is unavailable")
            self._compiler = self._compiler_factory()
        return self._compiler.constraint(grammar)

    # ---- requests ----
    def add_request(self, request_id: str, prompt_token_ids: Sequence[int], params: SamplingParams) -> None:
        """Queue a request. Raises ValueError for an empty or too long prompt or a duplicate id."""
        prompt = [int(t) for t in prompt_token_ids]
        if not prompt:
            raise ValueError("the prompt is empty")
        if len(prompt) >= self.runner.max_seq_len:
            raise ValueError(
                f"the prompt has {len(prompt)} tokens; the context holds {self.runner.max_seq_len}"
            )
        if not all(0 <= t < self.runner.vocab_size for t in prompt):
            raise ValueError("the prompt has a token id outside the vocabulary")
        if request_id in self._states:
            raise ValueError(f"request {request_id!r} already exists")
        constraint = None
        if params.grammar is not None:
            constraint = self._constraint(params.grammar)
            constraint.close_within = max(8, min(constraint.close_within, params.max_tokens // 4))
        seq = Seq(request_id, prompt, params)
        self.scheduler.add(seq)
        self._states[request_id] = _RequestState(
            seq=seq,
            rng=make_rng(params.seed),
            text=TextStream(self.tokenizer.decode, params.stop),
            draft_len=AdaptiveDraftLength(),
            constraint=constraint,
        )

    def abort(self, request_id: str) -> bool:
        """Stop a request now: its slot is freed at once, and the next `step` reports it finished
        with reason "abort". Returns False if it was unknown or already finished."""
        seq = self.scheduler.abort(request_id)
        state = self._states.pop(request_id, None)
        if seq is None or state is None:
            return False
        if self.drafter is not None:
            self.drafter.release(request_id)
        self._aborted.append(self._output(state, (), finished=True))
        return True

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished() or bool(self._aborted)

    @property
    def speculation_enabled(self) -> bool:
        return self.drafter is not None and (self.controller is None or self.controller.enabled)

    # ---- the step ----
    def step(self) -> list[RequestOutput]:
        """Run one scheduling step and return the outputs of the requests that made progress."""
        outputs, self._aborted = self._aborted, []
        for seq in self.scheduler.admit():
            self._load_cached_prefix(seq)
        work = self.scheduler.schedule()
        if work.is_empty:
            return outputs
        self.stats.steps += 1
        updates: list[SequenceUpdate] = []
        if work.prefill is not None:
            updates.append(self._prefill(work.prefill))
        if work.decode:
            updates.extend(self._decode(work.decode))
        slots = {u.request_id: self._states[u.request_id].seq.slot for u in updates}
        self.scheduler.update_from_output(updates)
        for update in updates:
            state = self._states[update.request_id]
            if update.new_token_ids or update.finish_reason:
                outputs.append(self._output(state, update.new_token_ids, update.finish_reason is not None))
            if update.finish_reason is not None:
                self._finish(state, slots[update.request_id])
        return outputs

    def _load_cached_prefix(self, seq: Seq) -> None:
        assert seq.slot is not None
        num_cached, segments = self.prefix_cache.match(seq.prompt_token_ids)
        pos = 0
        for segment in segments:
            self.runner.write_kv(seq.slot, pos, segment)
            pos += segment.num_tokens
        assert pos == num_cached
        seq.num_computed_tokens = seq.num_cached_tokens = num_cached
        self.stats.cached_tokens += num_cached

    def _prefill(self, chunk: PrefillChunk) -> SequenceUpdate:
        state = self._states[chunk.request_id]
        logits = self.runner.forward([chunk.slot], [chunk.token_ids], [chunk.start])  # [1, vocab]
        computed = chunk.start + len(chunk.token_ids)
        self.stats.prefill_tokens += len(chunk.token_ids)
        if not chunk.completes_prompt:
            return SequenceUpdate(chunk.request_id, computed)
        self.prefix_cache.insert(state.seq.prompt_token_ids, computed, self.runner, chunk.slot)
        token = self._sample(state, logits[0])
        kept, reason = self._append(state, [token], logits)
        return SequenceUpdate(chunk.request_id, computed, kept, reason)

    def _decode(self, items: tuple[DecodeItem, ...]) -> list[SequenceUpdate]:
        speculate = (
            len(items) == 1
            and self.drafter is not None
            and self._states[items[0].request_id].constraint is None  # masks are per token
        )
        if speculate and self.controller is not None:
            speculate = self.controller.use_speculation()
        start = self.clock()
        updates = [self._speculative_decode(items[0])] if speculate else self._batched_decode(items)
        if len(items) == 1 and self.controller is not None:
            self.controller.record(speculate, self.clock() - start, len(updates[0].new_token_ids))
        return updates

    def _batched_decode(self, items: tuple[DecodeItem, ...]) -> list[SequenceUpdate]:
        logits = self.runner.forward(
            [i.slot for i in items],
            [[i.token_id] for i in items],
            [i.past_len for i in items],
            min_positions=self.decode_positions if len(items) == 1 else 1,
        )  # [batch, vocab]
        updates = []
        for item, row in zip(items, logits, strict=True):
            state = self._states[item.request_id]
            kept, reason = self._append(state, [self._sample(state, row)], row[None])
            updates.append(SequenceUpdate(item.request_id, item.past_len + 1, kept, reason))
        return updates

    def _speculative_decode(self, item: DecodeItem) -> SequenceUpdate:
        """Draft k tokens, verify them in one target forward over k+1 positions, keep the accepted
        prefix plus one token; the target's KV past the kept tokens is abandoned (rolled back)."""
        assert self.drafter is not None
        state = self._states[item.request_id]
        seq, params = state.seq, state.seq.params
        room = self.runner.max_seq_len - item.past_len - 1  # positions left after the last token
        k = min(state.draft_len.k, params.max_tokens - len(seq.output_token_ids) - 1, room)
        draft = (
            self.drafter.propose(item.request_id, item.slot, seq.token_ids, k, params, state.rng)
            if k > 0
            else None
        )
        if draft is None or not draft.tokens:
            return self._batched_decode((item,))[0]
        tokens = [item.token_id, *draft.tokens]
        logits = self.runner.forward([item.slot], [tokens], [item.past_len], all_logits=True)  # [k+1, vocab]
        target_probs = logits_to_probs(logits, params.temperature, params.top_k, params.top_p)
        new = verify_draft(draft.tokens, target_probs, draft.probs, state.rng)
        num_accepted = len(new) - 1
        self.stats.speculative_steps += 1
        self.stats.drafted_tokens += len(draft.tokens)
        self.stats.accepted_tokens += num_accepted
        state.draft_len.update(len(draft.tokens), num_accepted)
        self.drafter.accepted(item.request_id, seq.num_tokens + num_accepted)
        kept, reason = self._append(state, new, logits)
        return SequenceUpdate(item.request_id, item.past_len + len(kept), kept, reason)

    # ---- sampling and stopping ----
    def _sample(self, state: _RequestState, logits: np.ndarray) -> int:
        if state.constraint is None:
            return sample_logits(logits, state.seq.params, state.rng)
        seq = state.seq
        remaining = min(
            seq.params.max_tokens - len(seq.output_token_ids), self.runner.max_seq_len - seq.num_tokens
        )
        token = sample_logits(state.constraint.apply(logits, remaining), seq.params, state.rng)
        state.constraint.advance(token)
        return token

    def _append(
        self, state: _RequestState, tokens: list[int], logits: np.ndarray
    ) -> tuple[tuple[int, ...], str | None]:
        """Check new tokens one by one against the stop conditions; returns the ones kept (up to and
        including a stop token) and the finish reason. `logits[i]` produced `tokens[i]`. Mutates
        the request's text stream and logprobs."""
        seq, params = state.seq, state.seq.params
        stop_ids = set(params.stop_token_ids)
        if not params.ignore_eos:
            stop_ids |= self.tokenizer.stop_ids
        kept: list[int] = []
        reason = None
        for token, row in zip(tokens, logits, strict=False):
            kept.append(token)
            if params.logprobs is not None:
                state.logprobs.append(token_logprob(row, token, params.logprobs))
            if token in stop_ids or state.text.push(token):
                reason = "stop"
            elif state.constraint is not None and state.constraint.done:
                reason = "stop"  # the grammar is complete: only a stop token could follow
            elif (
                len(seq.output_token_ids) + len(kept) >= params.max_tokens
                or seq.num_tokens + len(kept) >= self.runner.max_seq_len
            ):
                reason = "length"
            if reason is not None:
                break
        self.stats.generated_tokens += len(kept)
        return tuple(kept), reason

    def _output(self, state: _RequestState, new_tokens: tuple[int, ...], finished: bool) -> RequestOutput:
        seq = state.seq
        if finished:
            state.text.flush()
        logprobs = None
        if seq.params.logprobs is not None:
            logprobs, state.logprobs = tuple(state.logprobs), []
        return RequestOutput(
            request_id=seq.request_id,
            new_token_ids=new_tokens,
            new_text=state.text.pop_delta(final=finished),
            finished=finished,
            finish_reason=seq.finish_reason if finished else None,
            prompt_tokens=seq.num_prompt_tokens,
            completion_tokens=len(seq.output_token_ids),
            cached_tokens=seq.num_cached_tokens,
            logprobs=logprobs,
            stop_sequence=state.text.matched if finished else None,
        )

    def _finish(self, state: _RequestState, slot: int | None) -> None:
        seq = state.seq
        del self._states[seq.request_id]
        if slot is not None:
            # The freed slot is reused only at the next admission, so its KV is still intact: keep
            # the generated text's blocks too (a chat's next turn starts with this one).
            self.prefix_cache.insert(seq.token_ids, seq.num_computed_tokens, self.runner, slot)
        if self.drafter is not None:
            self.drafter.release(seq.request_id)
