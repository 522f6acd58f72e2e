"""What every fault scenario shares: a recorded workload, node processes, the journal as
stored, and the checker's verdict.

A scenario is ``async def scenario(cycles: int, workdir: Path, *, seed: int) -> ScenarioResult``.
It starts its own nats-server(s) and nodes (OS processes, so a SIGKILL is real), drives
client load through :class:`Workload` (every operation recorded in a JSONL history), injects
its faults, and ends with :func:`verify`: the history held against the journal read back
from the stream and every live node's digest (:func:`jetstandby.history.check`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import secrets
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import nats
import nats.errors
from nats.aio.client import Client as NATS

from jetstandby import submission, wire
from jetstandby.client import Client
from jetstandby.config import JournalSettings
from jetstandby.engines.kv import KeyValueEngine, add
from jetstandby.errors import SubmitError
from jetstandby.faults import TcpProxy
from jetstandby.history import CheckResult, HistoryWriter, check_files
from jetstandby.journal import stream
from jetstandby.journal.stream import close_quietly, connect
from jetstandby.procs import NodeProcess

JOURNAL: Final = "faults"
KEYS: Final = 16
#: A client's per-try timeout: a request caught by a dead primary waits this long.
REQUEST_TIMEOUT: Final = 0.5
#: How long a client retries one request id before recording its outcome as unknown.
SUBMIT_DEADLINE: Final = 30.0
CATCH_UP_WITHIN: Final = 120.0


@dataclass
class ScenarioResult:
    """One scenario's figures, the checker's verdict, and facts its test asserts on."""

    name: str
    cycles: int
    acknowledged: int
    check: CheckResult
    failover_ms: list[float] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        """The checker's verdict and every scenario-specific property held."""
        return self.check.valid and not self.problems

    def figures(self) -> dict[str, Any]:
        """The row of ``jetstandby bench faults --json``."""
        return {
            "cycles": self.cycles,
            "acknowledged": self.acknowledged,
            "lost": len(self.check.lost),
            "duplicated": len(self.check.duplicated),
            "unexpected": len(self.check.unexpected),
            "failover_ms_p50": percentile(self.failover_ms, 50),
            "failover_ms_p99": percentile(self.failover_ms, 99),
            "valid": self.valid,
        }

    def explain(self) -> str:
        lines = [f"{self.name}: {'VALID' if self.valid else 'INVALID'}", self.check.explain()]
        lines += [f"problem: {p}" for p in self.problems]
        lines += [f"{k}: {v}" for k, v in self.facts.items()]
        lines.append(f"failover_ms: {[round(f, 1) for f in self.failover_ms]}")
        return "\n".join(lines)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile, rounded to 0.1 ms; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return round(ordered[rank - 1], 1)


class Workload:
    """``writers`` clients submitting ``Add`` commands with unique request ids, each operation
    recorded in ``history``. Acknowledgements are kept as ``(loop time, seq)`` so a scenario
    can time a failover; :meth:`until` waits on them (no polling)."""

    def __init__(
        self,
        urls: str,
        history: HistoryWriter,
        *,
        journal: str = JOURNAL,
        writers: int = 4,
        prefix: str = "w",
        request_timeout: float = REQUEST_TIMEOUT,
        rate: float | None = None,
    ) -> None:
        self.urls, self.history, self.journal = urls, history, journal
        #: Submissions per second over all writers (approximate); None: as fast as they go.
        self.rate = rate
        self.writers, self.prefix, self.request_timeout = writers, prefix, request_timeout
        self.acks: list[tuple[float, int]] = []
        self.errors = 0
        self._stop = asyncio.Event()
        self._progress = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Workload:
        clients = [
            await Client.connect(self.urls, self.journal, request_timeout=self.request_timeout)
            for _ in range(self.writers)
        ]
        self._tasks = [
            asyncio.create_task(self._write(n, client)) for n, client in enumerate(clients)
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def acknowledged(self) -> int:
        return len(self.acks)

    async def stop(self, grace: float = SUBMIT_DEADLINE + 5) -> None:
        """Let each writer finish its request; cancel (recorded as unknown) after ``grace``."""
        self._stop.set()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _write(self, writer: int, client: Client) -> None:
        loop = asyncio.get_running_loop()
        name = f"{self.prefix}{writer}"
        try:
            for i in itertools.count():
                if self._stop.is_set():
                    return
                if self.rate:
                    await asyncio.sleep(self.writers / self.rate)  # pacing, not synchronising
                try:
                    out = await self.history.submit(
                        client,
                        "Add",
                        add(f"k{(writer * 7 + i) % KEYS}", 1),
                        request_id=f"{name}-{i}",
                        deadline=SUBMIT_DEADLINE,
                        client_name=name,
                    )
                except SubmitError:
                    self.errors += 1
                    continue
                self.acks.append((loop.time(), out.seq))
                async with self._progress:
                    self._progress.notify_all()
        finally:
            await client.aclose()

    async def until(self, count: int, timeout: float = 60.0) -> None:
        """Wait until ``count`` operations in all have been acknowledged."""
        async with asyncio.timeout(timeout), self._progress:
            await self._progress.wait_for(lambda: len(self.acks) >= count)

    async def more(self, count: int, timeout: float = 60.0) -> None:
        """Wait for ``count`` more acknowledgements than now."""
        await self.until(len(self.acks) + count, timeout)

    async def ack_after(self, seq: int, since: float, timeout: float = 60.0) -> float:
        """Loop time of the first acknowledgement of a seq above ``seq`` received at or after
        ``since`` (waiting for it): the end of a failover that began at ``since``."""

        def first() -> float | None:
            times = [t for t, s in self.acks if s > seq and t >= since]
            return min(times) if times else None

        async with asyncio.timeout(timeout), self._progress:
            await self._progress.wait_for(lambda: first() is not None)
        found = first()
        assert found is not None
        return found


class Nodes:
    """Node processes of one scenario, all closed by :meth:`aclose` (idempotent).

    With ``proxied`` each node reaches its (single) server through its own
    :class:`TcpProxy`, so its link can be cut or black-holed alone: ``proxies[node_id]``.
    """

    def __init__(
        self,
        workdir: Path,
        urls: str,
        *,
        journal: str = JOURNAL,
        env: dict[str, str] | None = None,
        proxied: bool = False,
    ) -> None:
        self.workdir, self.urls, self.journal = workdir, urls, journal
        self.env = env or {}
        self.proxied = proxied
        self.token = secrets.token_urlsafe(18)
        self.started: list[NodeProcess] = []
        self.proxies: dict[str, TcpProxy] = {}
        self._ids = itertools.count(1)

    async def start(self, role: str = "standby", **kw: Any) -> NodeProcess:
        node_id = f"n{next(self._ids)}"
        env = {**self.env, **kw.pop("env", {})}
        urls = self.urls
        if self.proxied:
            host, port = urls.removeprefix("nats://").rsplit(":", 1)
            proxy = self.proxies[node_id] = TcpProxy(host, int(port))
            await proxy.start()
            urls = proxy.url
        node = await NodeProcess.start(
            self.workdir,
            node_id,
            urls,
            token=self.token,
            journal=self.journal,
            role=role,
            env=env,
            **kw,
        )
        self.started.append(node)
        return node

    def live(self) -> list[NodeProcess]:
        return [n for n in self.started if n.proc.returncode is None]

    async def aclose(self) -> None:
        for node in self.started:
            await node.close()
        for proxy in self.proxies.values():
            await proxy.aclose()

    async def __aenter__(self) -> Nodes:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def caught_up(node: NodeProcess, timeout: float = CATCH_UP_WITHIN) -> dict[str, Any]:
    """Wait until a standby has replayed the stream's tail (and has not halted)."""
    return await node.wait_status(
        lambda s: s["caught_up"] and not s["halted"] and s["stream_lag"] == 0, timeout
    )


async def read_stream(urls: str, journal: str = JOURNAL) -> list[tuple[int, bytes]]:
    """Every message of the journal's stream as stored: ``(stream seq, body)``, undecoded,
    so that poison written straight into the stream does not stop the read."""
    nc = await connect(urls, name="jetstandby-faults-reader")
    try:
        messages = await stream.read_stream(nc, JournalSettings(journal=journal))
    finally:
        await close_quietly(nc)
    return [(m.stream_seq, m.data) for m in messages]


def decode_stream(
    messages: Sequence[tuple[int, bytes]], skip: Callable[[int], bool] = lambda _: False
) -> list[wire.Envelope]:
    """The envelopes of ``messages``, leaving out the stream seqs ``skip`` names."""
    return [wire.decode(body, stream_seq=seq) for seq, body in messages if not skip(seq)]


async def verify(
    urls: str,
    history: Path,
    nodes: Sequence[NodeProcess],
    *,
    journal: str = JOURNAL,
    skip: Callable[[int], bool] = lambda _: False,
    settle_within: float = CATCH_UP_WITHIN,
) -> tuple[CheckResult, list[wire.Envelope]]:
    """The checker's verdict on ``history`` against the stored journal, with the digest of
    every node in ``nodes`` once each has applied the journal's last command (a common seq).
    A node that does not get there in time is compared where it stands (and flagged)."""
    envelopes = decode_stream(await read_stream(urls, journal), skip)
    last = envelopes[-1].seq if envelopes else 0
    digests: dict[str, tuple[int, str]] = {}
    for node in nodes:
        with contextlib.suppress(TimeoutError):
            await node.wait_status(lambda s: s["last_applied_seq"] >= last, settle_within)
        status = await node.status()
        digests[node.node_id] = (status["last_applied_seq"], status["state_digest"])
    result = check_files(history, envelopes, digests, engine_factory=KeyValueEngine)
    return result, envelopes


def epochs_after_markers(envelopes: Sequence[wire.Envelope]) -> list[str]:
    """Every command written by an older epoch after a newer epoch's marker (must be none)."""
    problems, epoch = [], 0
    for env in envelopes:
        if env.command_type == wire.EPOCH_MARKER:
            if env.epoch <= epoch:
                problems.append(f"seq {env.seq}: marker of epoch {env.epoch} after {epoch}")
            epoch = max(epoch, env.epoch)
        elif env.epoch < epoch:
            problems.append(f"seq {env.seq}: epoch {env.epoch} appended after epoch {epoch}")
    return problems


def markers(envelopes: Sequence[wire.Envelope]) -> list[wire.Envelope]:
    return [env for env in envelopes if env.command_type == wire.EPOCH_MARKER]


class RawRequests:
    """Single-try submissions on a plain connection, each recorded in the history: what the
    clients of a paused primary see. While the primary is the only subscriber, every request
    sent lands in its queue; once it wakes up deposed it must answer errors, never ``ok``."""

    def __init__(self, urls: str, history: HistoryWriter, *, journal: str = JOURNAL) -> None:
        self.urls, self.history = urls, history
        self.subject = wire.submit_subject(journal)
        self.outcomes: Counter[str] = Counter()
        self._nc: NATS | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def send(self, count: int, prefix: str, timeout: float = SUBMIT_DEADLINE) -> None:
        """Send ``count`` requests; return once they are flushed to the server."""
        if self._nc is None:
            self._nc = await nats.connect(self.urls)
        for i in range(count):
            rid = f"{prefix}-{i}"
            payload = add("zombie", 1)
            self.history.invoke(rid, "Add", payload, client=prefix)
            body = submission.encode_submission(submission.Submission(rid, "Add", 1, payload))
            self._tasks.append(asyncio.create_task(self._one(rid, body, timeout)))
        await asyncio.sleep(0)  # each task publishes its request before its first await
        await self._nc.flush()

    async def _one(self, rid: str, body: bytes, timeout: float) -> None:
        assert self._nc is not None
        try:
            msg = await self._nc.request(self.subject, body, timeout=timeout)
        except nats.errors.TimeoutError:
            self.history.unknown(rid, "no answer")
            self.outcomes["unknown"] += 1
            return
        reply = submission.decode_reply(msg.data)
        if reply.ok:
            self.history.ok(rid, reply.seq, reply.result, deduplicated=reply.deduplicated)
            self.outcomes["ok"] += 1
        else:
            self.history.fail(rid, reply.code, retriable=reply.retriable, error=reply.error)
            self.outcomes[f"error:{reply.code}"] += 1

    async def finish(self) -> Counter[str]:
        """Wait for every answer (or its timeout); the outcomes by kind."""
        await asyncio.gather(*self._tasks)
        self._tasks = []
        return self.outcomes

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._nc is not None:
            await self._nc.close()
