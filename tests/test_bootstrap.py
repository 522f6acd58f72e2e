"""Issue 5 against a real server: snapshots, bootstrap, bounded journals, checkpoints and the
version gate, with in-process nodes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from jetstandby import connect
from jetstandby.admin import AdminServer, AdminSettings
from jetstandby.bootstrap import RetentionWatch, StreamBounds, stream_bounds
from jetstandby.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from jetstandby.client import Client
from jetstandby.config import JournalSettings, NodeSettings, ReplaySettings, SnapshotSettings
from jetstandby.engine import Engine
from jetstandby.engines.kv import KeyValueEngine, add, put
from jetstandby.engines.orderbook import OrderBookEngine, generate
from jetstandby.errors import ActionRefused, PromotionRefused
from jetstandby.faults import TcpProxy
from jetstandby.journal.stream import NatsClient, close_quietly
from jetstandby.node import Node
from jetstandby.server import NatsServer
from jetstandby.snapshots import SnapshotStore
from jetstandby.status import Role
from tests.engines import ClockedKeyValue, CyclicKeyValue, KeyValueV2
from tests.support import watch_logs

REPLAY = ReplaySettings(
    catch_up_interval=0.05, resubscribe_delay=0.05, resubscribe_failure_delay=0.1
)
SNAPSHOTS = SnapshotSettings(every_commands=0, every_seconds=0, bootstrap_retry=0.1)

Start = Callable[..., Awaitable[Node]]


@pytest.fixture
async def start(nats_server: NatsServer) -> AsyncIterator[Start]:
    tasks: list[asyncio.Task[Role]] = []
    connections: list[NatsClient] = []

    async def start_node(
        node_id: str,
        *,
        engine: type[Engine] = KeyValueEngine,
        primary: bool = False,
        url: str | None = None,
        journal: JournalSettings | None = None,
        **kw: Any,
    ) -> Node:
        nc = await connect(url or nats_server.url)
        connections.append(nc)
        settings = NodeSettings(
            node_id=node_id,
            journal=journal or JournalSettings(journal="boot"),
            replay=REPLAY,
            snapshots=kw.pop("snapshots", SNAPSHOTS),
            **kw,
        )
        node = Node(nc, engine(), settings, engine_factory=engine)
        tasks.append(asyncio.create_task(node.run(as_primary=primary)))
        await node.wait_started()
        if primary:
            await node.promote(wait=True, timeout=10)
        return node

    yield start_node
    for task in tasks:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
    for nc in connections:
        await close_quietly(nc)


async def submit_many(url: str, count: int, *, first: int = 0, journal: str = "boot") -> None:
    async with await Client.connect(url, journal) as client:
        for i in range(first, first + count):
            await client.submit("Add", 1, add(f"k{i % 7}", i), request_id=f"r{i}")


async def bounds_now(server: NatsServer) -> StreamBounds:
    nc = await connect(server.url)
    try:
        return await stream_bounds(nc, BOUNDED)
    finally:
        await close_quietly(nc)


async def caught_up(node: Node, seq: int) -> None:
    await node.progress.wait_for(lambda p: node.state.last_seq >= seq, timeout=20)


async def test_bootstrap_from_a_snapshot_plus_the_tail_equals_a_full_replay(
    start: Start, nats_server: NatsServer
) -> None:
    a = await start("a", primary=True, checkpoint_every=50)
    b = await start("b")
    await submit_many(nats_server.url, 300)
    await caught_up(b, a.state.last_seq)
    meta = await b.take_snapshot(reason="test")
    assert meta.seq == b.state.last_seq and meta.digest == b.digest()
    await submit_many(nats_server.url, 200, first=300)

    c = await start("c")
    await caught_up(c, a.state.last_seq)
    status = c.status()
    assert status.started_from == f"snapshot {meta.name}"
    assert status.commands_replayed == a.state.last_seq - meta.seq  # only the tail
    assert c.digest() == b.digest() == a.digest()  # b replayed everything from command 1
    assert b.status().started_from == "command 1"
    # The digest was proven at a checkpoint after the snapshot, not only at the end.
    assert meta.seq < status.last_checkpoint_seq <= a.state.last_seq
    # The exactly-once record came with the snapshot: a retry from before it is answered.
    assert c.state.lookup("r10") == b.state.lookup("r10") is not None


async def test_a_corrupt_or_foreign_newest_snapshot_falls_back_to_an_older_one(
    start: Start, nats_server: NatsServer
) -> None:
    await start("a", primary=True)
    b = await start("b")
    await submit_many(nats_server.url, 50)
    await caught_up(b, 51)
    good = await b.take_snapshot(reason=None)
    await submit_many(nats_server.url, 50, first=50)
    await caught_up(b, 101)
    newest = await b.take_snapshot(reason=None)
    nc = await connect(nats_server.url)
    try:
        objects = await nc.jetstream().object_store("JSB_SNAP_BOOT")
        data = bytearray((await objects.get(newest.name)).data or b"")
        data[len(data) // 2] ^= 0xFF
        description = msgspec.json.encode(newest).decode()
        from nats.js.api import ObjectMeta

        await objects.put(newest.name, bytes(data), meta=ObjectMeta(newest.name, description))
        foreign = msgspec.structs.replace(
            newest, seq=newest.seq + 1, stream_created="2001-01-01T00:00:00+00:00"
        )
        raw = (await objects.get(good.name)).data or b""
        await objects.put(
            foreign.name,
            raw,
            meta=ObjectMeta(foreign.name, msgspec.json.encode(foreign).decode()),
        )
    finally:
        await close_quietly(nc)
    with watch_logs() as logs:
        c = await start("c")
        await caught_up(c, 101)
    assert c.status().started_from == f"snapshot {good.name}"
    assert logs.seen(f"snapshot {foreign.name} refused (stream)")
    assert logs.seen(f"snapshot {newest.name} refused (checksum)")
    assert c.digest() == b.digest()


BOUNDED = JournalSettings(journal="boot", max_bytes=24 * 1024)


async def test_a_standby_with_neither_command_1_nor_a_snapshot_halts_until_one_exists(
    start: Start, nats_server: NatsServer
) -> None:
    a = await start("a", primary=True, journal=BOUNDED)
    b = await start("b", journal=BOUNDED)
    await submit_many(nats_server.url, 600)
    await caught_up(b, a.state.last_seq)
    assert (await bounds_now(nats_server)).first_seq > 1  # the limit dropped the oldest
    c = await start("c", journal=BOUNDED)
    await c.progress.wait_for(lambda p: p.halted, timeout=10)
    status = c.status()
    assert status.started_from is None and not status.ready
    assert "no snapshot passed verification" in (status.last_error or "")
    with pytest.raises(PromotionRefused):
        await c.promote(force=True, reason="try")
    await b.take_snapshot(reason="for c")
    await caught_up(c, a.state.last_seq)
    assert c.status().started_from is not None and c.digest() == a.digest()


async def test_a_standby_that_falls_off_a_bounded_stream_rebootstraps(
    start: Start, nats_server: NatsServer
) -> None:
    """...and the state it leaves behind is freed, although c froze its heap (freeze_heap)
    while it was caught up and its engine is in a reference cycle."""
    a = await start("a", primary=True, journal=BOUNDED)
    b = await start("b", journal=BOUNDED)
    async with TcpProxy("127.0.0.1", nats_server.port) as proxy:
        with watch_logs() as logs:
            c = await start("c", journal=BOUNDED, url=proxy.url, engine=CyclicKeyValue)
            await submit_many(nats_server.url, 20)
            await caught_up(c, a.state.last_seq)
            await logs.wait_for("full collections node=c")  # c froze its first state
        left_behind = weakref.ref(c.state.engine)
        behind = c.state.last_seq
        proxy.cut()  # c hears nothing while the stream drops what it still needs
        await submit_many(nats_server.url, 600, first=20)
        await caught_up(b, a.state.last_seq)
        assert (await bounds_now(nats_server)).first_seq > behind + 1
        meta = await b.take_snapshot(reason="c fell behind")
        with watch_logs() as logs:
            proxy.restore()
            await caught_up(c, a.state.last_seq)
    assert logs.seen("replay fell off the start of the stream")
    assert c.status().started_from == f"snapshot {meta.name}"
    assert c.digest() == a.digest() and not c.status().halted
    gc.collect()
    assert left_behind() is None


def test_the_retention_warning_fires_near_the_start_of_a_bounded_stream() -> None:
    watch = RetentionWatch(SnapshotSettings().retention_warn_fraction)  # 0.2
    assert not watch.check(1150)  # bounds not known yet
    watch.bounds = StreamBounds(first_seq=1001, last_seq=2000, messages=1000, limited=True)
    assert watch.headroom(1999) == 999 and watch.headroom(1000) == 0
    with watch_logs() as logs:
        assert not watch.check(1500)  # 500 of 1000 messages to spare
        assert watch.check(1150) and watch.check(1100)  # 150, then 100: warned once
        assert not watch.check(None)  # no longer a following standby
    assert len(logs.seen("RETENTION: this standby needs stream seq 1151")) == 1
    assert len(logs.seen("RETENTION")) == 1 and logs.seen("retention headroom recovered")
    watch.bounds = StreamBounds(first_seq=1001, last_seq=2000, messages=1000, limited=False)
    assert not watch.check(1001)  # an unbounded stream drops nothing


async def test_nondeterminism_is_caught_within_one_checkpoint_interval(
    start: Start, nats_server: NatsServer
) -> None:
    a = await start("a", primary=True, engine=ClockedKeyValue, checkpoint_every=10)
    b = await start("b", engine=ClockedKeyValue)
    await submit_many(nats_server.url, 25)
    await b.progress.wait_for(lambda p: p.halted, timeout=10)
    status = b.status()
    assert status.diverged and status.halted and not status.ready
    assert status.last_applied_seq == 10  # the first checkpoint (seq 11) caught it
    assert "DIVERGED at command seq 10" in (status.last_error or "")
    with pytest.raises(PromotionRefused, match="not even by force"):
        await b.promote(force=True, reason="try anyway")
    with pytest.raises(ActionRefused, match="cannot repair"):
        await b.skip(stream_seq=12, reason="try")
    assert a.role is Role.PRIMARY


async def test_standbys_check_the_order_books_live_digest_at_each_checkpoint(
    start: Start, nats_server: NatsServer
) -> None:
    a = await start("a", primary=True, engine=OrderBookEngine, checkpoint_every=25)
    b = await start("b", engine=OrderBookEngine)
    async with await Client.connect(nats_server.url, "boot") as client:
        for i, (ctype, version, payload) in enumerate(generate(4, 120, instruments=2)):
            await client.submit(ctype, version, payload, request_id=f"o{i}")
    await caught_up(b, a.state.last_seq)
    # 120 commands and a checkpoint after every seq that is a multiple of 25: the standby
    # verified each of them (or it would have halted as diverged before catching up).
    assert b.state.last_checkpoint_seq == a.state.last_checkpoint_seq > 100
    status = b.status()
    assert not status.diverged
    assert isinstance(b.state.engine, OrderBookEngine)
    assert b.state.engine.live_digest() == b.state.engine.recount_live_digest()
    # /status shows the digest checkpoints compare: O(1) to read, however big the book.
    assert status.state_digest == b.state.engine.live_digest().hex() != b.digest()


async def test_the_version_gate_refuses_an_older_engine_unless_forced(
    start: Start, nats_server: NatsServer
) -> None:
    a = await start("a", primary=True, engine=KeyValueV2, checkpoint_every=5)
    old = await start("old")
    new = await start("new", engine=KeyValueV2)
    async with await Client.connect(nats_server.url, "boot") as client:
        for i in range(6):
            await client.submit("Put", 1, put("k", str(i)))
    await caught_up(old, a.state.last_seq)
    status = old.status()
    assert status.writer_engine_version == 2 and status.accepts["Put"] == [1]
    with pytest.raises(PromotionRefused, match="v1 is older than v2"):
        await old.promote()
    async with await Client.connect(nats_server.url, "boot") as client:
        await client.submit("Put", 2, put("k", "v2"))
    await old.progress.wait_for(lambda p: p.halted, timeout=10)
    assert "'Put' version 2" in (old.status().last_error or "")
    await caught_up(new, a.state.last_seq)
    assert new.digest() == a.digest() and not new.status().halted


async def test_a_standby_takes_snapshots_on_its_own_and_keeps_the_newest(
    start: Start, nats_server: NatsServer
) -> None:
    a = await start("a", primary=True)
    every = SnapshotSettings(every_commands=100, every_seconds=0.5, keep=2)
    with watch_logs() as logs:
        b = await start("b", snapshots=every)
        await submit_many(nats_server.url, 150)
        await logs.wait_for(f"stored: seq {a.state.last_seq},", timeout=20)
        await submit_many(nats_server.url, 150, first=150)
        final = a.state.last_seq
        await logs.wait_for(f"stored: seq {final},", timeout=20)
    assert b.status().snapshots_taken >= 2 and b.status().last_snapshot_seq == final
    nc = await connect(nats_server.url)
    try:
        async with await SnapshotStore.open(nc, JournalSettings(journal="boot")) as store:
            kept = await store.list()
    finally:
        await close_quietly(nc)
    assert kept[0].seq == final and len(kept) == 2
    assert all(m.node_id == "b" for m in kept)
    with pytest.raises(ActionRefused, match="the primary never pauses"):
        await a.take_snapshot(reason="no")


async def test_snapshot_cli_takes_lists_and_verifies(
    start: Start, nats_server: NatsServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    a = await start("a", primary=True)
    b = await start("b")
    await submit_many(nats_server.url, 30)
    await caught_up(b, a.state.last_seq)
    token = tmp_path / "token"
    token.write_text("t0ken")
    async with AdminServer(b, AdminSettings(token="t0ken", port=0)) as admin:
        args = ["snapshot", "take", "--admin", admin.url, "--token-file", str(token)]
        assert await asyncio.to_thread(main, args) == EXIT_OK
        args[-1] = str(tmp_path / "missing")
        assert await asyncio.to_thread(main, args) == EXIT_USAGE
    capsys.readouterr()
    where = ["--nats", nats_server.url, "--journal", "boot", "--json"]
    assert await asyncio.to_thread(main, ["snapshot", "list", *where]) == EXIT_OK
    listed = json.loads(capsys.readouterr().out)
    assert [m["seq"] for m in listed] == [31] and listed[0]["node_id"] == "b"
    verify = ["snapshot", "verify", *where, "--engine", "kv"]
    assert await asyncio.to_thread(main, verify) == EXIT_OK
    assert json.loads(capsys.readouterr().out)[0]["ok"] is True
    # Another engine cannot use it: refused, naming why, and exit 1 (none usable).
    engine = "tests.engines:KeyValueV2"
    assert await asyncio.to_thread(main, [*verify[:-2], "--engine", engine]) == EXIT_FAILED
    refusal = json.loads(capsys.readouterr().out)[0]["refusal"]
    assert "refused (engine)" in refusal and "version 2" in refusal
    assert await asyncio.to_thread(main, [*verify[:-2], "--engine", "nope"]) == EXIT_USAGE


async def test_a_node_with_other_limits_joins_a_bounded_stream_and_force_passes_the_gate(
    start: Start, nats_server: NatsServer
) -> None:
    a = await start("a", primary=True, journal=BOUNDED, engine=KeyValueV2)
    await submit_many(nats_server.url, 10)
    # Limits belong to the stream (set when it was made): a default node joins it as it is.
    old = await start("old", journal=JournalSettings(journal="boot"))
    await caught_up(old, a.state.last_seq)
    with pytest.raises(PromotionRefused, match="v1 is older than v2"):
        await old.promote()
    result = await old.promote(force=True, reason="rolling back the engine on purpose")
    assert result.forced and old.role is Role.PRIMARY
    async with await Client.connect(nats_server.url, "boot") as client:
        out = await client.submit("Put", 1, put("k", "v1 again"))
    assert out.seq == result.seq + 1 and old.state.writer_engine_version == 1
