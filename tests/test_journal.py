"""The JetStream journal against a real nats-server: appends, fencing, resends, refusals."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from jetstandby import (
    CommandJournal,
    FencedError,
    JournalClosed,
    JournalSettings,
    JournalState,
    JournalUnavailable,
    Position,
    StreamMismatch,
    WireError,
    connect,
    ensure_stream,
)
from jetstandby.journal.stream import NatsClient, last_message, read_journal
from jetstandby.server import NatsServer
from tests.support import body, envelope


async def stored_ids(nc: NatsClient, settings: JournalSettings) -> list[str | None]:
    """Every message id in the stream, in stream order."""
    return [msg_id for msg_id, _ in await read_journal(nc, settings)]


@pytest.fixture
async def nc(nats_server: NatsServer) -> NatsClient:
    client = await connect(nats_server.url)
    yield client
    await client.close()


async def open_journal(
    nc: NatsClient, settings: JournalSettings, *, epoch: int = 1, after: Position | None = None
) -> CommandJournal:
    await ensure_stream(nc, settings)
    return await CommandJournal.open(nc, settings, epoch=epoch, after=after or Position())


async def test_appends_are_acknowledged_in_order_and_stored_once(nc: NatsClient) -> None:
    settings = JournalSettings(journal="t1", window=64, ack_every=8)
    journal = await open_journal(nc, settings)
    futures = [await journal.append(envelope(seq)) for seq in range(1, 1001)]
    acks = await asyncio.gather(*futures)
    assert [(a.seq, a.stream_seq, a.duplicate) for a in acks] == [
        (s, s, False) for s in range(1, 1001)
    ]
    assert journal.stored == Position(1000, 1000, "1-1000")
    assert journal.in_flight == 0
    assert await stored_ids(nc, settings) == [f"1-{s}" for s in range(1, 1001)]
    await journal.aclose()


async def test_fencing_with_a_full_window_in_flight(
    nc: NatsClient, nats_server: NatsServer
) -> None:
    """A foreign write lands in the middle of a full window of ours: none of ours after it.

    The server is paused while the whole window and the intruder's write are queued on one
    connection, so the server reads them in exactly this order: 511 of ours, the intruder,
    then 513 more of ours, all in flight together.
    """
    settings = JournalSettings(journal="fence", window=1024, ack_every=16)
    journal = await open_journal(nc, settings)
    await journal.append_and_wait(envelope(1))
    nats_server.pause()
    try:
        window = [await journal.append(envelope(seq)) for seq in range(2, 513)]
        while journal._sent_upto < 512:  # noqa: ASYNC110 - yield until the flusher has sent it all
            await asyncio.sleep(0)
        # Another writer (epoch 2) appends in the middle of the window.
        await nc.publish(settings.subject, body(513, epoch=2), headers={"Nats-Msg-Id": "2-513"})
        window += [await journal.append(envelope(seq)) for seq in range(513, 1026)]
        assert journal.in_flight == 1024  # the window is full
        while journal._sent_upto < 1025:  # noqa: ASYNC110
            await asyncio.sleep(0)
    finally:
        nats_server.resume()
    later: list[asyncio.Future[object]] = []
    for seq in range(1026, 4001):
        try:
            later.append(await journal.append(envelope(seq)))  # type: ignore[arg-type]
        except FencedError:
            break
    results = await asyncio.gather(*window, *later, return_exceptions=True)

    ids = await stored_ids(nc, settings)
    assert ids == [f"1-{s}" for s in range(1, 513)] + ["2-513"]  # zero of ours after it
    accepted = [r for r in results if not isinstance(r, BaseException)]
    fenced = [r for r in results if isinstance(r, FencedError)]
    assert [a.seq for a in accepted] == list(range(2, 513))  # type: ignore[attr-defined]
    assert len(fenced) == len(results) - len(accepted) >= 513  # all in-flight after it refused
    assert journal.state is JournalState.FENCED
    with pytest.raises(FencedError):
        await journal.append(envelope(journal.next_seq))
    await journal.aclose()


async def test_fenced_journal_refuses_every_later_append(nc: NatsClient) -> None:
    settings = JournalSettings(journal="fence2", window=8, ack_every=1)
    journal = await open_journal(nc, settings)
    await journal.append_and_wait(envelope(1))
    await nc.request(settings.subject, body(2, epoch=7), headers={"Nats-Msg-Id": "7-2"}, timeout=5)
    with pytest.raises(FencedError, match="7-2"):
        await journal.append_and_wait(envelope(2))
    for _ in range(3):
        with pytest.raises(FencedError):
            await journal.append(envelope(journal.next_seq))
    assert await stored_ids(nc, settings) == ["1-1", "7-2"]
    await journal.aclose()


async def test_resends_after_a_server_crash_store_each_command_once(
    nc: NatsClient, nats_server: NatsServer
) -> None:
    settings = JournalSettings(
        journal="crash", window=256, ack_every=16, ack_timeout=0.3, unavailable_after=30
    )
    journal = await open_journal(nc, settings)
    futures = [await journal.append(envelope(seq)) for seq in range(1, 501)]
    await futures[-1]
    await nats_server.stop(kill=True)
    during = [await journal.append(envelope(seq)) for seq in range(501, 701)]
    await nats_server.start()
    after = [await journal.append(envelope(seq)) for seq in range(701, 1001)]
    acks = await asyncio.gather(*futures, *during, *after)
    assert [a.seq for a in acks] == list(range(1, 1001))
    assert [a.stream_seq for a in acks] == list(range(1, 1001))
    assert await stored_ids(nc, settings) == [f"1-{s}" for s in range(1, 1001)]
    assert journal.state is JournalState.OPEN
    await journal.aclose()


async def test_unacknowledged_append_surfaces_unavailable_then_still_lands(
    nc: NatsClient, nats_server: NatsServer
) -> None:
    settings = JournalSettings(
        journal="unavail", window=16, ack_every=1, ack_timeout=0.2, unavailable_after=1.0
    )
    journal = await open_journal(nc, settings)
    await journal.append_and_wait(envelope(1))
    await nats_server.stop()
    future = await journal.append(envelope(2))
    with pytest.raises(JournalUnavailable, match="outcome is unknown"):
        await future
    stored = journal.when_stored(2)
    assert not stored.done()
    await nats_server.start()
    assert (await stored).seq >= 2  # the journal kept resending; now it is known stored
    ack = await journal.append_and_wait(envelope(3))  # the journal kept resending seq 2
    assert (ack.seq, ack.stream_seq) == (3, 3)
    assert await stored_ids(nc, settings) == ["1-1", "1-2", "1-3"]
    await journal.aclose()


async def test_a_journal_takes_over_after_a_known_position(nc: NatsClient) -> None:
    settings = JournalSettings(journal="takeover", ack_every=1)
    first = await open_journal(nc, settings, epoch=1)
    await first.append_and_wait(envelope(1))
    await first.append_and_wait(envelope(2))
    tail = await last_message(nc, settings)
    assert tail is not None and tail.msg_id == "1-2"
    second = await open_journal(nc, settings, epoch=2, after=Position(2, tail.stream_seq, "1-2"))
    assert (await second.append_and_wait(envelope(3, epoch=2))).stream_seq == 3
    with pytest.raises(FencedError):
        await first.append_and_wait(envelope(3))
    assert await stored_ids(nc, settings) == ["1-1", "1-2", "2-3"]
    await first.aclose()
    await second.aclose()


async def test_bad_appends_are_refused_before_anything_is_published(nc: NatsClient) -> None:
    settings = JournalSettings(journal="bad", ack_every=1)
    journal = await open_journal(nc, settings)
    with pytest.raises(ValueError, match="expects seq 1 epoch 1, got seq 2"):
        await journal.append(envelope(2))
    with pytest.raises(ValueError, match="epoch"):
        await journal.append(envelope(1, epoch=5))
    with pytest.raises(WireError, match=r"command seq 1 encodes to \d+ bytes, which with"):
        await journal.append(envelope(1, payload=b"x" * (nc.max_payload + 1)))
    assert journal.next_seq == 1
    await journal.append_and_wait(envelope(1))
    await journal.aclose()
    await journal.aclose()  # idempotent
    with pytest.raises(JournalClosed):
        await journal.append(envelope(2))
    assert await stored_ids(nc, settings) == ["1-1"]


async def test_an_unsafe_existing_stream_is_refused_naming_each_setting(nc: NatsClient) -> None:
    settings = JournalSettings(journal="unsafe")
    await nc.jetstream().add_stream(
        StreamConfig(
            name=settings.stream,
            subjects=[settings.subject],
            storage=StorageType.MEMORY,
            deny_delete=False,
            duplicate_window=1,
        )
    )
    with pytest.raises(StreamMismatch) as info:
        await ensure_stream(nc, settings)
    for field in ("storage", "deny_delete", "deny_purge", "discard", "duplicate_window"):
        assert field in str(info.value)


async def test_connect_to_nothing_is_unavailable() -> None:
    with pytest.raises(JournalUnavailable, match="no NATS server answered"):
        await connect("nats://127.0.0.1:1")


async def test_stream_settings_are_the_documented_ones(nc: NatsClient) -> None:
    settings = JournalSettings(journal="doc", replicas=1, duplicate_window=90)
    info = await ensure_stream(nc, settings)
    config = info.config
    assert config.subjects == ["jsb.doc.journal"]
    assert config.storage == StorageType.FILE
    assert (config.deny_delete, config.deny_purge, config.allow_rollup_hdrs) == (True, True, False)
    assert config.discard == DiscardPolicy.NEW
    assert config.duplicate_window == 90
    again = await ensure_stream(nc, settings)  # idempotent on an existing, matching stream
    assert again.config.name == settings.stream
    assert nats.__name__ == "nats"


async def test_only_an_idle_journal_probes_the_tail(
    nc: NatsClient, nats_server: NatsServer
) -> None:
    """The fence probe reads the stream's tail when nothing was acknowledged for
    ``fence_probe_interval``. A journal acknowledged more often than that never probes: the
    probe would hold its sends back for a round trip, and its appends prove the tail anyway.
    Appends here are paced so that nothing is in flight most of the time."""
    settings = JournalSettings(journal="probe", fence_probe_interval=0.5)
    journal = await open_journal(nc, settings)
    watcher = await connect(nats_server.url)
    tail_reads = await watcher.subscribe(f"$JS.API.STREAM.MSG.GET.{settings.stream}")
    await watcher.flush()
    try:
        for seq in range(1, 81):  # 80 x 25 ms: four probe intervals, busy throughout
            await journal.append_and_wait(envelope(seq))
            await asyncio.sleep(0.025)
        assert tail_reads.pending_msgs == 0
        await tail_reads.next_msg(timeout=5)  # idle now: it probes
    finally:
        await journal.aclose()
        await watcher.close()
