"""The simulator's fault queue (tests/upstream/state.py) and the faults it holds (config.py)."""

from __future__ import annotations

import pytest

from tests.upstream.config import Fault
from tests.upstream.state import FaultQueue


def test_fault_queue_matches_path_times_and_stream_only() -> None:
    queue = FaultQueue()
    queue.inject(Fault(cut_after_events=2))
    queue.inject(Fault(status=500, times=2, path="/v1/messages"))
    assert queue.take("/v1/chat/completions", stream=False) is None  # stream-only fault skipped
    assert queue.take("/v1/messages", stream=False) == Fault(status=500, times=2, path="/v1/messages")
    cut = queue.take("/v1/messages", stream=True)
    assert cut is not None and cut.cut_after_events == 2
    assert queue.take("/v1/messages", stream=True) is not None  # second use of the 500
    assert queue.take("/v1/messages", stream=True) is None
    with pytest.raises(ValueError):
        queue.inject(Fault(times=0))
    with pytest.raises(TypeError):
        Fault.from_json({"status": 500, "bogus": 1})
