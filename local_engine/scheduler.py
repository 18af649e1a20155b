"""Continuous batching: which sequences run this step, and how much of each.

Pure bookkeeping, no model. The KV resource is the slot: a sequence holds one runner slot from
admission until it finishes or is aborted. Each step (`schedule`) admits waiting requests (FIFO)
while slots are free, schedules at most one prefill chunk of at most `max_prefill_chunk` tokens
(chunked prefill, so a long prompt never stalls the running decodes for long), and one batched
decode of every running sequence that is past its prefill. The engine runs the model and reports
back with `update_from_output`; requests join and leave between steps.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from local_engine.sampling import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True, eq=False)
class Sequence:
    """One request's tokens and its place in the KV cache.

    Invariant: the slot's KV holds positions [0, num_computed_tokens) of `token_ids`; once the
    prompt is computed, exactly the last token lacks KV (it is the next decode input).
    """

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    output_token_ids: list[int] = field(default_factory=list)
    slot: int | None = None
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: str | None = None

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def last_token_id(self) -> int:
        return self.output_token_ids[-1] if self.output_token_ids else self.prompt_token_ids[-1]

    @property
    def in_prefill(self) -> bool:
        return self.num_computed_tokens < self.num_prompt_tokens


@dataclass(slots=True, frozen=True)
class PrefillChunk:
    """Compute prompt positions [start, start + len(token_ids)) of one sequence."""

    request_id: str
    slot: int
    token_ids: tuple[int, ...]
    start: int
    completes_prompt: bool


@dataclass(slots=True, frozen=True)
class DecodeItem:
    """Feed `token_id` (the sequence's last token) at position `past_len`."""

    request_id: str
    slot: int
    token_id: int
    past_len: int


@dataclass(slots=True, frozen=True)
class SchedulerOutput:
    prefill: PrefillChunk | None
    decode: tuple[DecodeItem, ...]

    @property
    def is_empty(self) -> bool:
        return self.prefill is None and not self.decode


@dataclass(slots=True, frozen=True)
class SequenceUpdate:
    """What one step did to a sequence: its new computed length, tokens appended, and whether it ended."""

    request_id: str
    num_computed_tokens: int
    new_token_ids: tuple[int, ...] = ()
    finish_reason: str | None = None


class Scheduler:
    """FIFO admission into `num_slots` slots, one prefill chunk and one decode batch per step."""

    def __init__(self, num_slots: int, *, max_prefill_chunk: int = 512) -> None:
        assert num_slots >= 1 and max_prefill_chunk >= 1
        self.num_slots = num_slots
        self.max_prefill_chunk = max_prefill_chunk
        self._free_slots = list(range(num_slots))
        self._waiting: deque[Sequence] = deque()
        self._running: dict[str, Sequence] = {}  # insertion order = admission order

    # ---- queries (none of these modify the scheduler) ----
    @property
    def num_free_slots(self) -> int:
        return len(self._free_slots)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def waiting(self) -> tuple[Sequence, ...]:
        return tuple(self._waiting)

    @property
    def running(self) -> tuple[Sequence, ...]:
        return tuple(self._running.values())

    def get(self, request_id: str) -> Sequence | None:
        seq = self._running.get(request_id)
        if seq is not None:
            return seq
        return next((s for s in self._waiting if s.request_id == request_id), None)

    def has_unfinished(self) -> bool:
        return bool(self._waiting or self._running)

    # ---- mutations ----
    def add(self, seq: Sequence) -> None:
        """Queue a new sequence at the back of the waiting queue."""
        if self.get(seq.request_id) is not None:
            raise ValueError(f"request {seq.request_id!r} is already scheduled")
        assert seq.status is SequenceStatus.WAITING and seq.prompt_token_ids
        self._waiting.append(seq)

    def abort(self, request_id: str) -> Sequence | None:
        """Remove a sequence wherever it is and free its slot at once. Returns it, or None if unknown."""
        seq = self._running.pop(request_id, None)
        if seq is None:
            seq = next((s for s in self._waiting if s.request_id == request_id), None)
            if seq is None:
                return None
            self._waiting.remove(seq)
        self._finish(seq, "abort")
        return seq

    def admit(self) -> list[Sequence]:
        """Move waiting sequences (FIFO) into free slots. Returns the newly admitted ones, so the
        caller can load cached prefix KV into their slots and raise `num_computed_tokens`."""
        admitted = []
        while self._waiting and self._free_slots:
            seq = self._waiting.popleft()
            seq.slot = self._free_slots.pop(0)  # lowest first: a batched forward spans min..max slot
            seq.status = SequenceStatus.RUNNING
            self._running[seq.request_id] = seq
            admitted.append(seq)
        return admitted

    def schedule(self) -> SchedulerOutput:
        """Admit what fits, then pick this step's work. Mutates only admission state."""
        self.admit()
        prefill = None
        decode = []
        for seq in self._running.values():
            assert seq.slot is not None
            if seq.in_prefill:
                if prefill is None:
                    start = seq.num_computed_tokens
                    end = min(seq.num_prompt_tokens, start + self.max_prefill_chunk)
                    chunk = tuple(seq.prompt_token_ids[start:end])
                    prefill = PrefillChunk(
                        seq.request_id, seq.slot, chunk, start, end == seq.num_prompt_tokens
                    )
            else:
                assert seq.num_computed_tokens == seq.num_tokens - 1, "a decoding sequence lacks KV"
                decode.append(
                    DecodeItem(seq.request_id, seq.slot, seq.last_token_id, seq.num_computed_tokens)
                )
        return SchedulerOutput(prefill, tuple(decode))

    def update_from_output(self, updates: Iterable[SequenceUpdate]) -> list[Sequence]:
        """Apply a step's results: computed lengths, appended tokens, and finishes (freeing slots).
        Updates for sequences no longer running (aborted meanwhile) are ignored. Returns the
        sequences that finished."""
        finished = []
        for update in updates:
            seq = self._running.get(update.request_id)
            if seq is None:
                continue
            seq.output_token_ids.extend(update.new_token_ids)
            assert update.num_computed_tokens <= seq.num_tokens
            seq.num_computed_tokens = update.num_computed_tokens
            if update.finish_reason is not None:
                del self._running[seq.request_id]
                self._finish(seq, update.finish_reason)
                finished.append(seq)
        return finished

    def _finish(self, seq: Sequence, reason: str) -> None:
        if seq.slot is not None:
            self._free_slots.append(seq.slot)
            self._free_slots.sort()
            seq.slot = None
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
