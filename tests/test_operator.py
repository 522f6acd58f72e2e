"""Operator actions on a real node and server: skipping one poison message."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from jetstandby import connect, ensure_stream, wire
from jetstandby.config import JournalSettings, NodeSettings, ReplaySettings
from jetstandby.engines.kv import KeyValueEngine, put
from jetstandby.errors import ActionRefused, ConfigError, PromotionRefused
from jetstandby.journal.stream import NatsClient, close_quietly
from jetstandby.node import Node
from jetstandby.server import NatsServer
from jetstandby.state import marker_envelope
from jetstandby.status import Role
from jetstandby_bench.prewrite import publish_commands, write_marker
from tests.support import watch_logs

JOURNAL = JournalSettings(journal="ops")
REPLAY = ReplaySettings(catch_up_interval=0.05, resubscribe_delay=0.05)


def command(seq: int, *, version: int = 1, key: str = "k") -> bytes:
    return wire.encode(wire.Envelope(1, seq, 1, 1_000 + seq, "Put", version, put(key, str(seq))))


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NatsClient]:
    client = await connect(nats_server.url)
    await ensure_stream(client, JOURNAL)
    yield client
    await close_quietly(client)


async def write(nc: NatsClient, *bodies: bytes) -> None:
    js = nc.jetstream()
    for data in bodies:
        await js.publish(JOURNAL.subject, data)


@pytest.fixture
async def standby(nc: NatsClient) -> AsyncIterator[Callable[[], asyncio.Future[Node]]]:
    tasks: list[asyncio.Task[object]] = []

    async def start() -> Node:
        node = Node(nc, KeyValueEngine(), NodeSettings(node_id="b", journal=JOURNAL, replay=REPLAY))
        tasks.append(asyncio.create_task(node.run()))
        await node.wait_started()
        return node

    yield start  # type: ignore[misc]
    for task in tasks:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


MARKER = wire.encode(marker_envelope(seq=1, epoch=1, node="a", timestamp_ns=1))


@pytest.mark.parametrize(
    ("poison", "consumed", "reason"),
    [
        (command(3, version=9), 3, "does not accept command type 'Put' version 9"),
        (b"\x93garbage", None, "malformed envelope at stream seq 3"),
    ],
    ids=["unknown-version", "garbage"],
)
async def test_a_halted_standby_resumes_only_after_an_explicit_skip(
    nc: NatsClient,
    standby: Callable[[], asyncio.Future[Node]],
    poison: bytes,
    consumed: int | None,
    reason: str,
) -> None:
    after = command(4) if consumed else command(3)
    await write(nc, MARKER, command(2), poison, after)
    node = await standby()
    await node.progress.wait_for(lambda p: p.halted, timeout=10)
    status = node.status()
    assert status.halted and not status.ready and status.last_applied_seq == 2
    assert reason in (status.last_error or "")
    with pytest.raises(PromotionRefused, match="replay halted"):
        await node.promote(force=True, reason="anyway")
    with pytest.raises(ActionRefused, match="only that message can be skipped, not stream seq 2"):
        await node.skip(stream_seq=2, reason="wrong one")
    with pytest.raises(ConfigError, match="reason"):
        await node.skip(stream_seq=3, reason="  ")
    assert node.state.last_seq == 2  # nothing after the poison was applied
    with watch_logs() as logs:
        record = await node.skip(stream_seq=3, reason="ticket OPS-1: injected by a test")
    assert logs.seen("OPERATOR SKIP of stream seq 3")
    assert (record.stream_seq, record.seq) == (3, consumed)
    await node.progress.wait_for(lambda p: p.replay_cursor_seq == 4 and p.caught_up, timeout=10)
    status = node.status()
    assert not status.halted and status.ready and status.last_error is None
    assert status.last_applied_seq == (4 if consumed else 3)
    assert [s.reason for s in status.skipped] == ["ticket OPS-1: injected by a test"]
    with pytest.raises(ActionRefused, match="not halted"):
        await node.skip(stream_seq=4, reason="again")


async def test_a_gap_halts_and_a_skip_cannot_hide_it(
    nc: NatsClient, standby: Callable[[], asyncio.Future[Node]]
) -> None:
    await write(nc, MARKER, command(2), command(4), command(5))
    node = await standby()
    await node.progress.wait_for(lambda p: p.halted, timeout=10)
    assert "expected command seq 3, got 4" in (node.status().last_error or "")
    await node.skip(stream_seq=3, reason="try")
    # Skipping the message does not make seq 3 appear: the next one is a gap again.
    await node.progress.wait_for(lambda p: p.halted and p.replay_cursor_seq == 3, timeout=10)
    assert "expected command seq 3, got 5" in (node.status().last_error or "")
    assert node.state.last_seq == 2


async def test_an_oversized_envelope_halts_naming_its_seq(
    nc: NatsClient, standby: Callable[[], asyncio.Future[Node]]
) -> None:
    size = nc.max_payload - wire.HEADER_ROOM // 2 - 64  # under what the server takes
    big = wire.encode(wire.Envelope(1, 3, 1, 1, "Put", 1, b"\x00" * size))
    await write(nc, MARKER, command(2), big, command(4))
    node = await standby()
    await node.progress.wait_for(lambda p: p.halted, timeout=10)
    assert "command seq 3 (stream seq 3): oversized envelope" in (node.status().last_error or "")
    assert node.state.last_seq == 2


async def test_a_long_catch_up_never_overflows_the_delivery_queue(
    nc: NatsClient, standby: Callable[[], asyncio.Future[Node]]
) -> None:
    # nats-server sends a push consumer up to 64 MB before flow control holds it: far more
    # small commands than the old 65,536-message queue, which then dropped messages, and the
    # server cut the standby off as a slow consumer.
    count = 150_000
    await write_marker(nc, JOURNAL)
    commands = [("Put", 1, put("k", "v"))] * count
    await publish_commands(nc, JOURNAL, commands, first_seq=2)
    with watch_logs() as logs:
        node = await standby()
        await node.progress.wait_for(lambda p: p.replay_cursor_seq == count + 1, timeout=60)
    assert node.progress.resubscribes == 0
    assert not logs.seen("slow consumer") and not logs.seen("NATS stream ended")


async def test_a_halt_while_a_promotion_is_checked_refuses_it_and_leaves_nothing_pending(
    nc: NatsClient, standby: Callable[[], asyncio.Future[Node]], monkeypatch: pytest.MonkeyPatch
) -> None:
    await write(nc, MARKER, command(2))
    node = await standby()
    await node.progress.wait_for(lambda p: p.replay_cursor_seq == 2 and p.caught_up, timeout=10)
    feed = node._feed  # the promotion's tail read is the window this test needs to hit
    real_tail = feed.last_stream_seq

    async def tail_read_that_meets_poison() -> int:
        await write(nc, command(3, version=9))
        await node.progress.wait_for(lambda p: p.halted, timeout=10)
        return await real_tail()

    monkeypatch.setattr(feed, "last_stream_seq", tail_read_that_meets_poison)
    with pytest.raises(PromotionRefused, match="replay halted"):
        await node.promote(timeout=5)
    monkeypatch.setattr(feed, "last_stream_seq", real_tail)
    await node.skip(stream_seq=3, reason="test poison")
    await write(nc, command(4))
    await node.progress.wait_for(lambda p: p.replay_cursor_seq == 4, timeout=10)
    assert node.role is Role.STANDBY  # nothing asked before the halt fired on its own
    result = await node.promote(timeout=10)  # and a new request is not stuck behind one
    assert result.role is Role.PRIMARY and result.epoch == 2


async def test_a_snapshot_waiting_for_another_is_refused_once_the_node_is_primary(
    nc: NatsClient, standby: Callable[[], asyncio.Future[Node]]
) -> None:
    await write(nc, MARKER, command(2))
    node = await standby()
    await node.progress.wait_for(lambda p: p.replay_cursor_seq == 2 and p.caught_up, timeout=10)
    assert node._snapshotter is not None
    async with node._snapshotter._lock:  # as if a snapshot were being stored
        waiting = asyncio.create_task(node.take_snapshot(reason="queued"))
        await node.promote(timeout=10)
    with pytest.raises(ActionRefused, match="the primary never pauses"):
        await waiting
    assert node.status().snapshots_taken == 0 and node.status().last_snapshot_error is None
