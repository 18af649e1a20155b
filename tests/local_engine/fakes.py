"""Test doubles with the real contracts: a toy language model with a real per-slot KV cache, a
byte-level tokenizer, and a clock the fake model advances by a cost model.

`FakeRunner` is a deterministic toy model. Each position's "KV" stores its token and a running hash
of the whole history up to it; the logits for a position are a bigram table row of the token plus a
perturbation seeded by that running hash. So the output depends on every earlier token through the
stored KV: a wrong rollback, a stale slot, or a badly copied prefix segment changes the output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOS_ID = 256
EOS_ID = 257
VOCAB = 260
_MASK = (1 << 61) - 1
_HASH_SEED = 0x5EED


@dataclass(slots=True)
class FakeClock:
    """A clock that only moves when the fake runner charges it for work."""

    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass(slots=True, frozen=True)
class FakeKVSegment:
    data: np.ndarray  # [tokens, 2] int64: (token, running hash)

    @property
    def num_tokens(self) -> int:
        return int(self.data.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)


@dataclass(slots=True)
class ForwardCall:
    slots: tuple[int, ...]
    num_tokens: tuple[int, ...]
    past_lens: tuple[int, ...]
    all_logits: bool
    min_positions: int = 1


class FakeRunner:
    """The `Runner` contract over a toy model (see module docstring).

    `noise` scales the history-dependent perturbation (0: a pure bigram model, whose greedy text
    soon repeats, which prompt lookup loves). `seed` picks the model. If `clock` is given, each
    forward advances it by `step_cost + token_cost * new_tokens` seconds.
    """

    def __init__(
        self,
        *,
        num_slots: int = 4,
        max_seq_len: int = 512,
        seed: int = 0,
        noise: float = 0.6,
        clock: FakeClock | None = None,
        step_cost: float = 0.01,
        token_cost: float = 0.001,
    ) -> None:
        self.num_slots = num_slots
        self.max_seq_len = max_seq_len
        self.vocab_size = VOCAB
        self.eos_id = EOS_ID
        rng = np.random.default_rng(seed)
        w = rng.normal(0.0, 2.0, size=(VOCAB, VOCAB))
        w[:, [*list(range(97, 123)), 32]] += 4.0  # mostly lowercase letters and spaces
        w[:, EOS_ID] -= 2.0
        w[ord(".")] = -10.0
        w[ord("."), EOS_ID] = 10.0  # a full stop ends the text
        self._table = w.astype(np.float32)  # [vocab, vocab]
        self._noise = noise
        self._kv = np.zeros((num_slots, max_seq_len, 2), dtype=np.int64)  # (token, running hash)
        self._valid = [0] * num_slots  # positions [0, valid) hold KV written since the last rollback
        self.clock = clock
        self.step_cost = step_cost
        self.token_cost = token_cost
        self.calls: list[ForwardCall] = []

    def _position_logits(self, slot: int, pos: int, token: int) -> np.ndarray:
        parent = int(self._kv[slot, pos - 1, 1]) if pos > 0 else _HASH_SEED
        h = ((parent * 1_000_003) ^ (token + 1)) & _MASK
        self._kv[slot, pos] = (token, h)
        logits = self._table[token].copy()
        if self._noise:
            logits += self._noise * np.random.default_rng(h).standard_normal(VOCAB).astype(np.float32)
        return logits

    def forward(
        self,
        slots: Sequence[int],
        token_ids: Sequence[Sequence[int]],
        past_lens: Sequence[int],
        *,
        all_logits: bool = False,
        min_positions: int = 1,
    ) -> np.ndarray:
        assert len(slots) == len(token_ids) == len(past_lens) >= 1
        assert len(set(slots)) == len(slots), "a slot appears twice in one forward"
        if len(slots) > 1:
            assert all(len(t) == 1 for t in token_ids), "a batch of several slots takes one token each"
        out: list[np.ndarray] = []
        for slot, toks, past in zip(slots, token_ids, past_lens, strict=True):
            assert 0 <= slot < self.num_slots
            assert len(toks) >= 1
            assert 0 <= past <= self._valid[slot], f"slot {slot}: past_len {past} > valid {self._valid[slot]}"
            assert past + len(toks) <= self.max_seq_len
            rows = [self._position_logits(slot, past + i, int(t)) for i, t in enumerate(toks)]
            self._valid[slot] = past + len(toks)
            out.extend(rows if all_logits else rows[-1:])
        self.calls.append(
            ForwardCall(
                tuple(slots), tuple(len(t) for t in token_ids), tuple(past_lens), all_logits, min_positions
            )
        )
        if self.clock is not None:
            self.clock.now += self.step_cost + self.token_cost * sum(len(t) for t in token_ids)
        return np.stack(out).astype(np.float32)

    def read_kv(self, slot: int, start: int, end: int) -> FakeKVSegment:
        assert 0 <= start <= end <= self._valid[slot]
        return FakeKVSegment(self._kv[slot, start:end].copy())

    def write_kv(self, slot: int, start: int, segment: FakeKVSegment) -> None:
        assert 0 <= start <= self._valid[slot] or start == 0
        self._kv[slot, start : start + segment.num_tokens] = segment.data
        self._valid[slot] = start + segment.num_tokens

    def copy_kv(self, src_slot: int, dst_slot: int, length: int) -> None:
        assert length <= self._valid[src_slot]
        self._kv[dst_slot, :length] = self._kv[src_slot, :length]
        self._valid[dst_slot] = length

    def corrupt(self, slot: int) -> None:
        """Scramble a slot's KV (to prove a later result did not read it)."""
        self._kv[slot, :, 1] = 12345


class ByteTokenizer:
    """Byte-level tokenizer: ids 0-255 are bytes, 256 BOS, 257 EOS (a stop id), 258-259 spare."""

    bos_id = BOS_ID
    eos_id = EOS_ID
    stop_ids = frozenset({EOS_ID})

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return ([BOS_ID] if add_special_tokens else []) + list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        out = bytearray()
        for i in ids:
            if i < 256:
                out.append(i)
            elif not skip_special_tokens:
                out += f"<|{i}|>".encode()
        return out.decode("utf-8", errors="replace")
