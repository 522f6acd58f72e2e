"""``jetstandby demo``: a primary's journal and a hot standby, through a nats-server crash.

The primary side journals commands at a steady rate; a standby replays them into a digest.
Midway the embedded nats-server is killed with SIGKILL and restarted on the same store. At the
end the standby is promoted and checked against an independent read of the whole journal:
every acknowledged command applied exactly once, and the same digest.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from jetstandby import wire
from jetstandby.config import JournalSettings, ReplaySettings
from jetstandby.errors import FencedError, JournalError, JournalUnavailable
from jetstandby.journal import CommandJournal, JetStreamFeed, Position, connect, ensure_stream
from jetstandby.replay import ReplayProgress, promote_channel, run_replay_loop
from jetstandby.server import NatsServer


@dataclass(frozen=True, kw_only=True)
class DemoSettings:
    duration: float = 15.0
    rate: float = 2000.0
    nats: str | None = None
    crash_server: bool = True
    journal: str = "demo"


class DigestEngine:
    """The standby's engine for the demo: a running digest of every command it applies."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.applied: Counter[int] = Counter()
        self.last_seq = 0

    def handle_command(self, command: wire.Envelope) -> None:
        self.applied[command.seq] += 1
        self.last_seq = command.seq
        self.hash.update(command.seq.to_bytes(8, "big"))
        self.hash.update(command.payload)


@dataclass
class Stats:
    appended: int = 0
    acknowledged: int = 0
    unavailable: int = 0
    acked_seqs: set[int] = field(default_factory=set)
    crashes: int = 0
    events: list[str] = field(default_factory=list)


def payload(seq: int) -> bytes:
    return f"set k{seq % 997}={seq * 7919 % 1_000_003}".encode()


async def primary(journal: CommandJournal, stats: Stats, settings: DemoSettings) -> None:
    """Append at ``rate`` per second for ``duration`` seconds; count acknowledgements."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    interval = 1.0 / settings.rate if settings.rate > 0 else 0.0
    pending: set[asyncio.Future[Any]] = set()

    def done(seq: int, future: asyncio.Future[Any]) -> None:
        pending.discard(future)
        if future.cancelled():
            return
        if future.exception() is None:
            stats.acknowledged += 1
            stats.acked_seqs.add(seq)
        elif isinstance(future.exception(), JournalUnavailable):
            stats.unavailable += 1

    while loop.time() - start < settings.duration:
        seq = journal.next_seq
        command = wire.Envelope(1, seq, journal.epoch, time.time_ns(), "Set", 1, payload(seq))
        try:
            future = await journal.append(command)
        except JournalUnavailable:
            stats.unavailable += 1
            continue
        stats.appended += 1
        pending.add(future)
        future.add_done_callback(functools.partial(done, seq))
        if interval:
            await asyncio.sleep(max(0.0, start + stats.appended * interval - loop.time()))
    while pending:
        await asyncio.wait(set(pending))


async def crash_server(server: NatsServer, stats: Stats, at: float) -> None:
    await asyncio.sleep(at)
    stats.events.append(f"{time.strftime('%X')} SIGKILL nats-server (pid {server.pid})")
    await server.stop(kill=True)
    await server.start()
    stats.crashes += 1
    stats.events.append(f"{time.strftime('%X')} nats-server restarted on the same store")


def view(stats: Stats, progress: ReplayProgress, started: float) -> Group:
    elapsed = max(time.monotonic() - started, 1e-9)
    table = Table(title="jetstandby demo: primary journal → JetStream → hot standby")
    table.add_column("what")
    table.add_column("value", justify="right")
    lag_ms = 0.0
    if progress.stream_lag and progress.last_timestamp_ns:
        lag_ms = max(0.0, (time.time_ns() - progress.last_timestamp_ns) / 1e6)
    rows = [
        ("elapsed", f"{elapsed:.1f} s"),
        ("appended", f"{stats.appended:,}"),
        ("acknowledged", f"{stats.acknowledged:,}  ({stats.acknowledged / elapsed:,.0f}/s)"),
        ("unacknowledged within bound (retried)", f"{stats.unavailable:,}"),
        ("standby replayed", f"{progress.commands_replayed:,}"),
        ("standby lag", f"{progress.stream_lag or 0:,} commands, ~{lag_ms:.0f} ms"),
        ("standby caught up", "yes" if progress.caught_up else "no"),
        ("standby re-subscribes", f"{progress.resubscribes}"),
        ("nats-server crashes", f"{stats.crashes}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return Group(table, *stats.events[-4:], "")


async def read_journal(url: str, settings: JournalSettings) -> DigestEngine:
    """An independent from-scratch replay of the whole journal."""
    nc = await connect(url)
    feed = await JetStreamFeed.open(nc, settings)
    engine, progress = DigestEngine(), ReplayProgress()
    sender, signal = promote_channel()
    task = asyncio.create_task(run_replay_loop(feed, engine, progress, signal))
    tail = await feed.last_stream_seq()
    await progress.wait_for(lambda p: (p.replay_cursor_seq or 0) >= tail, timeout=60)
    sender.promote()
    await task
    await nc.close()
    return engine


async def run_demo(settings: DemoSettings, console: Console) -> dict[str, Any]:
    """Run the story and return the summary; ``ok`` is False if any check failed."""
    server = None if settings.nats else NatsServer()
    if server is not None:
        await server.start()
    url = settings.nats or server.url  # type: ignore[union-attr]
    journal_settings = JournalSettings(journal=settings.journal, unavailable_after=5.0)
    replay_settings = ReplaySettings(resubscribe_delay=0.2, resubscribe_failure_delay=0.5)
    try:
        primary_nc, standby_nc = await connect(url), await connect(url)
        await ensure_stream(primary_nc, journal_settings)
        if await JetStreamFeed(primary_nc, journal_settings).last_stream_seq() > 0:
            raise JournalError(
                f"journal {settings.journal!r} is not empty on {url}: pass a fresh --journal name"
            )
        journal = await CommandJournal.open(primary_nc, journal_settings, epoch=1, after=Position())
        feed = JetStreamFeed(standby_nc, journal_settings, replay_settings)
        engine, progress, stats = DigestEngine(), ReplayProgress(), Stats()
        sender, signal = promote_channel()
        started = time.monotonic()
        standby = asyncio.create_task(
            run_replay_loop(feed, engine, progress, signal, settings=replay_settings)
        )
        tasks = [asyncio.create_task(primary(journal, stats, settings))]
        if server is not None and settings.crash_server:
            tasks.append(asyncio.create_task(crash_server(server, stats, settings.duration * 0.4)))
        with Live(view(stats, progress, started), console=console, refresh_per_second=8) as live:
            while not tasks[0].done():
                live.update(view(stats, progress, started))
                await asyncio.wait(tasks, timeout=0.125, return_when=asyncio.FIRST_COMPLETED)
            await asyncio.gather(*tasks)
            await journal.aclose()  # nothing more is resent; the stream's tail is final
            tail = await feed.last_stream_seq()
            await progress.wait_for(lambda p: (p.replay_cursor_seq or 0) >= tail, timeout=60)
            live.update(view(stats, progress, started))
        elapsed = time.monotonic() - started
        sender.promote()
        await standby
        independent = await read_journal(url, journal_settings)
        await primary_nc.close()
        await standby_nc.close()
    except FencedError as exc:
        raise JournalError(f"demo journal was fenced unexpectedly: {exc}") from exc
    finally:
        if server is not None:
            await server.aclose()
    lost = sorted(s for s in stats.acked_seqs if engine.applied[s] == 0)
    duplicates = sorted(s for s, n in engine.applied.items() if n > 1)
    digest_match = engine.hash.digest() == independent.hash.digest()
    contiguous = sorted(engine.applied) == list(range(1, engine.last_seq + 1))
    return {
        "ok": not lost and not duplicates and digest_match and contiguous,
        "acknowledged": stats.acknowledged,
        "applied_by_standby": len(engine.applied),
        "lost": len(lost),
        "duplicates": len(duplicates),
        "contiguous": contiguous,
        "digest_match": digest_match,
        "throughput": round(stats.acknowledged / elapsed, 1),
        "server_crashes": stats.crashes,
        "standby_resubscribes": progress.resubscribes,
        "digest": engine.hash.hexdigest()[:16],
    }
