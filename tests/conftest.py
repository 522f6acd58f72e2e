"""Shared fixtures. Every nats-server a fixture starts is closed after the test, pass or fail."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from jetstandby.server import NatsCluster, NatsServer


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
