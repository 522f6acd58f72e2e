"""A primary whose R3 stream loses quorum: no acknowledgement until the command is stored.

Core NATS stays up (one server of three), so submissions keep arriving while JetStream
cannot store anything. A retry of the same request id must not be answered from the
exactly-once record before its command is stored; once quorum is back, it is, exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import pytest

from jetstandby import connect
from jetstandby.client import Client
from jetstandby.config import JournalSettings, NodeSettings, ReplaySettings
from jetstandby.engines.kv import KeyValueEngine, put
from jetstandby.errors import SubmitError
from jetstandby.journal.stream import close_quietly, read_journal
from jetstandby.node import Node
from jetstandby.server import NatsCluster
from jetstandby.status import Role


async def test_no_ack_before_stored_while_quorum_is_lost(nats_cluster: NatsCluster) -> None:
    url = nats_cluster.nodes[0].url  # the survivor: core NATS keeps working through it
    settings = NodeSettings(
        node_id="a",
        journal=JournalSettings(journal="q", replicas=3, ack_timeout=0.2, unavailable_after=1.0),
        replay=ReplaySettings(resubscribe_delay=0.05, resubscribe_failure_delay=0.2),
    )
    nc = await connect(url)
    node = Node(nc, KeyValueEngine(), settings)
    task = asyncio.create_task(node.run(as_primary=True))
    try:
        await node.wait_started()
        await node.promote(timeout=20)
        async with Client(nc, "q", request_timeout=0.3) as client:
            assert (await client.submit("Put", 1, put("k", "0"), request_id="before")).seq == 2
            await asyncio.gather(*(n.stop(kill=True) for n in nats_cluster.nodes[1:]))

            with pytest.raises(SubmitError) as first:
                await client.submit("Put", 1, put("k", "1"), request_id="q1", deadline=1.5)
            assert first.value.retriable  # unknown outcome, never an acknowledgement
            with pytest.raises(SubmitError) as again:
                await client.submit("Put", 1, put("k", "1"), request_id="q1", deadline=1.0)
            assert again.value.retriable  # applied, but not stored: still no ok

            await asyncio.gather(*(n.start() for n in nats_cluster.nodes[1:]))
            out = await client.submit("Put", 1, put("k", "1"), request_id="q1", deadline=30)
            assert out.deduplicated and out.seq == 3
            # Resends that met their original still in process (err_code 10158) did not
            # fail the journal: the primary still serves.
            assert (await client.submit("Put", 1, put("k", "2"), request_id="after")).seq == 4
        assert node.role is Role.PRIMARY
        journal = await read_journal(nc, JournalSettings(journal="q"))
        counts = Counter(env.request_id for _, env in journal if env.request_id)
        assert counts == {"before": 1, "q1": 1, "after": 1}
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await close_quietly(nc)
