"""Nodes in one process against a real nats-server: promotion, fencing, exactly-once."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator

import msgspec
import pytest
from nats.aio.msg import Msg

from jetstandby import connect, ensure_stream, submission, wire
from jetstandby.aio import cancel_and_wait
from jetstandby.client import Client
from jetstandby.config import JournalSettings, NodeSettings, ReplaySettings
from jetstandby.engines.kv import KeyValueEngine, add, put
from jetstandby.errors import ConfigError, PromotionRefused, SubmitError
from jetstandby.journal.stream import close_quietly, read_journal
from jetstandby.node import Node
from jetstandby.server import NatsServer
from jetstandby.status import Role
from tests.support import watch_logs

REPLAY = ReplaySettings(
    catch_up_interval=0.05, resubscribe_delay=0.05, resubscribe_failure_delay=0.2
)


class Running:
    def __init__(self, node: Node, task: asyncio.Task[Role]) -> None:
        self.node, self.task = node, task

    async def stop(self) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


@pytest.fixture
async def start(nats_server: NatsServer) -> AsyncIterator[object]:
    running: list[Running] = []
    connections = []

    async def start_node(node_id: str, *, primary: bool = False, **kw: object) -> Running:
        nc = await connect(nats_server.url)
        connections.append(nc)
        settings = NodeSettings(
            node_id=node_id,
            journal=JournalSettings(journal="kv"),
            replay=REPLAY,
            **kw,  # type: ignore[arg-type]
        )
        node = Node(nc, KeyValueEngine(), settings)
        task = asyncio.create_task(node.run(as_primary=primary))
        running.append(Running(node, task))
        await node.wait_started()
        if primary:
            await node.promote(wait=True, timeout=10)
        return running[-1]

    yield start_node
    for r in running:  # a node's run() may have failed: the test has said so already
        with contextlib.suppress(Exception):
            await cancel_and_wait(r.task)
    for nc in connections:
        await close_quietly(nc)


async def test_primary_serves_and_standby_follows_then_takes_over(
    start: object, nats_server: NatsServer
) -> None:
    a = await start("a", primary=True)  # type: ignore[operator]
    b = await start("b")  # type: ignore[operator]
    assert a.node.role is Role.PRIMARY and a.node.state.epoch == 1
    async with await Client.connect(nats_server.url, "kv") as client:
        for i in range(50):
            out = await client.submit("Add", 1, add("counter", 1), request_id=f"r{i}")
            assert msgspec.msgpack.decode(out.result) == {"ok": True, "value": i + 1}
        again = await client.submit("Add", 1, add("counter", 1), request_id="r7")
        assert again.deduplicated and msgspec.msgpack.decode(again.result)["value"] == 8
        await b.node.progress.wait_for(lambda p: p.last_replayed_seq == 51, timeout=10)
        assert b.node.state.engine.digest() == a.node.state.engine.digest()

        result = await b.node.promote(wait=True, timeout=10)
        assert (result.role, result.epoch, result.seq) == (Role.PRIMARY, 2, 52)
        repeat = await b.node.promote(wait=True, timeout=10)
        assert repeat.already_promoted and repeat.epoch == 2

        # the old primary's next append is refused: it fences itself
        out = await client.submit("Add", 1, add("counter", 1), request_id="after")
        assert out.seq == 53
        retried = await client.submit("Add", 1, add("counter", 1), request_id="r3")
        assert retried.deduplicated and msgspec.msgpack.decode(retried.result)["value"] == 4
    assert b.node.state.engine.data["counter"] == "51"  # type: ignore[attr-defined]


async def test_deposed_primary_fences_on_its_next_append(
    start: object, nats_server: NatsServer
) -> None:
    a = await start("a", primary=True)  # type: ignore[operator]
    b = await start("b")  # type: ignore[operator]
    async with await Client.connect(nats_server.url, "kv") as client:
        await client.submit("Put", 1, put("k", "v1"))
        await b.node.progress.wait_for(lambda p: p.last_replayed_seq == 2, timeout=10)
        await b.node.promote(wait=True, timeout=10)
        # Both still listen in the queue group; keep submitting until the zombie gets one.
        seqs = []
        for i in range(200):
            seqs.append((await client.submit("Add", 1, add("n", 1), request_id=f"z{i}")).seq)
            if a.node.role is Role.FENCED:
                break
    assert a.node.role is Role.FENCED
    assert await asyncio.wait_for(a.task, 10) is Role.FENCED
    assert seqs == list(range(4, 4 + len(seqs)))  # every acknowledged one is B's, in order
    nc = await connect(nats_server.url)
    journal = await read_journal(nc, JournalSettings(journal="kv"))
    await nc.close()
    marker_at = next(i for i, (_, env) in enumerate(journal) if env.epoch == 2)
    assert journal[marker_at][0] == "2-3-b"
    assert all(env.epoch == 2 for _, env in journal[marker_at:])  # zero appends from epoch 1
    assert [env.seq for _, env in journal] == list(range(1, len(journal) + 1))
    status = a.node.status()
    assert status.role is Role.FENCED and not status.ready
    assert [t.to_role for t in status.transitions] == [
        Role.STANDBY,
        Role.PROMOTING,
        Role.PRIMARY,
        Role.FENCED,
    ]


async def test_forced_promotion_needs_a_reason_and_concurrent_requests_join(start: object) -> None:
    b = await start("b", max_promote_lag=0)  # type: ignore[operator]
    with pytest.raises(ConfigError, match="reason"):
        await b.node.promote(force=True, reason="  ")
    first, second = await asyncio.gather(
        b.node.promote(force=True, reason="drill", timeout=10),
        b.node.promote(force=True, reason="drill", timeout=10),
    )
    assert first.forced and first.epoch == second.epoch == 1 and first.seq == second.seq == 1
    assert second.already_promoted or first.already_promoted or first == second


async def test_a_halted_standby_refuses_even_forced_promotion(
    start: object, nats_server: NatsServer
) -> None:
    nc = await connect(nats_server.url)
    await ensure_stream(nc, JournalSettings(journal="kv"))
    await nc.request("jsb.kv.journal", b"garbage", timeout=5)
    await nc.close()
    b = await start("b")  # type: ignore[operator]
    await b.node.progress.wait_for(lambda p: p.halted, timeout=10)
    with pytest.raises(PromotionRefused, match="replay halted at seq None \\(stream seq 1\\)"):
        await b.node.promote(force=True, reason="try anyway")
    assert b.node.status().halted and not b.node.status().ready


async def test_an_unreachable_stream_refuses_promotion(
    start: object, nats_server: NatsServer
) -> None:
    b = await start("b")  # type: ignore[operator]
    await nats_server.stop()
    with pytest.raises(PromotionRefused, match="unreachable"):
        await b.node.promote()
    await nats_server.start()


async def test_a_deposed_primary_refuses_promotion(start: object, nats_server: NatsServer) -> None:
    a = await start("a", primary=True)  # type: ignore[operator]
    b = await start("b")  # type: ignore[operator]
    await b.node.promote(timeout=10)
    async with await Client.connect(nats_server.url, "kv") as client:
        for i in range(200):
            await client.submit("Put", 1, put("k", str(i)))
            if a.node.role is Role.FENCED:
                break
    assert a.node.role is Role.FENCED and a.node.deposed
    with pytest.raises(PromotionRefused, match="deposed"):
        await a.node.promote()


async def test_unsupported_commands_are_rejected_and_not_journaled(
    start: object, nats_server: NatsServer
) -> None:
    a = await start("a", primary=True)  # type: ignore[operator]
    async with await Client.connect(nats_server.url, "kv") as client:
        with pytest.raises(SubmitError) as info:
            await client.submit("Put", 9, put("k", "v"))
        assert info.value.code == "unsupported" and "version 9" in str(info.value)
        with pytest.raises(SubmitError, match="unsupported"):
            await client.submit("$epoch", 1, b"")
        out = await client.submit("Put", 1, put("k", "v"))
    assert out.seq == 2  # nothing was journaled for the refused ones
    assert a.node.state.last_seq == 2


async def test_an_overloaded_primary_refuses_before_applying_and_a_retry_succeeds(
    start: object, nats_server: NatsServer
) -> None:
    # A burst of 500 arrives at memory speed: far more than 10 wait behind the first.
    a = await start("a", primary=True, max_backlog=10)  # type: ignore[operator]
    nc = await connect(nats_server.url)
    try:
        bodies = [
            submission.encode_submission(submission.Submission(f"b{i}", "Put", 1, put("k", "v")))
            for i in range(500)
        ]
        subject = wire.submit_subject("kv")
        msgs = await asyncio.gather(*(nc.request(subject, body, timeout=30) for body in bodies))
        replies = {f"b{i}": submission.decode_reply(msg.data) for i, msg in enumerate(msgs)}
        journal = await read_journal(nc, JournalSettings(journal="kv"))
    finally:
        await close_quietly(nc)
    ok = {rid for rid, reply in replies.items() if reply.ok}
    refused = {rid: reply for rid, reply in replies.items() if not reply.ok}
    assert ok and refused
    assert {reply.code for reply in refused.values()} == {"overloaded"}
    assert all(reply.retriable and "max_backlog 10" in reply.error for reply in refused.values())
    assert a.node.status().submissions_overloaded == len(refused)
    # Nothing was applied or journaled for a refused submission ...
    assert {env.request_id for _, env in journal if env.request_id} == ok
    assert a.node.state.last_seq == len(ok) + 1  # and the epoch marker
    # ... so its retry is applied now, once.
    async with await Client.connect(nats_server.url, "kv") as client:
        again = await client.submit("Put", 1, put("k", "v"), request_id=next(iter(refused)))
    assert not again.deduplicated and again.seq == len(ok) + 2


async def test_submit_without_a_primary_times_out_as_retriable(nats_server: NatsServer) -> None:
    async with await Client.connect(nats_server.url, "kv") as client:
        with pytest.raises(SubmitError) as info:
            await client.submit("Put", 1, put("k", "v"), deadline=0.3)
    assert info.value.code == "deadline" and info.value.retriable


async def test_an_idle_primary_does_not_make_a_caught_up_standby_look_late(
    start: object, nats_server: NatsServer
) -> None:
    await start("a", primary=True)  # type: ignore[operator]
    b = await start("b")  # type: ignore[operator]
    async with await Client.connect(nats_server.url, "kv") as client:
        await client.submit("Put", 1, put("k", "v"))
    await b.node.progress.wait_for(lambda p: p.caught_up and p.last_replayed_seq == 2, timeout=10)
    await asyncio.sleep(1.0)  # the primary idles; time passes (this is the thing under test)
    status = b.node.status()
    assert status.caught_up and status.ready
    assert status.stream_lag == 0 and status.lag_ms == 0.0 and status.catch_up_eta_s == 0.0


async def test_a_built_state_is_frozen_out_of_full_collections_once(
    start: object, nats_server: NatsServer
) -> None:
    """A caught-up standby freezes the heap (jetstandby.heap) once for the state it adopted;
    a node told not to (``freeze_heap=False``, here the primary) never does."""
    assert gc.get_freeze_count() == 0
    with watch_logs() as logs:
        await start("a", primary=True, freeze_heap=False)  # type: ignore[operator]
        b = await start("b")  # type: ignore[operator]
        async with await Client.connect(nats_server.url, "kv") as client:
            for i in range(20):
                await client.submit("Put", 1, put(f"k{i}", "v"))
        await logs.wait_for("heap frozen")
        await b.node.progress.wait_for(lambda p: p.caught_up and p.last_replayed_seq == 21)
        async with await Client.connect(nats_server.url, "kv") as client:
            await client.submit("Put", 1, put("later", "v"))
        await b.node.progress.wait_for(lambda p: p.last_replayed_seq == 22, timeout=10)
    assert gc.get_freeze_count() > 0
    assert [m.rsplit("node=", 1)[1] for m in logs.seen("heap frozen")] == ["b"]


async def test_a_submission_with_invalid_utf8_is_a_bad_request(
    start: object, nats_server: NatsServer
) -> None:
    a = await start("a", primary=True)  # type: ignore[operator]
    nc = await connect(nats_server.url)
    request = submission.encode_submission(submission.Submission("r\xff", "Put", 1, put("k", "v")))
    reply = await nc.request("jsb.kv.submit", request.replace(b"r\xc3\xbf", b"r\xff"), timeout=5)
    answer = submission.decode_reply(reply.data)
    assert not answer.ok and answer.code == "bad_request"
    bad_engine_payload = await nc.request(
        "jsb.kv.submit",
        submission.encode_submission(
            submission.Submission("r2", "Put", 1, b"\x82\xa3key\xa1\xff\xa5value\xa1v")
        ),
        timeout=5,
    )
    assert submission.decode_reply(bad_engine_payload.data).ok  # a deterministic rejection
    assert a.node.role is Role.PRIMARY  # still serving
    await close_quietly(nc)


async def test_an_idle_deposed_primary_fences_itself_without_appending(
    start: object, nats_server: NatsServer
) -> None:
    a = await start("a", primary=True)  # type: ignore[operator]
    b = await start("b")  # type: ignore[operator]
    await b.node.promote(timeout=10)
    # No submission reaches a: its journal's idle probe of the tail finds b's marker.
    assert await asyncio.wait_for(a.task, 10) is Role.FENCED
    assert a.node.deposed and not a.node.status().ready
    assert "deposed by a newer epoch" in a.node.status().transitions[-1].reason


async def test_two_standbys_promoted_at_once_one_wins_the_other_is_refused(
    start: object, nats_server: NatsServer
) -> None:
    a = await start("a", primary=True)  # type: ignore[operator]
    b = await start("b")  # type: ignore[operator]
    c = await start("c")  # type: ignore[operator]
    async with await Client.connect(nats_server.url, "kv") as client:
        for i in range(20):
            await client.submit("Put", 1, put("k", str(i)))
    await asyncio.gather(
        *(n.node.progress.wait_for(lambda p: p.replay_cursor_seq == 21, 10) for n in (b, c))
    )
    await a.stop()
    answers = await asyncio.gather(
        b.node.promote(timeout=10), c.node.promote(timeout=10), return_exceptions=True
    )
    won = [
        n for n, answer in zip((b, c), answers, strict=True) if not isinstance(answer, Exception)
    ]
    lost = [answer for answer in answers if isinstance(answer, Exception)]
    assert len(won) == 1 and len(lost) == 1, answers
    winner = won[0].node
    assert isinstance(lost[0], PromotionRefused)
    assert f"node {winner.settings.node_id} took epoch 2" in lost[0].reason
    loser = c.node if winner is b.node else b.node
    assert winner.role is Role.PRIMARY and loser.role is Role.STANDBY
    async with await Client.connect(nats_server.url, "kv") as client:
        out = await client.submit("Put", 1, put("k", "after"))
    await loser.progress.wait_for(lambda p: p.last_replayed_seq == out.seq, timeout=10)
    assert loser.state.epoch == 2 and loser.digest() == winner.digest()


async def test_a_slow_primary_gets_longer_tries_instead_of_a_retry_storm(
    nats_server: NatsServer,
) -> None:
    nc = await connect(nats_server.url)
    arrivals: list[float] = []

    async def slow_primary(msg: Msg) -> None:  # 0.8 s per request, one at a time
        arrivals.append(asyncio.get_running_loop().time())
        await asyncio.sleep(0.8)
        reply = submission.SubmitReply(ok=True, seq=7, result=b"done")
        await msg.respond(submission.encode_reply(reply))

    await nc.subscribe("jsb.kv.submit", cb=slow_primary)
    try:
        async with await Client.connect(nats_server.url, "kv", request_timeout=0.3) as client:
            out = await client.submit("Put", 1, put("k", "v"), deadline=10)
    finally:
        await close_quietly(nc)
    # Like a real primary it handles one request at a time, so every resend queues behind
    # the others: with a fixed 0.3 s per try the queue only grows and no try is answered in
    # time. Tries of 0.3, 0.6, 1.2 and 2.4 s: the fourth outlasts its wait (done at 3.2 s).
    assert out.seq == 7 and 2 <= out.attempts <= 4
    assert len(arrivals) == out.attempts
