"""Nodes as separate OS processes on a real nats-server: failover under load, a zombie
primary, refused promotions and auth. Every check is against the journal itself."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jetstandby import connect
from jetstandby.client import Client
from jetstandby.config import JournalSettings
from jetstandby.engines.kv import KeyValueEngine, add
from jetstandby.errors import SubmitError
from jetstandby.journal.stream import read_journal
from jetstandby.procs import NodeProcess
from jetstandby.server import NatsServer
from jetstandby.state import ReplicatedState
from jetstandby.wire import Envelope
from tests.nodeproc import TOKEN, start


class Load:
    """Writers submitting ``Add`` commands with unique request ids, recording outcomes."""

    def __init__(self, url: str, writers: int = 4, request_timeout: float = 2.0) -> None:
        self.url, self.writers, self.request_timeout = url, writers, request_timeout
        self.acked: dict[str, int] = {}
        self.failed: set[str] = set()
        self.stop = asyncio.Event()
        self._progress = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Load:
        self._tasks = [asyncio.create_task(self._write(w)) for w in range(self.writers)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        await asyncio.gather(*self._tasks)

    async def _write(self, writer: int) -> None:
        async with await Client.connect(
            self.url, "p", request_timeout=self.request_timeout
        ) as client:
            i = 0
            while not self.stop.is_set():
                rid = f"w{writer}-{i}"
                i += 1
                try:
                    out = await client.submit(
                        "Add", 1, add(f"k{writer}", 1), request_id=rid, deadline=30
                    )
                    self.acked[rid] = out.seq
                    async with self._progress:
                        self._progress.notify_all()
                except SubmitError:
                    self.failed.add(rid)

    async def until(self, count: int, timeout: float = 60) -> None:
        async with asyncio.timeout(timeout), self._progress:
            await self._progress.wait_for(lambda: len(self.acked) >= count)


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[list[NodeProcess]]:
    started: list[NodeProcess] = []
    yield started
    for node in started:
        await node.close()


async def journal_of(url: str) -> list[tuple[str, Envelope]]:
    nc = await connect(url)
    try:
        return await read_journal(nc, JournalSettings(journal="p"))
    finally:
        await nc.close()


def check_exactly_once(journal: list[tuple[str, Envelope]], load: Load) -> None:
    assert [env.seq for _, env in journal] == list(range(1, len(journal) + 1))
    applied = Counter(env.request_id for _, env in journal if env.request_id)
    assert all(n == 1 for n in applied.values()), "a request id was journaled twice"
    by_seq = {env.seq: env.request_id for _, env in journal}
    for rid, seq in load.acked.items():
        assert by_seq.get(seq) == rid, f"acknowledged {rid} at seq {seq} is not there"


def fresh_digest(journal: list[tuple[str, Envelope]]) -> str:
    state = ReplicatedState(KeyValueEngine())
    for _, env in journal:
        state.apply(env)
    return state.compared_digest().hex()


async def test_failover_under_load_loses_and_duplicates_nothing(
    nats_server: NatsServer, nodes: list[NodeProcess], tmp_path: Path
) -> None:
    a = await start(tmp_path, "a", nats_server.url, role="primary")
    b = await start(tmp_path, "b", nats_server.url)
    nodes += [a, b]
    async with Load(nats_server.url) as load:
        await load.until(300)
        a.signal(signal.SIGKILL)
        assert await a.wait() == -signal.SIGKILL
        at_kill = len(load.acked)
        code, result = await b.promote()
        assert code == 200, result
        assert result["epoch"] == 2 and result["role"] == "primary"
        await load.until(at_kill + 300)
    journal = await journal_of(nats_server.url)
    check_exactly_once(journal, load)
    status = await b.wait_status(lambda s: s["last_applied_seq"] == len(journal))
    assert status["state_digest"] == fresh_digest(journal)
    assert status["role"] == "primary" and status["submissions_acknowledged"] > 0


async def test_zombie_primary_fences_itself_and_its_clients_get_no_acks(
    nats_server: NatsServer, nodes: list[NodeProcess], tmp_path: Path
) -> None:
    a = await start(tmp_path, "a", nats_server.url, role="primary")
    b = await start(tmp_path, "b", nats_server.url)
    nodes += [a, b]
    # A stopped zombie still holds its place in the queue group: requests sent to it time
    # out, so keep the clients' per-try timeout short.
    async with Load(nats_server.url, request_timeout=0.3) as load:
        await load.until(200)
        a.signal(signal.SIGSTOP)
        code, result = await b.promote()
        assert code == 200, result
        at_promotion = len(load.acked)
        await load.until(at_promotion + 30)
        a.signal(signal.SIGCONT)
        assert await a.wait(timeout=60) == 4  # fenced: a distinct exit status
    journal = await journal_of(nats_server.url)
    check_exactly_once(journal, load)
    marker = next(i for i, (mid, env) in enumerate(journal) if env.epoch == 2)
    assert journal[marker][0] == f"2-{marker + 1}-b"
    assert all(env.epoch == 2 for _, env in journal[marker:]), "the zombie appended after"
    assert "deposed by a newer epoch" in a.log.read_text()


async def test_refused_forced_idempotent_promotions_and_auth(
    nats_server: NatsServer, nodes: list[NodeProcess], tmp_path: Path
) -> None:
    a = await start(tmp_path, "a", nats_server.url, role="primary")
    nodes.append(a)
    async with Load(nats_server.url, writers=8) as load:
        await load.until(1500)
    b = await start(
        tmp_path,
        "b",
        nats_server.url,
        engine="tests.engines:SlowKeyValue",
        extra=("--max-promote-lag", "100"),
        env={"JSB_TEST_APPLY_DELAY": "0.002"},
    )
    nodes.append(b)

    assert (await b.http("POST", "/admin/promote", {}, token=None))[0] == 401
    assert (await b.http("POST", "/admin/promote", {}, token="wrong-token"))[0] == 403
    code, body = await b.http("POST", "/admin/promote", {"force": True})
    assert code == 400 and "reason" in str(body)

    behind = await b.wait_status(lambda s: (s["stream_lag"] or 0) > 100 and s["lag_ms"] > 0)
    assert not behind["caught_up"] and behind["catch_up_eta_s"] is not None
    code, body = await b.http("GET", "/readyz")
    assert code == 503 and body["ready"] is False
    code, body = await b.promote()
    assert code == 409 and "lag" in body["reason"], body
    code, first = await b.promote(force=True, reason="failover drill")
    assert code == 200 and first["forced"] and first["epoch"] == 2, first
    code, again = await b.promote(force=True, reason="failover drill")
    assert code == 200 and again["already_promoted"]
    assert (again["epoch"], again["seq"]) == (first["epoch"], first["seq"])
    journal = await journal_of(nats_server.url)
    assert first["seq"] == len(journal)  # it drained everything before its marker
    assert TOKEN not in b.log.read_text()


_ = contextlib
