"""A provider simulator that speaks the OpenAI and Anthropic wire formats, for tests and benchmarks.

    from tests.upstream import Simulator, SimConfig, Fault
    sim = Simulator(SimConfig(output_tokens=16))
    with serve(sim.app) as base_url: ...          # tests/servers.py
    sim.inject(Fault(status=429, retry_after=1))  # the next request gets a 429
    sim.requests[-1].headers["authorization"]     # what reached the upstream

Out of process: ``python -m tests.upstream --port 9100`` with the ``/_sim/*`` control surface.

Wire facts worth knowing: content and token counts are pure functions of the request (tokenizer in
``tokens.py``); Anthropic paths take the key from ``x-api-key`` or, as anthropic SDK 2.x sends it,
``Authorization: Bearer``; a ``cut_after_events`` fault drops the connection (clients see a
transport error, not a clean end); files and batches are served only with ``SimConfig(batches=True)``.
"""

from tests.upstream.app import Simulator
from tests.upstream.config import Fault, SimConfig
from tests.upstream.state import RecordedRequest
from tests.upstream.tokens import count_tokens, tokenize

__all__ = ["Fault", "RecordedRequest", "SimConfig", "Simulator", "count_tokens", "tokenize"]
