"""Scenarios 1 and 2: the primary killed under load, and zombie primaries.

1. ``primary_kill``: several writers; SIGKILL the primary at a random moment; promote the
   standby; the old primary comes back as a fresh standby. One failover per cycle.
2. ``zombie``: per cycle three variants: SIGSTOP the primary, promote, SIGCONT; SIGSTOP the
   primary right after it sent bytes to NATS (a publish in flight), promote, SIGCONT; two
   standbys promoted at once after the primary died. At most one writer may append at a
   time: no command of an older epoch after a newer marker, the zombie exits 4 (fenced),
   and the requests that were queued at the zombie get errors, never an acknowledgement.
"""

from __future__ import annotations

import asyncio
import random
import signal
from pathlib import Path
from typing import Any

from jetstandby.history import HistoryWriter
from jetstandby.procs import NodeProcess
from jetstandby.server import NatsServer
from jetstandby_bench.faults_common import (
    Nodes,
    RawRequests,
    ScenarioResult,
    Workload,
    epochs_after_markers,
    markers,
    verify,
)

EXIT_FENCED = 4
LOAD_BETWEEN_FAULTS = 150
ZOMBIE_REQUESTS = 8
#: At most this far behind before a fault: a standby that just started is replaying.
READY_LAG = 500


async def replaying(node: NodeProcess, timeout: float = 60.0) -> dict[str, Any]:
    """Wait until a standby has started replaying and is close to the tail (under load the
    tail moves, so "caught up" may flicker; close is what a promotion needs)."""
    return await node.wait_status(
        lambda s: (
            s["role"] == "standby"
            and not s["halted"]
            and s["stream_lag"] is not None
            and s["stream_lag"] < READY_LAG
        ),
        timeout,
    )


async def promote(node: NodeProcess, problems: list[str]) -> dict[str, Any] | None:
    code, body = await node.promote()
    if code != 200:
        problems.append(f"promote {node.node_id} answered {code}: {body}")
        return None
    return dict(body)


async def role_or_exit(node: NodeProcess) -> str:
    """The node's role, or ``exit <code>`` once it has exited (a deposed primary exits 4)."""
    if node.proc.returncode is None:
        try:
            return str((await node.status())["role"])
        except OSError:  # exiting right now
            pass
    return f"exit {await node.wait()}"


async def primary_kill(cycles: int, workdir: Path, *, seed: int = 1) -> ScenarioResult:
    rng = random.Random(seed)
    history_path = workdir / "history.jsonl"
    problems: list[str] = []
    failovers: list[float] = []
    exit_codes: list[int] = []
    loop = asyncio.get_running_loop()
    async with NatsServer() as server, Nodes(workdir, server.url) as nodes:
        primary = await nodes.start("primary")
        standby = await nodes.start()
        with HistoryWriter(history_path) as history:
            async with Workload(server.url, history, writers=6) as load:
                for _ in range(cycles):
                    await replaying(standby)
                    await load.more(LOAD_BETWEEN_FAULTS)
                    await asyncio.sleep(rng.uniform(0, 0.25))  # the fault's random moment
                    primary.signal(signal.SIGKILL)
                    t_kill = loop.time()
                    exit_codes.append(await primary.wait())
                    result = await promote(standby, problems)
                    if result is None:
                        break
                    failovers.append((await load.ack_after(result["seq"], t_kill) - t_kill) * 1e3)
                    # The old primary restarts and rejoins as a fresh standby.
                    primary, standby = standby, await nodes.start()
                await load.more(LOAD_BETWEEN_FAULTS)
            check, envelopes = await verify(server.url, history_path, nodes.live())
    problems += epochs_after_markers(envelopes)
    epochs = [m.epoch for m in markers(envelopes)]
    if epochs != list(range(1, len(failovers) + 2)):
        problems.append(f"epoch markers {epochs}, expected 1..{len(failovers) + 1}")
    if any(code != -signal.SIGKILL for code in exit_codes):
        problems.append(f"killed primaries exited {exit_codes}")
    return ScenarioResult(
        "primary_kill",
        len(failovers),
        check.acknowledged,
        check,
        failovers,
        facts={"epochs": epochs, "journal_commands": check.journal_commands},
        problems=problems,
    )


async def _zombie_variant(
    nodes: Nodes,
    load: Workload,
    probe: RawRequests,
    primary: NodeProcess,
    standby: NodeProcess,
    *,
    after_publish: bool,
    label: str,
    facts: dict[str, Any],
    problems: list[str],
) -> float | None:
    """Pause ``primary`` (right after it sent bytes, if ``after_publish``), queue requests at
    it, promote ``standby``, continue the zombie: it must exit 4 and answer only errors."""
    loop = asyncio.get_running_loop()
    await replaying(standby)
    await load.more(LOAD_BETWEEN_FAULTS)
    if after_publish:
        proxy = nodes.proxies[primary.node_id]
        sent = proxy.stats().bytes_up
        await proxy.wait_for(lambda s: s.bytes_up > sent)
    primary.signal(signal.SIGSTOP)
    t_pause = loop.time()
    await probe.send(ZOMBIE_REQUESTS, f"{label}-zombie")
    result = await promote(standby, problems)
    failover = None
    if result is not None:
        failover = (await load.ack_after(result["seq"], t_pause) - t_pause) * 1e3
    primary.signal(signal.SIGCONT)
    code = await primary.wait(timeout=60)
    facts[f"{label}_zombie_exit"] = code
    if code != EXIT_FENCED:
        problems.append(f"{label}: the zombie {primary.node_id} exited {code}, not 4 (fenced)")
    if "deposed by a newer epoch" not in primary.log.read_text(errors="replace"):
        problems.append(f"{label}: the zombie's log does not say it was deposed")
    return failover


async def _double_promotion(
    nodes: Nodes, load: Workload, primary: NodeProcess, label: str, facts: dict[str, Any]
) -> tuple[NodeProcess, list[str]]:
    """Kill the primary; promote two standbys at once. Returns the one left serving."""
    problems: list[str] = []
    first, second = await nodes.start(), await nodes.start()
    await asyncio.gather(replaying(first), replaying(second))
    await load.more(LOAD_BETWEEN_FAULTS)
    primary.signal(signal.SIGKILL)
    await primary.wait()
    answers = await asyncio.gather(first.promote(), second.promote())
    facts[f"{label}_promote_answers"] = [
        (code, body.get("epoch") if code == 200 else body.get("reason")) for code, body in answers
    ]
    codes = sorted(code for code, _ in answers)
    if codes != [200, 409]:
        problems.append(f"{label}: not one 200 and one 409: {answers}")
    refused = [body.get("reason", "") for code, body in answers if code == 409]
    if refused and "took epoch" not in refused[0]:
        problems.append(f"{label}: the refusal does not name the winner: {refused[0]!r}")
    await load.more(LOAD_BETWEEN_FAULTS)
    statuses = {node.node_id: await role_or_exit(node) for node in (first, second)}
    serving = [n for n in (first, second) if statuses.get(n.node_id) == "primary"]
    facts[f"{label}_roles"] = statuses
    for node_id, role in statuses.items():
        if role.startswith("exit") and role != f"exit {EXIT_FENCED}":
            problems.append(f"{label}: {node_id} {role}, not fenced (4)")
    if len(serving) != 1:
        problems.append(f"{label}: {len(serving)} primaries serving: {statuses}")
        return first, problems
    return serving[0], problems


async def zombie(cycles: int, workdir: Path, *, seed: int = 1) -> ScenarioResult:
    history_path = workdir / "history.jsonl"
    problems: list[str] = []
    failovers: list[float] = []
    facts: dict[str, Any] = {}
    async with NatsServer() as server, Nodes(workdir, server.url, proxied=True) as nodes:
        primary = await nodes.start("primary")
        with HistoryWriter(history_path) as history:
            probe = RawRequests(server.url, history)
            try:
                async with Workload(server.url, history, request_timeout=0.3) as load:
                    for cycle in range(cycles):
                        for after_publish in (False, True):
                            label = f"c{cycle}-{'publish' if after_publish else 'stop'}"
                            standby = await nodes.start()
                            failover = await _zombie_variant(
                                nodes,
                                load,
                                probe,
                                primary,
                                standby,
                                after_publish=after_publish,
                                label=label,
                                facts=facts,
                                problems=problems,
                            )
                            if failover is not None:
                                failovers.append(failover)
                            primary = standby
                        primary, found = await _double_promotion(
                            nodes, load, primary, f"c{cycle}-double", facts
                        )
                        problems += found
                    await load.more(LOAD_BETWEEN_FAULTS)
                outcomes = await probe.finish()
            finally:
                await probe.aclose()
            check, envelopes = await verify(server.url, history_path, nodes.live())
    facts["zombie_request_outcomes"] = dict(outcomes)
    if outcomes["ok"]:
        problems.append(f"{outcomes['ok']} requests queued at a zombie were acknowledged")
    problems += epochs_after_markers(envelopes)
    facts["epochs"] = [m.epoch for m in markers(envelopes)]
    return ScenarioResult(
        "zombie", cycles, check.acknowledged, check, failovers, facts=facts, problems=problems
    )
