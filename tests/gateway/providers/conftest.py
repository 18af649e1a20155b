"""Upstreams on real servers, shared by the provider tests (one server each per session): a scripted fake and the
provider simulator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.gateway.providers.fakes import FakeUpstream
from tests.servers import serve
from tests.upstream import SimConfig, Simulator

SIM_KEY = "sk-sim-provider-key-0001"  # the only key the simulator accepts


@pytest.fixture(scope="session")
def served() -> Iterator[tuple[FakeUpstream, str]]:
    fake = FakeUpstream()
    with serve(fake) as base_url:
        yield fake, base_url


@pytest.fixture
def upstream(served: tuple[FakeUpstream, str]) -> FakeUpstream:
    served[0].reset()
    return served[0]


@pytest.fixture
def base_url(served: tuple[FakeUpstream, str]) -> str:
    return served[1]


@pytest.fixture(scope="session")
def sim_served() -> Iterator[tuple[Simulator, str]]:
    sim = Simulator(SimConfig())
    with serve(sim.app) as base_url:
        yield sim, base_url


@pytest.fixture
def sim(sim_served: tuple[Simulator, str]) -> Simulator:
    """The provider simulator, reset and with its default configuration."""
    simulator = sim_served[0]
    simulator.reset()
    simulator.config = SimConfig(api_key=SIM_KEY)
    return simulator


@pytest.fixture
def sim_url(sim_served: tuple[Simulator, str]) -> str:
    return sim_served[1]
