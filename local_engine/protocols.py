"""The contracts the engine core is written against.

`ModelRunner` (local_engine/runner.py) and the test suite's `FakeRunner` both satisfy `Runner`;
`Tokenizer` (local_engine/tokenizer.py) and the test suite's byte tokenizer both satisfy
`TokenizerLike`. Nothing here imports onnxruntime, so the scheduler, prefix cache, sampling and
speculative decoding are usable and testable without a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np


class KVSegment(Protocol):
    """A copy of the KV cache of a run of consecutive positions of one slot."""

    @property
    def num_tokens(self) -> int: ...

    @property
    def nbytes(self) -> int: ...


class Runner(Protocol):
    """A model with a preallocated KV cache split into `num_slots` per-sequence slots.

    A slot's KV cache holds positions [0, past_len); `forward` writes the new tokens' KV at
    past_len, past_len + 1, ... and rolling back is passing a smaller past_len next time.
    """

    num_slots: int
    max_seq_len: int
    vocab_size: int

    def forward(
        self,
        slots: Sequence[int],
        token_ids: Sequence[Sequence[int]],
        past_lens: Sequence[int],
        *,
        all_logits: bool = False,
        min_positions: int = 1,
    ) -> np.ndarray:
        """Run either one slot with any number of new tokens, or several slots with one new token each.

        Mutates the slots' KV cache at [past_len, past_len + n). Returns float32 logits
        `[sum of new tokens, vocab]` if all_logits else `[len(slots), vocab]` (each slot's last token).
        `min_positions`: a single-slot call with fewer new tokens runs through the same kernels as a
        call with that many (padded past its end), so its logits equal a verification forward's bit
        for bit.
        """
        ...

    def read_kv(self, slot: int, start: int, end: int) -> Any:
        """Copy out the KV of positions [start, end) of `slot`. This does not modify the cache."""
        ...

    def write_kv(self, slot: int, start: int, segment: Any) -> None:
        """Copy `segment` into `slot` at positions [start, start + segment.num_tokens)."""
        ...

    def copy_kv(self, src_slot: int, dst_slot: int, length: int) -> None:
        """Copy positions [0, length) of `src_slot` into `dst_slot`."""
        ...


class TokenizerLike(Protocol):
    """What the engine needs from a tokenizer: ids → text, and which ids end a generation."""

    eos_id: int
    stop_ids: frozenset[int]

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]: ...

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...
