"""``jetstandby bench e2e``: throughput, replication lag, failover time and memory, end to end.

A primary and a standby run as separate ``jetstandby run`` processes with the order-book
engine, on an embedded nats-server; load processes submit through ``jetstandby.Client``.

- **Baseline** (same run, first): the same commands applied to the engine in this process,
  no replication, no network (median of ``runs``).
- **Throughput**: closed-loop clients; the acknowledged rate after a warm-up. The CPU each
  process used meanwhile is reported, and the primary is profiled (cProfile) in a second run.
- **Lag**: open-loop clients at fractions of that maximum. Latency runs from when a command
  was due to when its client received the acknowledgement. Standby lag runs from that receipt
  to the standby's apply of the same seq (``time.time_ns()`` in both processes, one clock).
- **Failover**: SIGKILL of the primary, promotion of the caught-up standby at once, a fresh
  standby for the next round; to the first acknowledgement of a command after the marker.
- **Memory**: the standby's RSS replaying a journal of ``memory_count`` commands.
- **Cluster**: throughput and lag again on a 3-server cluster with an R3 stream.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from jetstandby.server import NatsCluster, NatsServer
from jetstandby_bench import e2e_memory, e2e_phases
from jetstandby_bench.common import machine
from jetstandby_bench.e2e_load import bounded_orders
from jetstandby_bench.e2e_phases import LoadShape, Setup
from jetstandby_bench.engine import timed_apply

TARGET_RATIO: Final = 0.5
TARGET_LAG_P99_MS: Final = 10.0
TARGET_PROMOTE_P99_MS: Final = 100.0
TARGET_RSS_GROWTH: Final = 0.10


@dataclass(frozen=True, kw_only=True)
class E2EBench:
    duration: float = 10.0
    warmup: float = 2.0
    # Long enough to hold a standby snapshot at 50% load (one per 100,000 commands): with 10 s
    # whether one fell in the window decided the p99.
    lag_duration: float = 30.0
    loads: tuple[float, ...] = (0.25, 0.5, 0.75)
    shape: LoadShape = field(default_factory=LoadShape)
    failovers: int = 10
    failover_rate: float = 500.0
    failover_load_s: float = 1.0
    memory_count: int = 5_000_000
    baseline_count: int = 200_000
    runs: int = 3
    profile_duration: float = 5.0
    skip_cluster: bool = False
    skip_memory: bool = False
    skip_failover: bool = False
    skip_profile: bool = False
    report_dir: Path | None = Path("reports")
    as_json: bool = False


def baseline(count: int, runs: int) -> dict[str, Any]:
    """The order book applying the same mix in process: no replication, no network."""
    from jetstandby.engine import Command

    commands = [
        Command(seq, 1_000 * seq, ctype, version, payload)
        for seq, (ctype, version, payload) in enumerate(bounded_orders(100, count), start=1)
    ]
    rates = sorted(timed_apply(commands)[0] for _ in range(runs))
    return {"baseline_throughput": round(rates[len(rates) // 2], 1), "baseline_runs": rates}


@contextlib.asynccontextmanager
async def servers(cluster: bool) -> AsyncIterator[tuple[str, list[int | None]]]:
    if cluster:
        async with NatsCluster() as nodes:
            yield nodes.url, [n.pid for n in nodes.nodes]
    else:
        async with NatsServer() as server:
            yield server.url, [server.pid]


async def run_phases(bench: E2EBench, workdir: Path, say: Any) -> dict[str, Any]:
    token = secrets.token_urlsafe(16)
    result: dict[str, Any] = {"machine": machine()}
    say(f"baseline: {bench.baseline_count:,} commands in process, median of {bench.runs}")
    result.update(baseline(bench.baseline_count, bench.runs))
    phase: dict[str, Any] = {
        "warmup": bench.warmup,
        "duration": bench.duration,
        "fractions": bench.loads,
        "lag_duration": bench.lag_duration,
    }
    async with servers(cluster=False) as (url, pids):
        setup = Setup("single", url, pids, 1, workdir, token)
        say("single server: maximum throughput, then lag at " + _loads(bench))
        result["single"] = await e2e_phases.throughput_and_lag(setup, bench.shape, **phase)
        if not bench.skip_profile:
            say("single server: profiling the primary under the same closed loop")
            result["profile"] = await e2e_phases.profile_primary(
                setup, bench.shape, bench.profile_duration
            )
        if not bench.skip_failover:
            say(f"single server: {bench.failovers} failovers at {bench.failover_rate:g}/s")
            result["failover"] = await e2e_phases.failovers(
                setup, bench.shape, bench.failovers, bench.failover_rate, bench.failover_load_s
            )
        if not bench.skip_memory:
            say(f"memory: writing {bench.memory_count:,} commands")
            result["memory_write_per_s"] = round(
                await e2e_memory.write_journal(url, bench.memory_count)
            )
            say(f"memory: a standby replays {bench.memory_count:,} commands")
            result["memory"] = await e2e_memory.measure(
                workdir, url, token, bench.memory_count, timeout=3600
            )
    if not bench.skip_cluster:
        async with servers(cluster=True) as (url, pids):
            setup = Setup("cluster", url, pids, 3, workdir, token)
            say("3-server cluster, R3 stream: maximum throughput, then lag at " + _loads(bench))
            result["cluster"] = await e2e_phases.throughput_and_lag(setup, bench.shape, **phase)
    return result


def _loads(bench: E2EBench) -> str:
    return ", ".join(f"{f:.0%}" for f in bench.loads)


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The top-level keys and the targets (``met`` is False where a target is missed)."""
    single = result["single"]
    top: dict[str, Any] = {
        "max_throughput": single["max_throughput"],
        "baseline_throughput": result["baseline_throughput"],
        "ratio_vs_no_replication": round(
            single["max_throughput"] / result["baseline_throughput"], 4
        ),
        "lag_p99_ms_at_50pct": _lag_p99_at(single, 0.5),
        "promote_ms_p99": result["failover"]["promote_ms"]["p99"] if "failover" in result else None,
        "failover_ms_p99": result["failover"]["total_ms"]["p99"] if "failover" in result else None,
        "rss_mb_1m": result["memory"]["rss_mb_early"] if "memory" in result else None,
        "rss_mb_5m": result["memory"]["rss_mb_end"] if "memory" in result else None,
        "rss_growth": result["memory"]["rss_growth"] if "memory" in result else None,
    }
    if "cluster" in result:
        top["cluster_max_throughput"] = result["cluster"]["max_throughput"]
        top["cluster_lag_p99_ms_at_50pct"] = _lag_p99_at(result["cluster"], 0.5)
    checks = {
        "ratio_vs_no_replication": (">=", TARGET_RATIO),
        "lag_p99_ms_at_50pct": ("<=", TARGET_LAG_P99_MS),
        "promote_ms_p99": ("<=", TARGET_PROMOTE_P99_MS),
        "rss_growth": ("<=", TARGET_RSS_GROWTH),
    }
    targets = {}
    for key, (op, target) in checks.items():
        value = top[key]
        if value is None:
            continue
        met = value >= target if op == ">=" else value <= target
        targets[key] = {"target": target, "op": op, "value": value, "met": met}
    top["targets"] = targets
    if "profile" in result and not targets["ratio_vs_no_replication"]["met"]:
        top["bottleneck"] = bottleneck(result)
    half = _level_at(single, 0.5)
    if half is not None and not targets["lag_p99_ms_at_50pct"]["met"]:
        top["lag_cause"] = lag_cause(half, result["machine"]["cores"])
    return top


def _level_at(phase: dict[str, Any], fraction: float) -> dict[str, Any] | None:
    for level in phase["levels"]:
        if abs(level["load"] - fraction) < 1e-9:
            return level  # type: ignore[no-any-return]
    return None


def _lag_p99_at(phase: dict[str, Any], fraction: float) -> float | None:
    level = _level_at(phase, fraction)
    return None if level is None else float(level["lag_ms"]["p99"])


def lag_cause(level: dict[str, Any], cores: int) -> str:
    """What the standby was doing at this load, from the run queue and its collections."""
    cpu, waited, gc = level["cpu_cores"], level["run_queue_wait_ms_per_s"], level["gc"]
    nodes = ", ".join(f"{name} {ms:.0f}" for name, ms in waited.items() if name != "standby")
    return (
        f"At {level['load']:.0%} load the machine was {cpu['machine']:.2f} of {cores} cores "
        f"busy. The standby used {cpu['standby']:.2f} of a core and was ready to run but "
        f"waiting for one {waited['standby']:.0f} ms in every second (ms/s for the others: "
        f"{nodes}). Its garbage collections paused it for {gc['standby']['max_ms']:.1f} ms at "
        f"most ({gc['standby']['count']} collections, {gc['standby']['full']} full)."
    )


def bottleneck(result: dict[str, Any]) -> str:
    """One sentence naming where the time goes, from the CPU shares and the profile."""
    cpu = dict(result["single"]["cpu_cores"])
    machine, others = cpu.pop("machine"), cpu.pop("others")
    busiest = max(cpu, key=lambda k: cpu[k])
    total = sum(cpu.values())
    areas = result["profile"]["own_time_by_area"]
    top_area = ", ".join(f"{area} {share:.0%}" for area, share in list(areas.items())[:4])
    top_fn = ", ".join(
        f"{row['function']} {row['own_share']:.0%}" for row in result["profile"]["top_own"][:4]
    )
    cores = result["machine"]["cores"]
    per_ack = result["single"]["cpu_us_per_ack"]
    split = ", ".join(f"{name} {us:.0f}" for name, us in per_ack.items() if name != "all")
    bound = cores / per_ack["all"] * 1e6 if per_ack.get("all") else 0.0
    return (
        f"CPU at the maximum: this run's processes used {total:.2f} of {cores} cores (the "
        f"machine {machine:.2f}, other processes {others:.2f}); the busiest is the {busiest} "
        f"({cpu[busiest]:.2f} of a core). The primary's own time (cProfile): "
        f"{top_area}; top functions: {top_fn}. Each acknowledged command cost "
        f"{per_ack.get('all', 0):.0f} µs of CPU over this run's processes ({split}): with "
        f"all {cores} cores to itself this setup could not pass ~{bound:,.0f}/s."
    )


async def run(bench: E2EBench) -> dict[str, Any]:
    from jetstandby_bench import e2e_report

    say = e2e_report.say_stderr if bench.as_json else e2e_report.say
    workdir = Path(tempfile.mkdtemp(prefix="jsb-e2e-"))
    try:
        result = await run_phases(bench, workdir, say)
    except BaseException:
        e2e_report.say_stderr(f"failed: the node and load logs are kept in {workdir}")
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    top = headline(result)
    full = {**top, **result, "settings": _settings(bench)}
    if bench.report_dir is not None:
        full["report"] = str(e2e_report.write_chart(bench.report_dir, full))
    e2e_report.show(full, as_json=bench.as_json)
    return full


def _settings(bench: E2EBench) -> dict[str, Any]:
    return {
        "duration": bench.duration,
        "warmup": bench.warmup,
        "lag_duration": bench.lag_duration,
        "loads": list(bench.loads),
        "client_procs": bench.shape.client_procs,
        "concurrency_per_proc": bench.shape.concurrency,
        "connections_per_proc": bench.shape.connections,
        "failovers": bench.failovers,
        "failover_rate": bench.failover_rate,
        "memory_count": bench.memory_count,
        "baseline_count": bench.baseline_count,
        "mix": "order book: 60% place, 30% cancel, 10% replace on 4 instruments, plus a mass "
        "cancel of one of the 16 accounts every 1,250 commands, in turn, so that each account "
        "cancels everything every 20,000 commands (bounded books)",
    }
