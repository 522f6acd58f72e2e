"""Scenarios 3 and 4: nats-server crashes and pauses, and a 3-server cluster losing nodes.

3. ``server_restarts``: a standby far behind (a slowed engine, a backlog) replays while the
   server is SIGKILLed and restarted on the same store ``cycles`` times, then SIGSTOPped for
   10 s; a primary keeps taking load throughout. After every fault the standby resumes at
   last + 1 (it never halts on a gap) and never exits; the primary never exits either.
4. ``cluster_loss``: an R3 stream on 3 servers; each cycle SIGKILLs the stream's leader or a
   random server and restarts it, under load, with a standby replaying. Then two servers are
   killed at once: quorum is lost, and no command stored after that may be acknowledged
   until it is back.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from jetstandby import wire
from jetstandby.config import JournalSettings
from jetstandby.faults import paused
from jetstandby.history import HistoryWriter
from jetstandby.journal.stream import close_quietly, connect
from jetstandby.procs import NodeProcess
from jetstandby.server import NatsCluster, NatsServer
from jetstandby_bench.faults_common import JOURNAL, Nodes, ScenarioResult, Workload, verify
from jetstandby_bench.faults_engine import DELAY_ENV, SLOW_KV

SERVER_PAUSE: Final = 10.0
BACKLOG: Final = 1500
SLOW_APPLY: Final = "0.001"  # s per command: the standby replays at most ~1,000/s
TRICKLE: Final = 100.0  # submissions/s while the server is being crashed
QUORUM_LOSS: Final = 4.0
CLUSTER_LOAD_BETWEEN: Final = 100


async def _advanced(
    node: NodeProcess, beyond: int, problems: list[str], what: str, *, resubscribes: int = -1
) -> int:
    """Wait until a standby applies past ``beyond`` after more than ``resubscribes``
    re-subscriptions (it noticed the fault and resumed); it must not halt or exit meanwhile."""
    try:
        status = await node.wait_status(
            lambda s: (
                s["halted"] or (s["last_applied_seq"] > beyond and s["resubscribes"] > resubscribes)
            ),
            120,
        )
    except (TimeoutError, OSError) as exc:
        problems.append(f"{what}: standby did not resume past seq {beyond}: {exc!r}")
        return beyond
    if status["halted"]:
        problems.append(f"{what}: standby halted: {status['last_error']}")
    return int(status["last_applied_seq"])


async def _behind(standby: NodeProcess, load: Workload) -> dict[str, Any]:
    """Make the replay long again: freeze the standby while ``BACKLOG`` commands are
    acknowledged at full speed, then let it go. Its status, with ``behind`` (commands)."""
    with paused(standby.proc.pid):
        load.rate = None
        await load.more(BACKLOG)
        load.rate = TRICKLE
    status = await standby.status()
    status["behind"] = max(seq for _, seq in load.acks) - status["last_applied_seq"]
    return status


async def server_restarts(cycles: int, workdir: Path, *, seed: int = 1) -> ScenarioResult:
    history_path = workdir / "history.jsonl"
    problems: list[str] = []
    facts: dict[str, Any] = {"behind_at_fault": []}
    async with NatsServer() as server, Nodes(workdir, server.url) as nodes:
        primary = await nodes.start("primary")
        with HistoryWriter(history_path) as history:
            async with Workload(server.url, history) as load:
                await load.until(BACKLOG)
                standby = await nodes.start(engine=SLOW_KV, env={DELAY_ENV: SLOW_APPLY})
                await _advanced(standby, 0, problems, "start")
                for cycle in range(cycles + 1):
                    status = await _behind(standby, load)
                    facts["behind_at_fault"].append(status["behind"])
                    if cycle < cycles:
                        await server.restart(kill=True)
                    else:
                        server.pause()
                        await asyncio.sleep(SERVER_PAUSE)  # the fault's duration
                        server.resume()
                    what = f"fault {cycle + 1}"
                    await _advanced(
                        standby,
                        status["last_applied_seq"],
                        problems,
                        what,
                        # A crash loses the consumer: the standby must subscribe again. After
                        # a pause the same consumer may simply go on.
                        resubscribes=status["resubscribes"] if cycle < cycles else -1,
                    )
                    for node, role in ((primary, "primary"), (standby, "standby")):
                        if node.proc.returncode is not None:
                            problems.append(f"{what}: the {role} exited {node.proc.returncode}")
                    if problems:
                        break
                facts["resubscribes"] = (await standby.status())["resubscribes"]
            check, _ = await verify(server.url, history_path, nodes.live(), settle_within=300)
    return ScenarioResult(
        "server_restarts", cycles, check.acknowledged, check, facts=facts, problems=problems
    )


async def _stream_leader(cluster: NatsCluster) -> str | None:
    nc = await connect(cluster.url, name="jetstandby-faults-leader")
    try:
        info = await nc.jetstream().stream_info(JournalSettings(journal=JOURNAL).stream)
        return info.cluster.leader if info.cluster else None
    finally:
        await close_quietly(nc)


async def _lose_quorum(
    cluster: NatsCluster, load: Workload, rng: random.Random, facts: dict[str, Any]
) -> list[str]:
    """Kill two of three servers for a while: no command stored after the kill may be
    acknowledged meanwhile.

    Acknowledgements do arrive while quorum is lost, and rightly: of commands JetStream
    committed just before, whose publish acknowledgement the kill cut off, which the primary
    proves from the stream's tail once its ``ack_timeout`` has passed (over a second later).
    So the check is by where a command is stored, not by when it was acknowledged: each seq
    acknowledged during the loss must come before the first message the stream stamped at
    or after the kill.
    """
    loop = asyncio.get_running_loop()
    victims = rng.sample(cluster.nodes, 2)
    await asyncio.gather(*(node.stop(kill=True) for node in victims))
    # Once both are dead: a command committed in between was stored with quorum.
    killed_at = datetime.now(UTC)
    t_loss = loop.time()
    await asyncio.sleep(QUORUM_LOSS)  # the fault's duration
    t_back = loop.time()
    await asyncio.gather(*(node.start() for node in victims))
    during = sorted(seq for t, seq in load.acks if t_loss <= t < t_back)
    await load.more(CLUSTER_LOAD_BETWEEN, timeout=120)
    first_after = await _first_seq_stored_since(cluster.url, killed_at)
    facts["acks_during_quorum_loss"] = len(during)
    facts["first_seq_stored_after_loss"] = first_after
    wrong = [seq for seq in during if seq >= first_after]
    facts["acks_while_quorum_lost"] = len(wrong)
    if wrong:
        return [
            f"{len(wrong)} commands stored after quorum was lost (from seq {first_after}) were "
            f"acknowledged before it was back (seqs {wrong[:5]})"
        ]
    return []


async def _first_seq_stored_since(urls: str, since: datetime) -> int:
    """The command seq of the journal's first message that JetStream stamped at or after
    ``since`` (an ephemeral consumer that starts by time)."""
    settings = JournalSettings(journal=JOURNAL)
    nc = await connect(urls, name="jetstandby-faults-reader")
    try:
        sub = await nc.jetstream().pull_subscribe(
            settings.subject,
            stream=settings.stream,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_TIME,
                opt_start_time=since,
                ack_policy=AckPolicy.NONE,
            ),
        )
        [msg] = await sub.fetch(1, timeout=10)
        await sub.unsubscribe()
    finally:
        await close_quietly(nc)
    return wire.decode(msg.data, stream_seq=msg.metadata.sequence.stream).seq


async def cluster_loss(cycles: int, workdir: Path, *, seed: int = 1) -> ScenarioResult:
    rng = random.Random(seed)
    history_path = workdir / "history.jsonl"
    problems: list[str] = []
    facts: dict[str, Any] = {"killed": []}
    async with NatsCluster() as cluster:
        env = {"JETSTANDBY_REPLICAS": "3"}
        async with Nodes(workdir, cluster.url, env=env) as nodes:
            primary = await nodes.start("primary")
            standby = await nodes.start()
            with HistoryWriter(history_path) as history:
                async with Workload(cluster.url, history) as load:
                    last = 0
                    for cycle in range(cycles):
                        await load.more(CLUSTER_LOAD_BETWEEN, timeout=120)
                        leader = await _stream_leader(cluster) if cycle % 2 == 0 else None
                        by_name = {node.name: node for node in cluster.nodes}
                        victim = by_name.get(leader or "") or rng.choice(cluster.nodes)
                        facts["killed"].append(("leader " if leader else "") + victim.name)
                        await victim.stop(kill=True)
                        await load.more(CLUSTER_LOAD_BETWEEN, timeout=120)
                        await victim.start()
                        last = await _advanced(standby, last, problems, f"cycle {cycle + 1}")
                    problems += await _lose_quorum(cluster, load, rng, facts)
                    await _advanced(standby, last, problems, "quorum back")
                    if primary.proc.returncode is not None:
                        problems.append(f"the primary exited {primary.proc.returncode}")
                check, _ = await verify(cluster.url, history_path, nodes.live())
    return ScenarioResult(
        "cluster_loss", cycles, check.acknowledged, check, facts=facts, problems=problems
    )
