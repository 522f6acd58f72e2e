"""``jetstandby bench lag``: the standby's lag at one fixed rate, over several fresh runs.

On a shared machine the lag p99 of a single ``bench e2e`` level moves by a factor of two
from run to run (a snapshot falls in the window or not, a neighbour is busy or not). This
bench repeats one open-loop level with the e2e bench's own nodes, load processes and
measurement, each run on a fresh server and fresh nodes, after a warm-up that builds the
books and the exactly-once record, and reports every run and the median of their p99s.

``--standby-nice N`` runs the standby at that scheduling priority (below 0 needs root): on
this shared machine its lag tail is time spent waiting for a core behind the primary, the
server and the load processes, and a higher priority stands in for the core of its own a
deployment gives it.

``--check-exactly-once`` also reads the whole journal after each run and counts the request
ids journaled more than once (must be 0), beside the primary's ``overloaded`` refusals: at a
rate beyond capacity (``--rate 12000``) this is the admission-control check.
"""

from __future__ import annotations

import json
import secrets
import shutil
import statistics
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from jetstandby.config import JournalSettings
from jetstandby.journal.stream import close_quietly, connect, read_journal
from jetstandby.procs import NodeProcess
from jetstandby.server import NatsServer
from jetstandby_bench import e2e_report
from jetstandby_bench.e2e_phases import (
    LoadShape,
    Setup,
    caught_up,
    measured_level,
    metered_nodes,
    offered_load,
    pair,
    stop_pair,
)
from jetstandby_bench.e2e_procs import read_applies, renice

JOURNAL = "lagruns"


@dataclass(frozen=True, kw_only=True)
class LagBench:
    rate: float = 3050.0
    duration: float = 30.0
    runs: int = 5
    warmup_rate: float = 4000.0
    warmup: float = 15.0
    shape: LoadShape = field(default_factory=LoadShape)
    standby_nice: int = 0
    check_exactly_once: bool = False
    as_json: bool = False


async def one_run(bench: LagBench, workdir: Path) -> dict[str, Any]:
    """A fresh server and pair, the warm-up, then the measured level."""
    apply_log = workdir / f"{JOURNAL}.applies"
    expected = bench.warmup_rate * bench.warmup + bench.rate * bench.duration
    recording = {"JSB_E2E_APPLY_LOG": str(apply_log), "JSB_E2E_APPLY_CAP": str(int(expected * 2))}
    async with NatsServer() as server:
        setup = Setup("single", server.url, [server.pid], 1, workdir, secrets.token_urlsafe(16))
        primary, standby = await pair(setup, JOURNAL, standby_env=recording)
        nodes = metered_nodes(setup, primary, standby)
        try:
            if bench.standby_nice:
                renice(standby.proc.pid, bench.standby_nice)
            await offered_load(
                setup, JOURNAL, bench.shape, bench.warmup_rate, bench.warmup, "warm", nodes
            )
            level = await offered_load(
                setup, JOURNAL, bench.shape, bench.rate, bench.duration, "lag", nodes
            )
            await caught_up(primary, standby)
            checked = await exactly_once(server.url, primary) if bench.check_exactly_once else {}
        finally:
            await stop_pair(primary, standby)
    applies = read_applies(apply_log, standby)
    measured = measured_level(None, bench.rate, bench.duration, level, applies)
    return {**measured, **checked}


async def exactly_once(url: str, primary: NodeProcess) -> dict[str, int]:
    """Request ids the journal holds more than once (each extra copy counts), and the
    primary's ``overloaded`` refusals."""
    status = await primary.status()
    nc = await connect(url, name="jetstandby-bench-reader")
    try:
        journal = await read_journal(nc, JournalSettings(journal=JOURNAL))
    finally:
        await close_quietly(nc)
    ids = Counter(env.request_id for _, env in journal if env.request_id)
    return {
        "journaled": len(journal),
        "duplicate_applies": sum(count - 1 for count in ids.values()),
        "overloaded": int(status["submissions_overloaded"]),
    }


def summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    p99s = [run["lag_ms"]["p99"] for run in runs]
    return {"median": round(statistics.median(p99s), 3), "min": min(p99s), "max": max(p99s)}


async def run(bench: LagBench) -> dict[str, Any]:
    say = e2e_report.say_stderr if bench.as_json else e2e_report.say
    base = Path(tempfile.mkdtemp(prefix="jsb-lag-"))
    runs = []
    for n in range(bench.runs):
        warm = f"{bench.warmup:g} s at {bench.warmup_rate:,.0f}/s"
        say(
            f"run {n + 1} of {bench.runs}: {warm}, then {bench.duration:g} s at {bench.rate:,.0f}/s"
        )
        workdir = base / f"run{n + 1}"
        workdir.mkdir()
        try:
            runs.append(await one_run(bench, workdir))
        except BaseException:
            e2e_report.say_stderr(f"failed: the node and load logs are kept in {workdir}")
            raise
    shutil.rmtree(base, ignore_errors=True)
    result = {
        "rate": bench.rate,
        "duration": bench.duration,
        "warmup_rate": bench.warmup_rate,
        "warmup": bench.warmup,
        "standby_nice": bench.standby_nice,
        "lag_p99_ms": summary(runs),
        "runs": runs,
    }
    show(result, as_json=bench.as_json)
    return result


def show(result: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
        return
    nice = f", standby at nice {result['standby_nice']}" if result["standby_nice"] else ""
    table = Table(
        title=f"standby lag at {result['rate']:,.0f}/s, {result['duration']:g} s per run{nice} (ms)"
    )
    for column in ("run", "acked/s", "latency p99", "lag p99", "p99.9", "max", "failed / retried"):
        table.add_column(column, justify="right")
    checked = "duplicate_applies" in result["runs"][0]
    if checked:
        table.add_column("overloaded / applied twice", justify="right")
    for n, level in enumerate(result["runs"], 1):
        lag = level["lag_ms"]
        table.add_row(
            str(n), f"{level['achieved_per_s']:,.0f}", f"{level['latency_ms']['p99']:.1f}",
            f"{lag['p99']:.1f}", f"{lag['p99.9']:.1f}", f"{lag['max']:.1f}",
            f"{level['failed']} / {level['retried']}",
            *([f"{level['overloaded']} / {level['duplicate_applies']}"] if checked else []),
        )  # fmt: skip
    p99 = result["lag_p99_ms"]
    console = Console()
    console.print(table)
    spread = f"{p99['min']:.1f} to {p99['max']:.1f}"
    console.print(
        f"lag p99: median {p99['median']:.1f} ms over {len(result['runs'])} runs, {spread}"
    )
