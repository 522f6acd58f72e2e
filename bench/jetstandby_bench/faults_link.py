"""Scenario 5: link faults through a TCP proxy in front of each node's server connection.

Per cycle: the standby's link is cut for ``STANDBY_CUT`` seconds under load, and it must
catch up afterwards without halting; then the primary's link is cut under load, the standby
is promoted, and the link restored: every append the old primary retries must be refused
(no command of its epoch after the new marker), and it exits 4 (fenced). The old primary
comes back as a fresh standby (its own proxy) for the next cycle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from jetstandby.history import HistoryWriter
from jetstandby.server import NatsServer
from jetstandby_bench.faults_common import (
    Nodes,
    ScenarioResult,
    Workload,
    epochs_after_markers,
    markers,
    verify,
)
from jetstandby_bench.faults_failover import EXIT_FENCED, LOAD_BETWEEN_FAULTS, promote, replaying

STANDBY_CUT: Final = 30.0


def _back_to(seq: int) -> Callable[[dict[str, Any]], bool]:
    return lambda s: bool(s["halted"] or s["last_applied_seq"] >= seq)


async def link_faults(cycles: int, workdir: Path, *, seed: int = 1) -> ScenarioResult:
    history_path = workdir / "history.jsonl"
    problems: list[str] = []
    failovers: list[float] = []
    facts: dict[str, Any] = {"standby_behind_after_cut": [], "old_primary_exit": []}
    loop = asyncio.get_running_loop()
    async with NatsServer() as server, Nodes(workdir, server.url, proxied=True) as nodes:
        primary = await nodes.start("primary")
        standby = await nodes.start()
        with HistoryWriter(history_path) as history:
            async with Workload(server.url, history) as load:
                for _ in range(cycles):
                    await replaying(standby)
                    await load.more(LOAD_BETWEEN_FAULTS)
                    link = nodes.proxies[standby.node_id]
                    link.cut()
                    await asyncio.sleep(STANDBY_CUT)  # the fault's duration
                    tail = max(seq for _, seq in load.acks)
                    behind = tail - (await standby.status())["last_applied_seq"]
                    facts["standby_behind_after_cut"].append(behind)
                    link.restore()
                    status = await standby.wait_status(_back_to(tail), 120)
                    if status["halted"]:
                        problems.append(f"the standby halted after its link came back: {status}")
                        break
                    await load.more(LOAD_BETWEEN_FAULTS)
                    nodes.proxies[primary.node_id].cut()
                    t_cut = loop.time()
                    result = await promote(standby, problems)
                    if result is None:
                        break
                    failovers.append((await load.ack_after(result["seq"], t_cut) - t_cut) * 1e3)
                    await load.more(LOAD_BETWEEN_FAULTS)
                    nodes.proxies[primary.node_id].restore()
                    code = await primary.wait(timeout=60)
                    facts["old_primary_exit"].append(code)
                    if code != EXIT_FENCED:
                        problems.append(f"the cut-off primary exited {code}, not 4 (fenced)")
                    primary, standby = standby, await nodes.start()
                await load.more(LOAD_BETWEEN_FAULTS)
            check, envelopes = await verify(server.url, history_path, nodes.live())
    problems += epochs_after_markers(envelopes)
    facts["epochs"] = [m.epoch for m in markers(envelopes)]
    if any(b <= 0 for b in facts["standby_behind_after_cut"]):
        problems.append("the standby was not behind after its cut: the cut proved nothing")
    return ScenarioResult(
        "link_faults", cycles, check.acknowledged, check, failovers, facts=facts, problems=problems
    )
