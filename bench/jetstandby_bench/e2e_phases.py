"""The measured phases of ``jetstandby bench e2e``: throughput and lag, profile, failover.

Every phase runs a primary and a standby as ``jetstandby run`` processes (the recording order
book of :mod:`e2e_engine`) on its own journal, and drives them with ``e2e_load`` processes.
"""

from __future__ import annotations

import asyncio
import pstats
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from jetstandby.procs import NodeProcess
from jetstandby_bench.e2e_procs import (
    CpuMeter,
    LoadProcess,
    read_applies,
    read_rows,
    run_loads,
    start_node,
    stop_node,
)

TOP_FUNCTIONS: Final = 12


@dataclass(frozen=True)
class Setup:
    """Where the nodes run: one server (``replicas=1``) or a cluster (R3)."""

    name: str
    url: str
    server_pids: list[int | None]
    replicas: int
    workdir: Path
    token: str


@dataclass(frozen=True, kw_only=True)
class LoadShape:
    client_procs: int = 2
    concurrency: int = 64  # per client process, closed loop
    connections: int = 4  # per client process


def pct(values: Any, qs: tuple[float, ...]) -> list[float]:
    if len(values) == 0:
        return [0.0 for _ in qs]
    return [round(float(v), 3) for v in np.percentile(values, qs)]


def per_second(acked_ns: Any, start_ns: int, seconds: int) -> list[int]:
    bins = np.arange(seconds + 1) * 1_000_000_000 + start_ns
    counts, _ = np.histogram(acked_ns, bins=bins)
    return [int(c) for c in counts]


async def pair(
    setup: Setup,
    journal: str,
    *,
    standby_env: dict[str, str] | None = None,
    primary_env: dict[str, str] | None = None,
) -> tuple[NodeProcess, NodeProcess]:
    """A primary serving ``journal`` and a caught-up standby."""
    common: dict[str, Any] = {
        "token": setup.token,
        "journal": journal,
        "replicas": setup.replicas,
    }
    primary = await start_node(
        setup.workdir, f"{journal}_p", setup.url, role="primary", env=primary_env, **common
    )
    try:
        standby = await start_node(
            setup.workdir, f"{journal}_s", setup.url, role="standby", env=standby_env, **common
        )
        await standby.wait_status(lambda s: bool(s["caught_up"]), 60)
    except BaseException:
        await stop_node(primary)
        raise
    return primary, standby


async def loads(
    setup: Setup, journal: str, shape: LoadShape, tag: str, *args: str
) -> list[LoadProcess]:
    started: list[LoadProcess] = []
    try:
        for i in range(shape.client_procs):
            started.append(
                await LoadProcess.start(
                    setup.workdir,
                    f"{tag}{i}",
                    setup.url,
                    journal,
                    "--seed",
                    str(100 + i),
                    "--connections",
                    str(shape.connections),
                    *args,
                )
            )
    except BaseException:
        for load in started:
            await load.kill()
        raise
    return started


async def max_throughput(
    setup: Setup,
    journal: str,
    shape: LoadShape,
    primary: NodeProcess,
    standby: NodeProcess,
    *,
    warmup: float,
    duration: float,
) -> dict[str, Any]:
    """Closed-loop clients as fast as the acknowledgements come; the rate after ``warmup``."""
    procs = await loads(
        setup, journal, shape, "max",
        "--mode", "closed", "--concurrency", str(shape.concurrency),
        "--duration", str(warmup + duration),
    )  # fmt: skip
    pids: dict[str, int | None] = {"primary": primary.proc.pid, "standby": standby.proc.pid}
    pids.update({f"nats-server{i + 1}": pid for i, pid in enumerate(setup.server_pids)})
    pids.update({f"client{i + 1}": load.pid for i, load in enumerate(procs)})
    meter = CpuMeter(pids)
    for load in procs:
        await load.send("GO")
    await asyncio.sleep(warmup)
    meter.start()
    await asyncio.sleep(duration)
    cpu = meter.stop()
    rows = await run_loads(procs)
    start = min(load.summary["started_ns"] for load in procs) + int(warmup * 1e9)
    window = rows[(rows[:, 2] >= start) & (rows[:, 2] < start + int(duration * 1e9))]
    seconds = per_second(window[:, 2], start, int(duration))
    latency = (window[:, 2] - window[:, 1]) / 1e6
    rate = len(window) / duration
    ours = {name: cores for name, cores in cpu.items() if name not in ("machine", "others")}
    per_ack = {name: round(cores / rate * 1e6, 1) for name, cores in ours.items()} if rate else {}
    per_ack["all"] = round(sum(per_ack.values()), 1)
    return {
        "max_throughput": round(rate, 1),
        "cpu_us_per_ack": per_ack,
        "per_second": seconds,
        "latency_ms_p50_p99": pct(latency, (50, 99)),
        "failed": sum(load.summary["failed"] for load in procs),
        "cpu_cores": cpu,
        "client_procs": shape.client_procs,
        "concurrency": shape.client_procs * shape.concurrency,
    }


@dataclass
class Offered:
    """What one open-loop level measured: the load processes' rows ``(seq, due, acked)``,
    their failures and retried acknowledgements (a retry after the client's per-try timeout
    adds load just when the primary is slow), the window it ran in (``time.time_ns()``), and
    the cores each node used and how many milliseconds per second it waited for one."""

    rows: np.ndarray[Any, Any]
    failed: int
    retried: int
    window_ns: tuple[int, int]
    cores: dict[str, float]
    waited: dict[str, float]


async def offered_load(
    setup: Setup,
    journal: str,
    shape: LoadShape,
    rate: float,
    duration: float,
    tag: str,
    nodes: dict[str, int | None],
) -> Offered:
    """Open-loop load at ``rate`` per second for ``duration``; ``nodes`` are metered."""
    procs = await loads(
        setup, journal, shape, tag,
        "--mode", "open", "--rate", str(rate / shape.client_procs), "--duration", str(duration),
    )  # fmt: skip
    meter = CpuMeter(nodes)
    meter.start()
    started = time.time_ns()
    rows = await run_loads(procs)
    window = (started, time.time_ns())
    cores = meter.stop()
    failed = sum(load.summary["failed"] for load in procs)
    retried = sum(load.summary["retried"] for load in procs)
    return Offered(rows, failed, retried, window, cores, meter.waited)


def collections(log: Any, window_ns: tuple[int, int]) -> dict[str, float]:
    """A node's garbage collections that ended within ``window_ns``: how many, their total
    and longest pause (ms), and how many were full (generation 2)."""
    inside = log[(log[:, 1] >= window_ns[0]) & (log[:, 1] < window_ns[1])]
    pauses = inside[:, 2] / 1e6
    return {
        "count": len(inside),
        "full": int((inside[:, 0] == 2).sum()),
        "total_ms": round(float(pauses.sum()), 1),
        "max_ms": round(float(pauses.max(initial=0)), 1),
    }


def lag_level(
    fraction: float | None, rate: float, duration: float, rows: Any, failed: int, applies: Any
) -> dict[str, Any]:
    """Latency and lag of one offered load. ``applies``: the standby's (seq, applied, stamp).
    ``fraction``: of the measured maximum, or None for a load given as a rate."""
    latency = (rows[:, 2] - rows[:, 1]) / 1e6
    by_seq = np.zeros(int(max(applies[:, 0].max(initial=0), rows[:, 0].max(initial=0))) + 1,
                      dtype=np.int64)  # fmt: skip
    stamps = np.zeros_like(by_seq)
    by_seq[applies[:, 0]] = applies[:, 1]
    stamps[applies[:, 0]] = applies[:, 2]
    applied = by_seq[rows[:, 0]]
    seen = applied > 0
    lag = (applied[seen] - rows[seen, 2]) / 1e6
    stamp_lag = (applied[seen] - stamps[rows[seen, 0]]) / 1e6
    return {
        "load": fraction,
        "offered_per_s": round(rate, 1),
        "achieved_per_s": round(len(rows) / duration, 1),
        "failed": failed,
        "latency_ms": dict(zip(("p50", "p99", "p99.9"), pct(latency, (50, 99, 99.9)), strict=True)),
        "lag_ms": {
            **dict(
                zip(("p50", "p99", "p99.9"), pct(np.maximum(lag, 0), (50, 99, 99.9)), strict=True)
            ),
            "max": round(float(lag.max(initial=0)), 3),
        },
        "lag_negative_share": round(float((lag < 0).mean()), 4) if len(lag) else 0.0,
        "lag_min_ms": round(float(lag.min(initial=0)), 3),
        "lag_signed_ms": dict(zip(("p1", "p50", "p99"), pct(lag, (1, 50, 99)), strict=True)),
        "stamp_to_apply_ms": dict(
            zip(("p50", "p99", "max"), pct(stamp_lag, (50, 99, 100)), strict=True)
        ),
        "not_applied": int((~seen).sum()),
    }


def measured_level(
    fraction: float | None, rate: float, duration: float, offered: Offered, applies: Any
) -> dict[str, Any]:
    """:func:`lag_level` of an offered load, with its retries and what the nodes used."""
    return {
        **lag_level(fraction, rate, duration, offered.rows, offered.failed, applies),
        "retried": offered.retried,
        "cpu_cores": offered.cores,
        "run_queue_wait_ms_per_s": offered.waited,
    }


def metered_nodes(
    setup: Setup, primary: NodeProcess, standby: NodeProcess
) -> dict[str, int | None]:
    """The processes whose CPU and run-queue waits a level reports, by name."""
    nodes: dict[str, int | None] = {"primary": primary.proc.pid, "standby": standby.proc.pid}
    nodes.update({f"nats-server{i + 1}": pid for i, pid in enumerate(setup.server_pids)})
    return nodes


async def caught_up(primary: NodeProcess, standby: NodeProcess) -> None:
    """Until the standby has applied everything the primary has (at most 60 s)."""
    tail = (await primary.status())["last_applied_seq"]
    await standby.wait_status(lambda s: s["last_applied_seq"] >= tail, 60)


async def stop_pair(primary: NodeProcess, standby: NodeProcess) -> None:
    await stop_node(standby)  # it writes its apply log as it exits
    await stop_node(primary)


async def throughput_and_lag(
    setup: Setup,
    shape: LoadShape,
    *,
    warmup: float,
    duration: float,
    fractions: tuple[float, ...],
    lag_duration: float,
) -> dict[str, Any]:
    journal = f"e2e_{setup.name}"
    apply_log = setup.workdir / f"{journal}.applies"
    gc_logs = {role: setup.workdir / f"{journal}_{role}.gc" for role in ("primary", "standby")}
    recording = {"JSB_E2E_APPLY_LOG": str(apply_log), "JSB_E2E_APPLY_CAP": "3000000"}
    primary, standby = await pair(
        setup,
        journal,
        standby_env={**recording, "JSB_E2E_GC_LOG": str(gc_logs["standby"])},
        primary_env={"JSB_E2E_GC_LOG": str(gc_logs["primary"])},
    )
    nodes = metered_nodes(setup, primary, standby)
    try:
        result = await max_throughput(
            setup, journal, shape, primary, standby, warmup=warmup, duration=duration
        )
        levels = []
        for fraction in fractions:
            rate = fraction * result["max_throughput"]
            tag = f"lag{int(fraction * 100)}_"
            offered = await offered_load(setup, journal, shape, rate, lag_duration, tag, nodes)
            levels.append((fraction, rate, offered))
        await caught_up(primary, standby)
    finally:
        await stop_pair(primary, standby)
    applies = read_applies(apply_log, standby)
    gcs = {role: read_rows(path, 3) for role, path in gc_logs.items()}
    result["levels"] = [
        {
            **measured_level(fraction, rate, lag_duration, o, applies),
            "gc": {role: collections(log, o.window_ns) for role, log in gcs.items()},
        }
        for fraction, rate, o in levels
    ]
    return result


async def profile_primary(setup: Setup, shape: LoadShape, duration: float) -> dict[str, Any]:
    """The primary under cProfile while closed-loop clients run: where its time goes."""
    journal = f"e2e_{setup.name}_prof"
    stats_file = setup.workdir / "primary.pstats"
    primary, standby = await pair(setup, journal, primary_env={"JSB_E2E_PROFILE": str(stats_file)})
    try:
        result = await max_throughput(
            setup, journal, shape, primary, standby, warmup=1.0, duration=duration
        )
    finally:
        await stop_pair(primary, standby)  # the primary dumps its profile as it exits
    return {
        "throughput_under_profiler": result["max_throughput"],
        "cpu_cores": result["cpu_cores"],
        **top_functions(stats_file),
    }


def top_functions(stats_file: Path) -> dict[str, Any]:
    stats = pstats.Stats(str(stats_file))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    idle = {k for k in raw if "poll" in k[2] and "epoll" in k[2]}
    busy = sum(v[2] for k, v in raw.items() if k not in idle) or 1e-9

    def name(key: tuple[str, int, str]) -> str:
        path, line, func = key
        short = "/".join(Path(path).parts[-2:]) if path not in ("~", "") else ""
        return f"{short}:{line}({func})" if short else func

    def row(key: Any) -> dict[str, Any]:
        calls, _, tottime, cumtime, _ = raw[key]
        return {
            "function": name(key),
            "calls": calls,
            "own_s": round(tottime, 3),
            "own_share": round(tottime / busy, 3),
            "cum_s": round(cumtime, 3),
        }

    keys = [k for k in raw if k not in idle]
    by_own = sorted(keys, key=lambda k: raw[k][2], reverse=True)[:TOP_FUNCTIONS]
    by_cum = sorted(keys, key=lambda k: raw[k][3], reverse=True)[:TOP_FUNCTIONS]
    areas: dict[str, float] = {}
    for key in keys:
        areas[_area(key[0], key[2])] = areas.get(_area(key[0], key[2]), 0.0) + raw[key][2]
    return {
        "busy_s": round(busy, 2),
        "idle_s": round(sum(raw[k][2] for k in idle), 2),
        "own_time_by_area": {
            a: round(t / busy, 3) for a, t in sorted(areas.items(), key=lambda x: -x[1])
        },
        "top_own": [row(k) for k in by_own],
        "top_cumulative": [row(k) for k in by_cum],
    }


def _area(path: str, func: str) -> str:
    for marker, area in (
        ("/nats/", "nats-py (protocol, request/reply, publish)"),
        ("/jetstandby/journal/", "jetstandby journal"),
        ("/jetstandby/engines/", "order-book engine"),
        ("/jetstandby/", "jetstandby node, primary, state"),
        ("/asyncio/", "asyncio event loop"),
    ):
        if marker in path:
            return area
    if "msgspec" in func or "msgpack" in func:
        return "msgspec encode/decode"
    if path == "~":
        return "builtins (sockets, time, dict, ...)"
    return "other"


async def failovers(
    setup: Setup, shape: LoadShape, rounds: int, rate: float, load_s: float
) -> dict[str, Any]:
    """Kill the primary (SIGKILL) ``rounds`` times under an open-loop load; each time promote
    the caught-up standby at once and start a fresh standby for the next round."""
    journal = f"e2e_{setup.name}_failover"
    primary, standby = await pair(setup, journal)
    single = LoadShape(client_procs=1, concurrency=1, connections=shape.connections)
    (load,) = await loads(setup, journal, single, "fo", "--mode", "open", "--rate", str(rate),
                          "--duration", "0")  # fmt: skip
    events: list[dict[str, Any]] = []
    nodes = [primary, standby]
    try:
        await load.send("GO")
        for n in range(rounds):
            await asyncio.sleep(load_s)
            await standby.wait_status(
                lambda s: bool(s["caught_up"]) and (s["stream_lag"] or 0) <= 5, 60
            )
            events.append(await kill_and_promote(primary, standby))
            primary = standby
            standby = await start_node(
                setup.workdir, f"fo{n + 2}", setup.url, token=setup.token, journal=journal,
                role="standby", replicas=setup.replicas,
            )  # fmt: skip
            nodes.append(standby)
            await standby.wait_status(lambda s: bool(s["caught_up"]), 60)
        await asyncio.sleep(load_s)
        await load.send("STOP")
        rows = await load.finish()
    finally:
        await load.kill()
        for node in nodes:
            await stop_node(node)
    return summarize_failovers(events, rows, load.summary.get("failed", 0))


async def kill_and_promote(primary: NodeProcess, standby: NodeProcess) -> dict[str, Any]:
    killed_ns = time.time_ns()
    primary.signal(signal.SIGKILL)
    asked_ns = time.time_ns()  # the bench is the operator: it promotes at once
    code, body = await standby.promote()
    answered_ns = time.time_ns()
    if code != 200:
        raise RuntimeError(f"promotion refused ({code}): {body}")
    await primary.wait()
    return {
        "killed_ns": killed_ns,
        "asked_ns": asked_ns,
        "answered_ns": answered_ns,
        "marker_seq": int(body["seq"]),
        "promote_ms": float(body["took_ms"]),
    }


def _fresh_ack_ms(after: Any, event: dict[str, Any]) -> float | None:
    fresh = after[after[:, 1] >= event["answered_ns"]]
    if not len(fresh):
        return None
    return round((int(fresh[:, 2].min()) - int(event["answered_ns"])) / 1e6, 3)


def summarize_failovers(events: list[dict[str, Any]], rows: Any, failed: int) -> dict[str, Any]:
    out = []
    for event in events:
        after = rows[rows[:, 0] > event["marker_seq"]]
        first_ns = int(after[:, 2].min()) if len(after) else 0
        first_sent = int(after[after[:, 2].argmin(), 1]) if len(after) else 0
        total = (first_ns - event["killed_ns"]) / 1e6 if first_ns else None
        detection = (event["asked_ns"] - event["killed_ns"]) / 1e6
        out.append({
            "total_ms": None if total is None else round(total, 3),
            "detection_ms": round(detection, 3),
            "promote_ms": round(event["promote_ms"], 3),
            "first_ack_ms": None if total is None
            else round(total - detection - event["promote_ms"], 3),
            "promote_http_ms": round((event["answered_ns"] - event["asked_ns"]) / 1e6, 3),
            # was the first command acknowledged a retry from the outage, and how soon was a
            # command first sent after the promotion answered acknowledged?
            "first_ack_sent_ms": round((first_sent - event["killed_ns"]) / 1e6, 3)
            if first_sent else None,
            "fresh_ack_ms": _fresh_ack_ms(after, event),
        })  # fmt: skip

    def p50_p99(key: str) -> dict[str, float]:
        values = [r[key] for r in out if r[key] is not None]
        return dict(zip(("p50", "p99"), pct(np.array(values), (50, 99)), strict=True))

    return {
        "count": len(out),
        "total_ms": p50_p99("total_ms"),
        "detection_ms": p50_p99("detection_ms"),
        "promote_ms": p50_p99("promote_ms"),
        "first_ack_ms": p50_p99("first_ack_ms"),
        "rounds": out,
        "acknowledged": len(rows),
        "failed_after_retries": failed,
        "lost_first_ack": sum(r["total_ms"] is None for r in out),
    }
