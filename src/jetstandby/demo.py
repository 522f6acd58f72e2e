"""``jetstandby demo``: a matching engine fails over without losing an order.

An embedded nats-server (or a 3-node cluster), a primary and standbys as separate OS
processes, and clients submitting order-book commands through the client library. Midway the
primary is killed with SIGKILL and the first standby is promoted through its admin API; the
clients retry and carry on. At the end every acknowledged command is checked against the
journal (applied exactly once) and the new primary's digest against an independent replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import signal
import statistics
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from jetstandby.client import Client
from jetstandby.config import JournalSettings
from jetstandby.engine import load_engine
from jetstandby.errors import ConfigError, SubmitError
from jetstandby.journal.stream import connect, read_journal
from jetstandby.procs import NodeProcess
from jetstandby.server import NatsCluster, NatsServer
from jetstandby.state import ReplicatedState

JOURNAL = "demo"


@dataclass(frozen=True, kw_only=True)
class DemoSettings:
    duration: float = 20.0
    rate: float = 1000.0  # commands/s over all writers; 0 = as fast as they go
    standbys: int = 1
    cluster: int = 1
    engine: str = "orderbook"
    writers: int = 8
    kill_at: float = 0.4  # fraction of the duration
    report_dir: Path | None = Path("reports")

    def __post_init__(self) -> None:
        if self.duration <= 0:
            raise ConfigError("--duration", "must be > 0")
        if self.standbys < 1:
            raise ConfigError("--standbys", "the demo promotes a standby: at least 1")
        if self.cluster not in (1, 3):
            raise ConfigError("--cluster", "1 (one server) or 3 (an R3 cluster)")


@dataclass
class Run:
    """What the demo saw, in monotonic seconds since it started."""

    acked: dict[str, tuple[int, float]] = field(default_factory=dict)  # rid -> (seq, t)
    failed: set[str] = field(default_factory=set)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)
    t_kill: float | None = None
    t_promoted: float | None = None
    marker_seq: int | None = None
    promote_took_ms: float | None = None
    phase: str = "starting"


def commands(engine: str) -> Iterator[tuple[str, int, bytes]]:
    if engine == "orderbook":
        from jetstandby.engines.orderbook import generate

        return generate(seed=7, count=100_000_000)
    from jetstandby.engines.kv import add

    return (("Add", 1, add(f"k{i % 97}", 1)) for i in itertools.count())


async def write(
    client: Client,
    source: Iterator[tuple[int, tuple[str, int, bytes]]],
    run: Run,
    settings: DemoSettings,
    start: float,
    stop: asyncio.Event,
) -> None:
    loop = asyncio.get_running_loop()
    for i, (ctype, version, payload) in source:
        if stop.is_set():
            return
        if settings.rate:
            await asyncio.sleep(max(0.0, start + i / settings.rate - loop.time()))
        rid = f"d{i}"
        try:
            out = await client.submit(ctype, version, payload, request_id=rid, deadline=30)
        except SubmitError:
            run.failed.add(rid)
            continue
        run.acked[rid] = (out.seq, loop.time() - start)


async def sample(nodes: list[NodeProcess], run: Run, start: float, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    last = 0
    while not stop.is_set():
        await asyncio.sleep(0.25)
        row: dict[str, Any] = {"t": round(loop.time() - start, 3), "acked": len(run.acked)}
        row["rate"] = (len(run.acked) - last) * 4
        last = len(run.acked)
        for node in nodes:
            if node.proc.returncode is None:
                with contextlib.suppress(Exception):
                    status = await node.status()
                    if status["role"] == "standby":
                        row.setdefault("lag_ms", status["lag_ms"])
                        row.setdefault("apply_delay_ms", status["last_apply_delay_ms"])
                        row.setdefault("lag_commands", status["stream_lag"] or 0)
                        row.setdefault("caught_up", status["caught_up"])
        run.timeline.append(row)


async def fail_over(primary: NodeProcess, standby: NodeProcess, run: Run, start: float) -> None:
    loop = asyncio.get_running_loop()
    run.phase = "load on the primary"
    primary.signal(signal.SIGKILL)
    run.t_kill = loop.time() - start
    run.events.append((run.t_kill, f"SIGKILL the primary ({primary.node_id})"))
    run.phase = "primary killed; promoting"
    code, result = await standby.promote()
    if code != 200:
        raise ConfigError("promote", f"the standby refused promotion ({code}): {result}")
    run.t_promoted = loop.time() - start
    run.marker_seq = int(result["seq"])
    run.promote_took_ms = float(result["took_ms"])
    run.events.append(
        (
            run.t_promoted,
            f"promoted {standby.node_id}: epoch {result['epoch']}, took {result['took_ms']:.1f} ms",
        )
    )
    run.phase = f"load on the new primary {standby.node_id}"


def view(run: Run, settings: DemoSettings, elapsed: float) -> Group:
    table = Table(title=f"jetstandby demo: {settings.engine} engine, primary → standby failover")
    table.add_column("")
    table.add_column("", justify="right")
    latest = run.timeline[-1] if run.timeline else {}
    rows = [
        ("elapsed", f"{elapsed:5.1f} / {settings.duration:.0f} s"),
        ("phase", run.phase),
        ("submit rate (acks/s)", f"{latest.get('rate', 0):,}"),
        ("acknowledged", f"{len(run.acked):,}"),
        ("failed after retries", f"{len(run.failed):,}"),
        (
            "standby lag",
            f"{latest.get('lag_commands', 0):,} commands, {latest.get('lag_ms', 0.0):.1f} ms",
        ),
        ("standby caught up", _yes_no(latest.get("caught_up"))),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return Group(table, *(f"{t:6.2f}s  {text}" for t, text in run.events[-4:]), "")


def _yes_no(value: object) -> str:
    return "-" if value is None else ("yes" if value else "no")


async def verify(
    url: str, new_primary: NodeProcess, others: list[NodeProcess], run: Run, engine: str
) -> dict[str, Any]:
    nc = await connect(url)
    try:
        journal = [env for _, env in await read_journal(nc, JournalSettings(journal=JOURNAL))]
    finally:
        await nc.close()
    applied = Counter(env.request_id for env in journal if env.request_id)
    by_seq = {env.seq: env.request_id for env in journal}
    lost = [rid for rid, (seq, _) in run.acked.items() if by_seq.get(seq) != rid]
    duplicates = [rid for rid, n in applied.items() if n > 1]
    state = ReplicatedState(load_engine(engine))
    for envelope in journal:
        state.apply(envelope)
    fresh = state.compared_digest().hex()  # what status shows
    digests = []
    for node in [new_primary, *others]:
        status = await node.wait_status(lambda s: s["last_applied_seq"] >= len(journal), 60)
        digests.append(status["state_digest"])
    return {
        "journal_commands": len(journal),
        "lost": len(lost),
        "duplicates": len(duplicates),
        "digest_match": all(d == fresh for d in digests),
        "digest": fresh[:16],
        "contiguous": [e.seq for e in journal] == list(range(1, len(journal) + 1)),
    }


def summarize(run: Run, checks: dict[str, Any], settings: DemoSettings) -> dict[str, Any]:
    # Replication lag: how long after the primary stamped a command the standby applied it,
    # sampled on the most recent command every 250 ms (one machine, one clock).
    lags = [
        row["apply_delay_ms"]
        for row in run.timeline
        if row.get("apply_delay_ms") is not None and (run.t_kill is None or row["t"] < run.t_kill)
    ]
    first_new = min(
        (t for seq, t in run.acked.values() if run.marker_seq is not None and seq > run.marker_seq),
        default=None,
    )
    failover = None if first_new is None or run.t_kill is None else (first_new - run.t_kill) * 1000
    quantile = (
        (lambda q: round(statistics.quantiles(lags, n=100)[q - 1], 2))
        if len(lags) > 1
        else (lambda q: float(lags[0]) if lags else 0.0)
    )
    summary = {
        "acknowledged": len(run.acked),
        "failed_after_retries": len(run.failed),
        "throughput": round(len(run.acked) / settings.duration, 1),
        "lag_p50_ms": quantile(50),
        "lag_p99_ms": quantile(99),
        "failover_ms": None if failover is None else round(failover, 1),
        "promote_at_s": None if run.t_promoted is None else round(run.t_promoted, 3),
        "promote_took_ms": run.promote_took_ms,
        **checks,
    }
    summary["ok"] = (
        summary["lost"] == 0
        and summary["duplicates"] == 0
        and summary["digest_match"]
        and summary["contiguous"]
        and failover is not None
    )
    return summary


async def run_demo(settings: DemoSettings, console: Console) -> dict[str, Any]:
    """Run the whole story; returns the summary (``ok`` is False if any check failed)."""
    token = secrets.token_urlsafe(24)
    run = Run()
    async with contextlib.AsyncExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="jsb-demo-")))
        servers: NatsServer | NatsCluster = NatsCluster() if settings.cluster == 3 else NatsServer()
        await stack.enter_async_context(servers)
        url = servers.url
        env = {"JETSTANDBY_REPLICAS": str(settings.cluster)}

        async def node(node_id: str, role: str) -> NodeProcess:
            process = await NodeProcess.start(
                workdir,
                node_id,
                url,
                token=token,
                journal=JOURNAL,
                role=role,
                engine=settings.engine,
                env=env,
            )
            stack.push_async_callback(process.close)
            return process

        primary = await node("n1", "primary")
        standbys = [await node(f"n{i + 2}", "standby") for i in range(settings.standbys)]
        clients = [
            await stack.enter_async_context(await Client.connect(url, JOURNAL))
            for _ in range(settings.writers)
        ]
        loop = asyncio.get_running_loop()
        start, stop = loop.time(), asyncio.Event()
        source = enumerate(commands(settings.engine))
        tasks = [asyncio.create_task(write(c, source, run, settings, start, stop)) for c in clients]
        tasks.append(asyncio.create_task(sample([primary, *standbys], run, start, stop)))
        run.phase = "load on the primary"
        with Live(view(run, settings, 0), console=console, refresh_per_second=4) as live:

            async def tick_until(t: float) -> None:
                while (now := loop.time() - start) < t:
                    live.update(view(run, settings, now))
                    await asyncio.sleep(0.25)

            await tick_until(settings.duration * settings.kill_at)
            await fail_over(primary, standbys[0], run, start)
            await tick_until(settings.duration)
            stop.set()
            run.phase = "stopping the clients; verifying"
            await asyncio.gather(*tasks)
            live.update(view(run, settings, loop.time() - start))
        checks = await verify(url, standbys[0], standbys[1:], run, settings.engine)
    summary = summarize(run, checks, settings)
    if settings.report_dir is not None:
        from jetstandby.demo_report import write_report

        summary["report"] = str(
            write_report(settings.report_dir, summary, run.timeline, run.events)
        )
    return summary
