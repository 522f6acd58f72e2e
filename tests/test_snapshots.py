"""Snapshots in the JetStream Object Store, against a real nats-server: store, read, verify."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from nats.js.api import ObjectMeta

from jetstandby.config import JournalSettings
from jetstandby.engine import Command
from jetstandby.engines.kv import KeyValueEngine, add, put
from jetstandby.engines.orderbook import OrderBookEngine, generate
from jetstandby.errors import ConfigError, JournalUnavailable, SnapshotError
from jetstandby.journal.stream import NatsClient, close_quietly, connect
from jetstandby.server import NatsServer
from jetstandby.snapshots import (
    CHUNK_SIZE,
    READ_WINDOW_BYTES,
    Refusal,
    SnapshotEngine,
    SnapshotMeta,
    SnapshotStore,
    capture,
    check_meta,
    choose,
    restore_verified,
    verify,
)
from tests.support import watch_logs

SETTINGS = JournalSettings(journal="snaptest")
TAKEN_AT = 1_700_000_000_000


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NatsClient]:
    client = await connect(nats_server.url)
    yield client
    await close_quietly(client)


@pytest.fixture
async def store(nc: NatsClient) -> AsyncIterator[SnapshotStore]:
    async with await SnapshotStore.open(nc, SETTINGS, keep=10) as snapshots:
        yield snapshots


def kv_engine(commands: int) -> KeyValueEngine:
    engine = KeyValueEngine()
    for seq in range(1, commands + 1):
        payload = add("counter", seq) if seq % 3 == 0 else put(f"k{seq % 17}", f"v{seq}")
        engine.apply(Command(seq, 1_000 + seq, "Add" if seq % 3 == 0 else "Put", 1, payload))
    return engine


def book_engine(commands: int) -> OrderBookEngine:
    engine = OrderBookEngine()
    for seq, (command_type, version, payload) in enumerate(generate(7, commands), start=1):
        engine.apply(Command(seq, 1_000 + seq, command_type, version, payload))
    return engine


def snap(
    engine: SnapshotEngine, seq: int, *, epoch: int = 1, node: str = "a"
) -> tuple[bytes, SnapshotMeta]:
    return capture(
        engine,
        settings=SETTINGS,
        seq=seq,
        stream_seq=seq,
        epoch=epoch,
        node_id=node,
        taken_at_unix_ms=TAKEN_AT + seq,
    )


def blob(size: int, seq: int) -> tuple[bytes, SnapshotMeta]:
    """Arbitrary bytes of ``size`` with metadata describing them, as if a kv snapshot."""
    data = random.Random(size).randbytes(size)
    _, meta = snap(KeyValueEngine(), seq)
    return data, msgspec.structs.replace(meta, size=size, sha256=hashlib.sha256(data).hexdigest())


async def put_raw(nc: NatsClient, store: SnapshotStore, data: bytes, meta: SnapshotMeta) -> None:
    """Write an object with nats-py directly, bypassing every check of SnapshotStore.put."""
    objects = await nc.jetstream().object_store(store.bucket)
    description = msgspec.json.encode(meta).decode()
    await objects.put(meta.name, data, meta=ObjectMeta(name=meta.name, description=description))


# --- storing and reading -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "factory"),
    [(lambda: kv_engine(300), KeyValueEngine), (lambda: book_engine(2_000), OrderBookEngine)],
    ids=["kv", "orderbook"],
)
async def test_round_trip_restores_the_same_state(
    store: SnapshotStore, build: Callable[[], SnapshotEngine], factory: Callable[[], SnapshotEngine]
) -> None:
    engine = build()
    data, meta = snap(engine, 300, epoch=2, node="node_1")
    assert await store.put(data, meta) == meta
    assert await store.list() == [meta]
    assert meta.name == "snap-00000000000000000300-2-node_1"
    assert await store.get(meta) == await store.get(meta.name) == data
    restored = restore_verified(factory, data, meta)
    assert restored.digest() == engine.digest()
    assert restored.snapshot() == data
    assert store.bucket == "JSB_SNAP_SNAPTEST"


async def test_retention_keeps_the_newest_and_lists_newest_first(nc: NatsClient) -> None:
    async with await SnapshotStore.open(nc, SETTINGS, keep=3) as store:
        metas = {}
        for seq in (30, 10, 50, 20, 40):
            data, metas[seq] = snap(kv_engine(seq), seq)
            await store.put(data, metas[seq])
        assert [m.seq for m in await store.list()] == [50, 40, 30]
        # Same seq from another epoch or node: newer epoch first, both kept while newest.
        data, other = snap(kv_engine(50), 50, epoch=2, node="b")
        await store.put(data, other)
        assert [(m.seq, m.epoch) for m in await store.list()] == [(50, 2), (50, 1), (40, 1)]
        with pytest.raises(SnapshotError) as refused:
            await store.get(metas[10])
        assert refused.value.reason == Refusal.MISSING
        assert not await store.delete(metas[30])  # already pruned
        assert await store.delete(metas[40])
        assert [m.seq for m in await store.list()] == [50, 50]
        data, again = snap(kv_engine(50), 50, epoch=2, node="b")
        await store.put(data, again)  # the same snapshot again replaces it
        assert len(await store.list()) == 2
        # Two one-chunk snapshots and their metas: no tombstones, no stale chunks.
        info = await nc.jetstream().stream_info(f"OBJ_{store.bucket}")
        assert info.state.messages == 4
        # A second store on the same bucket sees the same snapshots.
        async with await SnapshotStore.open(nc, SETTINGS, keep=3) as second:
            assert await second.list() == await store.list()


async def test_fast_get_returns_what_nats_py_returns(nc: NatsClient, store: SnapshotStore) -> None:
    objects = await nc.jetstream().object_store(store.bucket)
    sizes = [
        0,
        1,
        CHUNK_SIZE - 1,
        CHUNK_SIZE,
        CHUNK_SIZE + 1,
        2 * CHUNK_SIZE,
        READ_WINDOW_BYTES + 3 * CHUNK_SIZE + 7,
    ]
    for seq, size in enumerate(sizes, start=1):
        data, meta = blob(size, seq)
        await store.put(data, meta)
        fast = await store.get(meta)
        assert fast == (await objects.get(meta.name)).data == data, size
    assert len(await store.list()) == len(sizes)


async def test_empty_bucket_lists_nothing(store: SnapshotStore) -> None:
    assert await store.list() == []
    with pytest.raises(SnapshotError) as refused:
        await store.get("snap-00000000000000000001-1-a")
    assert refused.value.reason == Refusal.MISSING
    assert not await store.delete("snap-00000000000000000001-1-a")


async def test_put_refuses_metadata_that_does_not_describe_the_data(
    store: SnapshotStore,
) -> None:
    data, meta = snap(kv_engine(5), 5)
    cases = [
        (data[:-1], meta, Refusal.SIZE),
        (data[:-1] + b"\x00", meta, Refusal.CHECKSUM),
        (data, msgspec.structs.replace(meta, journal="other", stream="JSB_OTHER"), Refusal.STREAM),
        (data, msgspec.structs.replace(meta, node_id="a b"), Refusal.METADATA),
    ]
    for bad_data, bad_meta, reason in cases:
        with pytest.raises(SnapshotError) as refused:
            await store.put(bad_data, bad_meta)
        assert refused.value.reason == reason
    assert await store.list() == []


async def test_get_refuses_objects_corrupted_in_the_store(
    nc: NatsClient, store: SnapshotStore
) -> None:
    js = nc.jetstream()
    stream = f"OBJ_{store.bucket}"
    truncated_data, truncated = blob(3 * CHUNK_SIZE, 1)
    await store.put(truncated_data, truncated)
    await js.delete_msg(stream, 2)  # a fresh bucket: chunks at 1, 2, 3; the middle one is gone

    flipped_data, flipped = blob(2 * CHUNK_SIZE, 2)
    await store.put(flipped_data, flipped)
    encoded_name = base64.urlsafe_b64encode(flipped.name.encode()).decode()
    meta_subject = f"$O.{store.bucket}.M.{encoded_name}"
    info = json.loads((await js.get_last_msg(stream, meta_subject)).data or b"")
    info["digest"] = "SHA-256=" + "A" * 43 + "="  # the store's digest no longer matches
    await js.publish(meta_subject, json.dumps(info).encode(), headers={"Nats-Rollup": "sub"})

    for meta, reason, words in [
        (truncated, Refusal.SIZE, "2 of 3 chunks"),
        (flipped, Refusal.CHECKSUM, "object store's SHA-256"),
    ]:
        with pytest.raises(SnapshotError) as refused:
            await store.get(meta)
        assert refused.value.reason == reason
        assert words in str(refused.value)
        assert refused.value.snapshot == meta.name


# --- verification ----------------------------------------------------------------------------


class KeyValueV2(KeyValueEngine):
    version = 2


class Broken(KeyValueEngine):
    def restore(self, data: bytes) -> None:
        raise ValueError("cannot read this")


def test_verify_refuses_each_kind_of_bad_snapshot() -> None:
    engine = kv_engine(40)
    data, meta = snap(engine, 40)
    bounds: dict[str, Any] = {
        "stream_first_seq": 1,
        "stream_last_seq": 40,
        "stream_name": SETTINGS.stream,
    }
    verify(data, meta, engine=KeyValueEngine(), **bounds)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01
    cases: list[tuple[bytes, SnapshotMeta, SnapshotEngine, dict[str, Any], Refusal, str]] = [
        (bytes(flipped), meta, KeyValueEngine(), {}, Refusal.CHECKSUM, "sha256"),
        (data[:-3], meta, KeyValueEngine(), {}, Refusal.SIZE, "truncated"),
        (data, meta, KeyValueV2(), {}, Refusal.ENGINE, "version 1, this node runs 'kv' version 2"),
        (data, meta, OrderBookEngine(), {}, Refusal.ENGINE, "'orderbook'"),
        (data, meta, KeyValueEngine(), {"stream_name": "JSB_OTHER"}, Refusal.STREAM, "JSB_OTHER"),
        (data, meta, KeyValueEngine(), {"stream_last_seq": 39}, Refusal.BEYOND_TAIL, "39"),
        (data, meta, KeyValueEngine(), {"stream_first_seq": 42}, Refusal.TOO_OLD, "starts at 42"),
        (data, msgspec.structs.replace(meta, format=2), KeyValueEngine(), {}, Refusal.FORMAT, "2"),
    ]
    for bad_data, bad_meta, node_engine, changes, reason, words in cases:
        with pytest.raises(SnapshotError) as refused:
            verify(bad_data, bad_meta, engine=node_engine, **(bounds | changes))
        assert refused.value.reason == reason
        assert words in str(refused.value), str(refused.value)
        assert refused.value.snapshot == meta.name
    # Everything up to 40 was purged (first 41, last 40): replay can still resume at 41.
    check_meta(meta, engine=engine, **(bounds | {"stream_first_seq": 41}))


def test_restore_verified_proves_the_digest() -> None:
    data, meta = snap(kv_engine(12), 12)
    assert restore_verified(KeyValueEngine, data, meta).digest().hex() == meta.digest
    with pytest.raises(SnapshotError) as refused:
        restore_verified(KeyValueEngine, data, msgspec.structs.replace(meta, digest="00" * 32))
    assert refused.value.reason == Refusal.DIGEST
    with pytest.raises(SnapshotError) as refused:
        restore_verified(Broken, data, meta)
    assert refused.value.reason == Refusal.RESTORE
    assert "cannot read this" in str(refused.value)


# --- choosing ------------------------------------------------------------------------------


async def test_choose_falls_back_to_the_newest_good_snapshot(
    nc: NatsClient, store: SnapshotStore
) -> None:
    good_data, good = snap(kv_engine(10), 10)
    await store.put(good_data, good)
    data, older_good = snap(kv_engine(5), 5)
    await store.put(data, older_good)
    # Newer than the good one, and each bad in its own way.
    data, meta = snap(kv_engine(20), 20)
    await put_raw(nc, store, data[:-1] + bytes([data[-1] ^ 0xFF]), meta)  # flipped bytes
    data, meta = snap(kv_engine(30), 30)
    await put_raw(nc, store, data[: len(data) // 2], meta)  # truncated
    data, meta = snap(KeyValueV2(), 40)
    await store.put(data, meta)  # another engine version
    data, meta = snap(kv_engine(70), 70)
    await store.put(data, meta)  # beyond the tail: the stream ends at 60
    data, meta = snap(kv_engine(55), 55)
    await store.put(data, msgspec.structs.replace(meta, digest="11" * 32))  # digest mismatch
    # Last: a put prunes snapshots of other streams, which no node can use.
    data, meta = snap(kv_engine(50), 50)
    await put_raw(nc, store, data, msgspec.structs.replace(meta, stream="JSB_OTHER"))

    with watch_logs("jetstandby.snapshots") as logs:
        chosen = await choose(store, KeyValueEngine, stream_first_seq=1, stream_last_seq=60)
    assert chosen is not None
    assert chosen.meta == good
    assert chosen.engine.digest() == kv_engine(10).digest()
    refusals = logs.seen("falling back to the next older snapshot")
    expected = [
        (70, "beyond_tail"),
        (55, "digest"),
        (50, "stream"),
        (40, "engine"),
        (30, "size"),
        (20, "checksum"),
    ]
    assert len(refusals) == len(expected)
    for line, (seq, reason) in zip(refusals, expected, strict=True):
        assert f"snapshot snap-{seq:020d}-1-a refused ({reason})" in line, line
    assert logs.seen("restored snapshot snap-00000000000000000010-1-a")

    # With the good ones gone, every snapshot is refused, and none is chosen.
    assert await store.delete(good)
    assert await store.delete(older_good)
    with watch_logs("jetstandby.snapshots") as logs:
        assert await choose(store, KeyValueEngine, stream_first_seq=1, stream_last_seq=60) is None
    assert len(logs.seen("falling back to the next older snapshot")) == len(expected)
    assert logs.seen("no usable snapshot among 6 in bucket JSB_SNAP_SNAPTEST")


async def test_a_put_prunes_snapshots_of_an_earlier_stream_before_its_own(
    nc: NatsClient, store: SnapshotStore
) -> None:
    # The journal's stream was deleted and created again: the old one's snapshots have
    # higher seqs, and must not push out (or outlive) the new stream's.
    for seq in (1000, 1001, 1002):
        data, meta = snap(kv_engine(3), seq)
        await put_raw(nc, store, data, msgspec.structs.replace(meta, stream_created="old"))
    data, meta = snap(kv_engine(10), 10)
    new = msgspec.structs.replace(meta, stream_created="new")
    await store.put(data, new)
    assert [m.name for m in await store.list()] == [new.name]


# --- the store's life and its errors ------------------------------------------------------


async def test_open_validates_and_close_is_final(nc: NatsClient) -> None:
    with pytest.raises(ConfigError):
        await SnapshotStore.open(nc, SETTINGS, keep=0)
    with pytest.raises(ConfigError):
        await SnapshotStore.open(nc, SETTINGS, replicas=2)
    with pytest.raises(SnapshotError) as refused:
        await SnapshotStore.open(nc, SETTINGS, replicas=3)  # a single server cannot hold R3
    assert refused.value.reason == Refusal.STORE
    store = await SnapshotStore.open(nc, SETTINGS)
    await store.aclose()
    await store.aclose()
    with pytest.raises(SnapshotError) as refused:
        await store.list()
    assert refused.value.reason == Refusal.CLOSED
    with pytest.raises(SnapshotError):
        await choose(store, KeyValueEngine, stream_first_seq=1, stream_last_seq=1)


async def test_a_missing_server_is_journal_unavailable(
    nc: NatsClient, nats_server: NatsServer
) -> None:
    settings = JournalSettings(journal="snaptest", request_timeout=0.1)
    store = await SnapshotStore.open(nc, settings)
    data, meta = snap(kv_engine(3), 3)
    await store.put(data, meta)
    await nats_server.stop()
    with pytest.raises(JournalUnavailable):
        await store.list()
    with pytest.raises(JournalUnavailable):
        await store.get(meta)
    with pytest.raises(JournalUnavailable):
        await store.put(data, meta)
    with pytest.raises(JournalUnavailable):
        await store.delete(meta)
    with pytest.raises(JournalUnavailable):
        await SnapshotStore.open(nc, settings)


# --- the 50 MB measurement ---------------------------------------------------------------


@pytest.mark.slow
async def test_50_mb_put_and_get_timings(nc: NatsClient, store: SnapshotStore) -> None:
    """Run with ``pytest tests/test_snapshots.py -m slow -s`` to see the timings."""
    data, meta = blob(50 * 2**20, 1)  # random bytes: nothing to compress
    objects = await nc.jetstream().object_store(store.bucket)

    started = time.perf_counter()
    await store.put(data, meta)
    put_s = time.perf_counter() - started
    started = time.perf_counter()
    fast = await store.get(meta)
    fast_s = time.perf_counter() - started
    started = time.perf_counter()
    slow = (await objects.get(meta.name)).data
    nats_py_s = time.perf_counter() - started

    assert fast == slow == data
    print(
        f"\n50 MiB snapshot: put {put_s:.2f} s, get {fast_s:.2f} s (jetstandby), "
        f"{nats_py_s:.2f} s (nats-py ObjectStore.get)"
    )
    assert fast_s < nats_py_s
