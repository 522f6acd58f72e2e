"""``jetstandby bench faults``: the fault-injection scenarios, with their figures.

The same scenario functions run as the slow tests (``tests/test_scenarios.py``). For each
scenario: cycles run, operations acknowledged, lost / duplicated / unexpected (all must be
0), and the failover time p50/p99 from the fault (SIGKILL or SIGSTOP of the primary, or a
cut of its link) to the first acknowledgement by the new primary.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from jetstandby.errors import ConfigError
from jetstandby_bench import (
    faults_failover,
    faults_link,
    faults_poison,
    faults_server,
    faults_usage,
)
from jetstandby_bench.faults_common import ScenarioResult


@dataclass(frozen=True)
class Scenario:
    run: Callable[[int, Path], Awaitable[ScenarioResult]]
    default_cycles: int
    what: str


SCENARIOS: dict[str, Scenario] = {
    "primary_kill": Scenario(
        faults_failover.primary_kill, 10, "SIGKILL the primary under load, promote, rejoin"
    ),
    "zombie": Scenario(
        faults_failover.zombie, 2, "SIGSTOP / pause-after-publish / double promotion"
    ),
    "server_restarts": Scenario(
        faults_server.server_restarts, 10, "kill -9 + restart nats-server, one 10 s SIGSTOP"
    ),
    "cluster_loss": Scenario(
        faults_server.cluster_loss, 6, "R3 cluster: kill the leader or a server; lose quorum"
    ),
    "link_faults": Scenario(
        faults_link.link_faults, 1, "proxy: cut the standby 30 s; cut the primary, promote"
    ),
    "poison": Scenario(faults_poison.poison, 1, "six kinds of poison; halt; operator skip"),
    "bad_input": Scenario(faults_usage.bad_input, 1, "bad config, engine, --nats; bad promotes"),
}


@dataclass(frozen=True)
class FaultsBench:
    cycles: int | None = None
    only: Sequence[str] = ()
    as_json: bool = False
    keep: bool = False


async def run(bench: FaultsBench) -> dict[str, Any]:
    """Run the chosen scenarios in order; print the table (or one JSON object); return
    ``{"scenarios": {name: figures}, "valid": bool}``."""
    unknown = [name for name in bench.only if name not in SCENARIOS]
    if unknown:
        raise ConfigError("--only", f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    names = list(bench.only) or list(SCENARIOS)
    # The in-process clients' reconnect warnings are the faults doing their job, not news.
    logging.getLogger("jetstandby.journal.stream").setLevel(logging.ERROR)
    console = Console(stderr=True)
    results: dict[str, ScenarioResult] = {}
    crashed: dict[str, tuple[int, str]] = {}
    seconds: dict[str, float] = {}
    base = Path(tempfile.mkdtemp(prefix="jsb-faults-"))
    for name in names:
        scenario = SCENARIOS[name]
        workdir = base / name
        workdir.mkdir()
        console.print(f"[bold]{name}[/bold]: {scenario.what} ...")
        start = time.monotonic()
        cycles = bench.cycles or scenario.default_cycles
        try:
            results[name] = await scenario.run(cycles, workdir)
        except Exception as exc:  # one scenario's crash must not hide the others' figures
            crashed[name] = (cycles, f"{type(exc).__name__}: {exc}")
            console.print(f"[bold red]{name} did not finish[/bold red]: {exc!r}")
        seconds[name] = round(time.monotonic() - start, 1)
        if name in results and not results[name].valid:
            console.print(results[name].explain())
    figures = {name: r.figures() for name, r in results.items()}
    figures.update({name: _crashed(cycles, error) for name, (cycles, error) in crashed.items()})
    valid = all(r.valid for r in results.values()) and not crashed
    out = {"scenarios": figures, "valid": valid}
    # With --json, stdout carries the JSON object alone and the table goes to stderr.
    print_table(figures, seconds, Console(stderr=bench.as_json, width=120))
    if bench.as_json:
        json.dump(figures, sys.stdout)
        sys.stdout.write("\n")
    if bench.keep or not out["valid"]:
        console.print(f"histories and node logs kept in {base}")
    else:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    return out


def _crashed(cycles: int, error: str) -> dict[str, Any]:
    """The row of a scenario that raised instead of finishing: nothing was checked."""
    row: dict[str, Any] = dict.fromkeys(
        ("acknowledged", "lost", "duplicated", "unexpected", "failover_ms_p50", "failover_ms_p99")
    )
    return {**row, "cycles": cycles, "valid": False, "error": error}


def print_table(
    figures: dict[str, dict[str, Any]], seconds: dict[str, float], console: Console
) -> None:
    table = Table(title="jetstandby fault scenarios")
    for column in (
        "scenario",
        "cycles",
        "acknowledged",
        "lost",
        "duplicated",
        "unexpected",
        "failover p50 ms",
        "failover p99 ms",
        "valid",
        "took s",
    ):
        left = column == "scenario"
        table.add_column(column, justify="left" if left else "right", no_wrap=left)
    for name, f in figures.items():
        table.add_row(
            name,
            str(f["cycles"]),
            "-" if f["acknowledged"] is None else f"{f['acknowledged']:,}",
            str(f["lost"]).replace("None", "-"),
            str(f["duplicated"]).replace("None", "-"),
            str(f["unexpected"]).replace("None", "-"),
            "-" if f["failover_ms_p50"] is None else f"{f['failover_ms_p50']:.1f}",
            "-" if f["failover_ms_p99"] is None else f"{f['failover_ms_p99']:.1f}",
            "yes" if f["valid"] else "NO",
            f"{seconds[name]:.0f}",
        )
    console.print(table)
