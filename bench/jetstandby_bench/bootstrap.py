"""``jetstandby bench bootstrap`` (issue 5): a new standby caught up by full replay, and by
snapshot plus tail.

Each run writes a fresh journal (:mod:`jetstandby_bench.prewrite`): an epoch marker, then
``count`` order-book commands from :func:`jetstandby.engines.orderbook.generate` (about 60%
places, 30% cancels, 10% replaces on four instruments), each with a request id. Standbys are
in-process :class:`~jetstandby.node.Node` objects, each on its own connection, with the order
book engine, snapshots on and periodic snapshots off. A standby is caught up when its replay
cursor reaches the stream's last seq (``progress.wait_for``, never a sleep).

1. **Full replay**: a fresh standby (its snapshot bucket empty, so it starts from command 1),
   from ``Node.run`` to its cursor at ``count + 1`` (the marker and ``count`` commands).
2. **Take**: ``Node.take_snapshot()`` on that standby, now at command ``count + 1``;
   Then its parts are timed alone on the same state: ``pause_s``, the part that stops
   replay (the fork, as a node captures by default); ``capture_s``, the whole capture in the
   child (encode, digest, back through the pipe); ``thread_pause_s``, what would stop replay
   with ``snapshot_capture = thread`` (``freeze()`` and the engine's digest, computed
   afresh); ``store_s``, putting the same snapshot again.
   Then ``tail`` more commands are written, which the first standby follows.
3. **Snapshot bootstrap**: another fresh standby, from ``Node.run`` to its cursor at the new
   end. It restores the snapshot and replays only the tail, so it catches up on ``tail``
   more commands than the full replay did: the ratio is, if anything, unfair to it.
   ``adopt_s``: from ``Node.run`` to the snapshot restored and adopted.
4. **Restore**: :func:`jetstandby.bootstrap.find_start` timed alone on the same store (list,
   fetch, checks, restore, digest proof), as the node's bootstrap calls it; then its two
   halves timed alone: ``fetch_s`` (``SnapshotStore.get``) and ``restore_only_s``
   (``restore_verified``: restore and digest).

``*_resubscribes``: how often a standby's feed had to re-subscribe (a delivery gap, a lost
connection) before it caught up; each costs ``resubscribe_delay`` and a redelivery.

Checked in every run: the first standby started from command 1, the second from the
snapshot, replaying exactly ``tail`` commands, and both end in the same state digest.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self

import nats.errors
from rich.console import Console
from rich.table import Table

from jetstandby.aio import cancel_and_wait
from jetstandby.bootstrap import find_start, stream_bounds
from jetstandby.config import JournalSettings, NodeSettings, SnapshotSettings
from jetstandby.engines.orderbook import OrderBookEngine, generate
from jetstandby.journal.stream import NatsClient, close_quietly, connect, ensure_stream
from jetstandby.node import Node
from jetstandby.snapshots import (
    SnapshotMeta,
    SnapshotStore,
    bucket_name,
    describe,
    restore_verified,
)
from jetstandby.snapshots.capturing import capture
from jetstandby.state import ReplicatedState
from jetstandby.status import Role
from jetstandby_bench.common import embedded_server, machine, ratio
from jetstandby_bench.prewrite import publish_commands, write_marker

TARGET_RATIO: Final = 1.0  # a snapshot bootstrap must beat a full replay
SEED: Final = 5
#: Seconds allowed per 1,000 commands to replay, on top of a fixed minute.
TIMEOUT_PER_1000: Final = 1.0

#: The figures of one run, in seconds unless named otherwise; the table lists them in order.
FIGURES: Final = (
    ("full_replay_s", "full replay: start → caught up"),
    ("snapshot_bootstrap_s", "snapshot bootstrap: start → caught up"),
    ("adopt_s", "  start → snapshot adopted"),
    ("tail_replay_s", "  tail replay"),
    ("take_s", "take_snapshot()"),
    ("pause_s", "  replay paused for it (the fork), alone"),
    ("capture_s", "  capture in the child (encode, digest, pipe), alone"),
    ("thread_pause_s", "  replay pause with snapshot_capture = thread, alone"),
    ("store_s", "  store (put again), alone"),
    ("restore_s", "restore: find_start() alone"),
    ("fetch_s", "  SnapshotStore.get() alone"),
    ("restore_only_s", "  restore_verified() alone"),
    ("snapshot_bytes", "snapshot size, bytes"),
    ("full_replay_per_s", "full replay, commands/s"),
    ("full_replay_resubscribes", "full replay: feed re-subscribes"),
    ("snapshot_bootstrap_resubscribes", "snapshot bootstrap: feed re-subscribes"),
    ("write_per_s", "journal pre-write, commands/s"),
)
#: Figures that are counts, not seconds.
_COUNTS: Final = ("_bytes", "_per_s", "_resubscribes")


@dataclass(frozen=True)
class BootstrapBench:
    count: int = 1_000_000
    tail: int = 10_000
    runs: int = 1
    as_json: bool = False


def node_settings(journal: str, node_id: str) -> NodeSettings:
    """A standby that starts from the newest snapshot and never takes one on its own."""
    return NodeSettings(
        node_id=node_id,
        journal=JournalSettings(journal=journal),
        snapshots=SnapshotSettings(every_commands=0, every_seconds=0, bootstrap=True),
    )


class Standby:
    """One in-process standby on its own connection; ``start()`` runs it, ``aclose()`` stops
    it and closes the connection."""

    def __init__(self, nc: NatsClient, settings: NodeSettings, timeout: float) -> None:
        self.node = Node(nc, OrderBookEngine(), settings, engine_factory=OrderBookEngine)
        self._nc = nc
        self._timeout = timeout
        self._task: asyncio.Task[Role] | None = None

    @classmethod
    async def connect(cls, url: str, settings: NodeSettings, timeout: float) -> Standby:
        return cls(await connect(url, name=f"bench-{settings.node_id}"), settings, timeout)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.node.run())

    async def reach(self, stream_seq: int) -> float:
        """Wait until the replay cursor is at ``stream_seq``; the ``perf_counter`` then."""
        assert self._task is not None
        progress = self.node.progress
        waiter = asyncio.ensure_future(
            progress.wait_for(lambda p: (p.replay_cursor_seq or 0) >= stream_seq or p.halted)
        )
        done, _ = await asyncio.wait(
            {waiter, self._task}, timeout=self._timeout, return_when=asyncio.FIRST_COMPLETED
        )
        reached = time.perf_counter()
        if waiter not in done:
            waiter.cancel()
            if self._task in done:
                raise RuntimeError(f"the standby stopped: {self._task.result()}")
            raise TimeoutError(f"the standby did not reach stream seq {stream_seq}")
        if progress.error is not None:
            raise RuntimeError(f"the standby halted: {progress.error}")
        return reached

    async def aclose(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
        await close_quietly(self._nc)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def take(
    nc: NatsClient, standby: Standby, journal: JournalSettings
) -> tuple[SnapshotMeta, dict[str, Any]]:
    """``take_snapshot()`` timed, then its three parts timed alone on the same state."""
    node = standby.node
    started = time.perf_counter()
    meta = await node.take_snapshot(reason="bench bootstrap")
    take_s = time.perf_counter() - started
    state = node.state
    started = time.perf_counter()
    captured = await capture(state, "fork", deadline=300)
    capture_s = time.perf_counter() - started
    started = time.perf_counter()
    state.freeze()
    state.engine.digest()  # afresh: the state caches it
    thread_pause_s = time.perf_counter() - started
    again = describe(
        captured.data,
        engine_name=state.name,
        engine_version=state.version,
        digest=captured.digest,
        settings=journal,
        seq=state.last_seq,
        stream_seq=meta.stream_seq,
        epoch=state.epoch,
        node_id=node.settings.node_id,
        stream_created=meta.stream_created,
    )
    if (again.sha256, again.digest) != (meta.sha256, meta.digest):
        raise AssertionError("the state changed between the snapshot and its second capture")
    async with await SnapshotStore.open(nc, journal) as store:
        started_store = time.perf_counter()
        await store.put(captured.data, meta)  # the same snapshot again: it replaces itself
        store_s = time.perf_counter() - started_store
    return meta, {
        "take_s": take_s,
        "pause_s": captured.paused_s,
        "capture_s": capture_s,
        "thread_pause_s": thread_pause_s,
        "store_s": store_s,
        "snapshot_bytes": meta.size,
    }


async def time_restore(
    nc: NatsClient, journal: JournalSettings, meta: SnapshotMeta
) -> dict[str, Any]:
    """``find_start()`` as a node's bootstrap calls it (``choose()`` within the stream's
    bounds), then its fetch and its restore alone."""

    def new_state() -> ReplicatedState:
        return ReplicatedState(OrderBookEngine())

    bounds = await stream_bounds(nc, journal)
    async with await SnapshotStore.open(nc, journal) as store:
        started = time.perf_counter()
        start = await find_start(store, new_state, bounds)
        restore_s = time.perf_counter() - started
        if start.snapshot != meta:
            raise AssertionError(f"the bootstrap did not pick snapshot {meta.name}")
        started = time.perf_counter()
        data = await store.get(meta)
        fetched = time.perf_counter()
        restore_verified(new_state, data, meta)
        done = time.perf_counter()
    return {"restore_s": restore_s, "fetch_s": fetched - started, "restore_only_s": done - fetched}


async def phases(
    url: str,
    nc: NatsClient,
    journal: JournalSettings,
    commands: Iterator[tuple[str, int, bytes]],
    bench: BootstrapBench,
) -> dict[str, Any]:
    """Full replay, take, the tail, snapshot bootstrap, restore (see the module docstring)."""
    end, tail_end = bench.count + 1, bench.count + 1 + bench.tail
    timeout = 60 + TIMEOUT_PER_1000 * tail_end / 1000
    async with await Standby.connect(url, node_settings(journal.journal, "full"), timeout) as a:
        started = time.perf_counter()
        a.start()
        full_replay_s = await a.reach(end) - started
        full_resubscribes = a.node.progress.resubscribes
        if a.node.status().started_from != "command 1" or a.node.state.last_seq != end:
            raise AssertionError(f"the full replay started from {a.node.status().started_from}")
        meta, taken = await take(nc, a, journal)
        await publish_commands(nc, journal, commands, first_seq=end + 1)
        await a.reach(tail_end)
        full_digest = a.node.digest()
    async with await Standby.connect(url, node_settings(journal.journal, "snap"), timeout) as b:
        started = time.perf_counter()
        b.start()
        adopt_s = await b.reach(meta.stream_seq) - started
        snapshot_bootstrap_s = await b.reach(tail_end) - started
        status = b.node.status()
        snapshot_resubscribes = b.node.progress.resubscribes
        if status.started_from != f"snapshot {meta.name}":
            raise AssertionError(f"the second standby started from {status.started_from}")
        if status.commands_replayed != bench.tail or b.node.digest() != full_digest:
            raise AssertionError(
                f"snapshot + {status.commands_replayed} commands gave digest "
                f"{b.node.digest()}, a full replay {full_digest}"
            )
    return {
        "full_replay_s": full_replay_s,
        "snapshot_bootstrap_s": snapshot_bootstrap_s,
        "adopt_s": adopt_s,
        "tail_replay_s": snapshot_bootstrap_s - adopt_s,
        **taken,
        **await time_restore(nc, journal, meta),
        "full_replay_per_s": end / full_replay_s,
        "full_replay_resubscribes": full_resubscribes,
        "snapshot_bootstrap_resubscribes": snapshot_resubscribes,
    }


async def one_run(url: str, bench: BootstrapBench, index: int) -> dict[str, Any]:
    """A fresh journal, the phases on it, and the journal and its snapshots deleted."""
    journal = JournalSettings(journal=f"bench_boot_{index}")
    commands = generate(SEED, bench.count + bench.tail)
    nc = await connect(url, name="jetstandby-bench-writer")
    try:
        await ensure_stream(nc, journal)
        await write_marker(nc, journal)
        first = itertools.islice(commands, bench.count)
        write_per_s = await publish_commands(nc, journal, first, first_seq=2)
        figures = await phases(url, nc, journal, commands, bench)
        figures["write_per_s"] = write_per_s
        return figures
    finally:
        await drop(nc, journal)
        await close_quietly(nc)


async def drop(nc: NatsClient, journal: JournalSettings) -> None:
    """Delete the journal's stream and snapshot bucket: a run's store is hundreds of MB."""
    js = nc.jetstream()
    with contextlib.suppress(nats.errors.Error):
        await js.delete_stream(journal.stream)
    with contextlib.suppress(nats.errors.Error):
        await js.delete_object_store(bucket_name(journal.journal))


async def run(bench: BootstrapBench) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    async with embedded_server() as server:
        for index in range(1, bench.runs + 1):
            runs.append(await one_run(server.url, bench, index))
    return report(bench, runs)


def _rounded(key: str, value: float) -> float | int:
    return round(value) if key.endswith(_COUNTS) else round(value, 4)


def report(bench: BootstrapBench, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Print a table (or one JSON object) of the medians; return the JSON-able result."""
    medians = {key: statistics.median(run[key] for run in runs) for key, _ in FIGURES}
    speedup = ratio(medians["full_replay_s"], medians["snapshot_bootstrap_s"])
    result: dict[str, Any] = {
        **{key: _rounded(key, value) for key, value in medians.items()},
        "count": bench.count,
        "tail": bench.tail,
        "ratio": speedup,
        "targets": {"ratio": {"target": TARGET_RATIO, "met": speedup >= TARGET_RATIO}},
        "seed": SEED,
        "runs": [{key: _rounded(key, run[key]) for key, _ in FIGURES} for run in runs],
        "machine": machine(),
    }
    if bench.as_json:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
        return result
    console = Console()
    table = Table(
        title=f"bootstrap: {bench.count:,} order-book commands + a tail of {bench.tail:,}, "
        f"median of {len(runs)}"
    )
    table.add_column("figure")
    table.add_column("median", justify="right")
    table.add_column("runs", justify="right")
    for key, label in FIGURES:
        shown = [_shown(key, run[key]) for run in runs]
        table.add_row(label, _shown(key, medians[key]), ", ".join(shown))
    console.print(table)
    verdict = "met" if speedup >= TARGET_RATIO else "NOT met"
    console.print(
        f"ratio full replay / snapshot bootstrap = {speedup:.2f} "
        f"(target ≥ {TARGET_RATIO:.1f}: {verdict})"
    )
    return result


def _shown(key: str, value: float) -> str:
    if key.endswith(_COUNTS):
        return f"{value:,.0f}"
    return f"{value:.3f} s"
