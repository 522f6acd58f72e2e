"""Shared fixtures. Every nats-server a fixture starts is closed after the test, pass or fail."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterator

import pytest

from jetstandby.server import NatsCluster, NatsServer


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--cycles",
        type=int,
        default=None,
        help="cycles per fault scenario (tests/test_scenarios.py); default: each scenario's own",
    )


@pytest.fixture
def cycles(request: pytest.FixtureRequest) -> int | None:
    """``--cycles`` from the command line, or None for each scenario's default."""
    value = request.config.getoption("--cycles")
    return None if value is None else int(value)


@pytest.fixture
async def nats_server() -> AsyncIterator[NatsServer]:
    """A started nats-server with JetStream on a fresh temporary store and free ports."""
    async with NatsServer() as server:
        yield server


@pytest.fixture
async def nats_cluster() -> AsyncIterator[NatsCluster]:
    """A started 3-node JetStream cluster on loopback, with a meta leader elected."""
    async with NatsCluster() as cluster:
        yield cluster


@pytest.fixture(autouse=True)
def _heap_unfrozen() -> Iterator[None]:
    """A node freezes the heap once its state is built (jetstandby.heap): process-wide, so
    undo it after each test, for the next test's collections and leak warnings."""
    yield
    gc.unfreeze()
