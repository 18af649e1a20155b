"""Scheduler tests over hand-built model outputs (no model, vLLM style)."""

from __future__ import annotations

import pytest

from local_engine.sampling import SamplingParams
from local_engine.scheduler import Scheduler, Sequence, SequenceStatus, SequenceUpdate


def _seq(rid: str, n: int = 10) -> Sequence:
    return Sequence(rid, list(range(1, n + 1)), SamplingParams())


def _finish_prefill(sched: Scheduler) -> None:
    """Run the scheduled prefill chunk and, if it completes the prompt, sample token 99."""
    out = sched.schedule()
    assert out.prefill is not None
    p = out.prefill
    done = p.start + len(p.token_ids)
    sched.update_from_output([SequenceUpdate(p.request_id, done, (99,) if p.completes_prompt else ())])


def test_admission_is_fifo_and_bounded_by_slots() -> None:
    sched = Scheduler(2)
    for rid in "abc":
        sched.add(_seq(rid))
    admitted = sched.admit()
    assert [s.request_id for s in admitted] == ["a", "b"]
    assert [s.slot for s in admitted] == [0, 1]
    assert sched.num_free_slots == 0
    assert [s.request_id for s in sched.waiting] == ["c"]
    assert sched.get("c") is not None and sched.get("c").status is SequenceStatus.WAITING  # type: ignore[union-attr]
    assert sched.admit() == []


def test_duplicate_request_id_is_rejected() -> None:
    sched = Scheduler(1)
    sched.add(_seq("a"))
    with pytest.raises(ValueError):
        sched.add(_seq("a"))


def test_chunked_prefill_then_decode() -> None:
    sched = Scheduler(1, max_prefill_chunk=512)
    sched.add(_seq("a", 1200))
    chunks = []
    for _ in range(3):
        out = sched.schedule()
        assert out.prefill is not None and out.decode == ()
        chunks.append((out.prefill.start, len(out.prefill.token_ids), out.prefill.completes_prompt))
        p = out.prefill
        sched.update_from_output(
            [SequenceUpdate("a", p.start + len(p.token_ids), (7,) if p.completes_prompt else ())]
        )
    assert chunks == [(0, 512, False), (512, 512, False), (1024, 176, True)]
    out = sched.schedule()
    assert out.prefill is None
    assert [(d.request_id, d.token_id, d.past_len) for d in out.decode] == [("a", 7, 1200)]


def test_one_prefill_chunk_per_step_alongside_the_decode_batch() -> None:
    sched = Scheduler(4, max_prefill_chunk=4)
    sched.add(_seq("a", 3))
    _finish_prefill(sched)  # a is decoding now
    sched.add(_seq("b", 10))
    sched.add(_seq("c", 10))
    out = sched.schedule()
    assert out.prefill is not None and out.prefill.request_id == "b"  # earliest admitted first, only one
    assert out.prefill.token_ids == (1, 2, 3, 4)
    assert [d.request_id for d in out.decode] == ["a"]  # the decode is not starved by the prefill
    sched.update_from_output([SequenceUpdate("b", 4), SequenceUpdate("a", 4, (42,))])
    out = sched.schedule()
    assert out.prefill is not None and (out.prefill.request_id, out.prefill.start) == ("b", 4)
    assert [(d.token_id, d.past_len) for d in out.decode] == [(42, 4)]


def test_requests_join_and_leave_between_steps() -> None:
    sched = Scheduler(1)
    sched.add(_seq("a", 2))
    sched.add(_seq("b", 2))
    _finish_prefill(sched)
    out = sched.schedule()
    assert [d.request_id for d in out.decode] == ["a"] and out.prefill is None
    finished = sched.update_from_output([SequenceUpdate("a", 3, (5,), "length")])
    assert [s.request_id for s in finished] == ["a"]
    assert finished[0].status is SequenceStatus.FINISHED and finished[0].finish_reason == "length"
    assert finished[0].slot is None and finished[0].output_token_ids == [99, 5]
    out = sched.schedule()  # b takes the freed slot
    assert out.prefill is not None and out.prefill.request_id == "b" and out.prefill.slot == 0
    assert out.decode == ()


def test_abort_frees_the_slot_at_once() -> None:
    sched = Scheduler(1)
    sched.add(_seq("a"))
    sched.add(_seq("b"))
    sched.admit()
    assert sched.num_free_slots == 0
    aborted = sched.abort("a")
    assert aborted is not None and aborted.finish_reason == "abort" and aborted.slot is None
    assert sched.num_free_slots == 1
    assert sched.abort("a") is None  # already gone
    assert sched.abort("nope") is None
    # a late update for the aborted request is ignored
    assert sched.update_from_output([SequenceUpdate("a", 10, (1,), "stop")]) == []
    out = sched.schedule()
    assert out.prefill is not None and out.prefill.request_id == "b"


def test_abort_of_a_waiting_request() -> None:
    sched = Scheduler(1)
    sched.add(_seq("a"))
    sched.add(_seq("b"))
    sched.admit()
    assert sched.abort("b") is not None
    assert sched.waiting == () and sched.num_free_slots == 0
    sched.abort("a")
    assert not sched.has_unfinished()


def test_slots_are_reused_lowest_first() -> None:
    sched = Scheduler(3)
    for rid in "abc":
        sched.add(_seq(rid))
    sched.admit()
    sched.abort("b")
    sched.abort("a")
    sched.add(_seq("d"))
    sched.add(_seq("e"))
    assert [(s.request_id, s.slot) for s in sched.admit()] == [("d", 0), ("e", 1)]


def test_nothing_to_do_is_an_empty_output() -> None:
    sched = Scheduler(2)
    assert sched.schedule().is_empty
    assert not sched.has_unfinished()
