"""The replay loop on a real nats-server: exact progress, catch-up, restarts, halts."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest

from jetstandby import (
    CommandJournal,
    HandlerError,
    JetStreamFeed,
    JournalSettings,
    Position,
    ProtocolError,
    ReplayProgress,
    ReplaySettings,
    SequenceGapError,
    connect,
    ensure_stream,
    promote_channel,
    run_replay_loop,
)
from jetstandby.journal.base import OnInterrupt, OnMessage, Subscription
from jetstandby.journal.stream import NatsClient
from jetstandby.server import NatsServer
from jetstandby.wire import Envelope
from tests.support import Recorder, body, envelope, watch_logs

FAST = ReplaySettings(
    catch_up_interval=0.05,
    resubscribe_delay=0.05,
    resubscribe_failure_delay=0.2,
    idle_heartbeat=0.5,
)


@pytest.fixture
async def nc(nats_server: NatsServer) -> NatsClient:
    client = await connect(nats_server.url)
    yield client
    await client.close()


async def write(nc: NatsClient, settings: JournalSettings, upto: int, start: int = 1) -> None:
    """Journal commands ``start..upto`` through a real journal taking over at ``start - 1``."""
    after = Position(start - 1, start - 1, f"1-{start - 1}" if start > 1 else None)
    journal = await CommandJournal.open(nc, settings, epoch=1, after=after)
    futures = [await journal.append(envelope(seq)) for seq in range(start, upto + 1)]
    await asyncio.gather(*futures)
    await journal.aclose()


async def raw(nc: NatsClient, settings: JournalSettings, data: bytes) -> None:
    """Write straight into the stream, as a buggy or hostile writer would."""
    await nc.request(settings.subject, data, timeout=5)


class PausableFeed:
    """A real JetStream feed whose deliveries a test can hold back (the standby "pauses")."""

    def __init__(self, feed: JetStreamFeed) -> None:
        self._feed = feed
        self._held: list[tuple[int, int, bytes]] | None = None
        self._deliver: OnMessage | None = None

    async def last_stream_seq(self) -> int:
        return await self._feed.last_stream_seq()

    async def subscribe(
        self, start_stream_seq: int, on_message: OnMessage, on_interrupt: OnInterrupt
    ) -> Subscription:
        self._deliver = on_message

        def deliver(stream_seq: int, pending: int, data: bytes) -> None:
            if self._held is not None:
                self._held.append((stream_seq, pending, data))
            else:
                on_message(stream_seq, pending, data)

        return await self._feed.subscribe(start_stream_seq, deliver, on_interrupt)

    def pause(self) -> None:
        self._held = []

    def resume(self) -> None:
        held, self._held = self._held or [], None
        assert self._deliver is not None
        for item in held:
            self._deliver(*item)


async def test_replays_every_command_with_exact_progress(nc: NatsClient) -> None:
    settings = JournalSettings(journal="r1")
    await ensure_stream(nc, settings)
    await write(nc, settings, 2000)
    feed = await JetStreamFeed.open(nc, settings, FAST)
    handler, progress = Recorder(), ReplayProgress()
    sender, signal = promote_channel()
    task = asyncio.create_task(run_replay_loop(feed, handler, progress, signal, settings=FAST))
    await progress.wait_for(lambda p: p.caught_up, timeout=20)
    assert handler.seqs == list(range(1, 2001))
    assert progress.commands_replayed == 2000
    assert progress.last_replayed_seq == 2000
    assert progress.replay_cursor_seq == 2000
    assert progress.latest_stream_seq == 2000
    assert progress.stream_lag == 0
    assert progress.duplicates_skipped == 0
    assert progress.last_timestamp_ns == 1_000 + 2000
    assert progress.last_replay_unix_ms is not None
    assert abs(progress.last_replay_unix_ms - time.time() * 1000) < 60_000
    sender.promote()
    assert await task is handler


async def test_caught_up_true_then_false_while_paused_then_true(nc: NatsClient) -> None:
    settings = JournalSettings(journal="r2")
    await ensure_stream(nc, settings)
    await write(nc, settings, 100)
    feed = PausableFeed(await JetStreamFeed.open(nc, settings, FAST))
    handler, progress = Recorder(), ReplayProgress()
    sender, signal = promote_channel()
    with watch_logs() as logs:
        task = asyncio.create_task(run_replay_loop(feed, handler, progress, signal, settings=FAST))
        await progress.wait_for(lambda p: p.caught_up, timeout=10)
        feed.pause()
        await write(nc, settings, 150, start=101)
        await progress.wait_for(lambda p: not p.caught_up, timeout=10)
        assert progress.stream_lag == 50
        assert progress.last_replayed_seq == 100
        feed.resume()
        await progress.wait_for(lambda p: p.caught_up, timeout=10)
        sender.promote()
        await task
    assert handler.seqs == list(range(1, 151))
    assert len(logs.seen("Standby caught up with primary")) == 2
    assert "stream_lag=50" in logs.seen("Standby replay fell behind stream tail")[0]


async def test_server_killed_and_restarted_mid_replay_loses_and_repeats_nothing(
    nc: NatsClient, nats_server: NatsServer
) -> None:
    settings = JournalSettings(journal="r3")
    await ensure_stream(nc, settings)
    await write(nc, settings, 20_000)
    standby_nc = await connect(nats_server.url)
    feed = await JetStreamFeed.open(standby_nc, settings, FAST)

    class SlowRecorder(Recorder):
        def handle_command(self, command: Envelope) -> None:
            super().handle_command(command)
            if command.seq % 200 == 0:
                time.sleep(0.005)  # a busy engine: about 1 s for the whole backlog

    handler, progress = SlowRecorder(), ReplayProgress()
    sender, signal = promote_channel()
    with watch_logs() as logs:
        task = asyncio.create_task(run_replay_loop(feed, handler, progress, signal, settings=FAST))
        await progress.wait_for(lambda p: (p.last_replayed_seq or 0) >= 3000, timeout=20)
        await nats_server.stop(kill=True)
        assert (progress.last_replayed_seq or 0) < 20_000  # killed mid-replay
        await nats_server.start()
        await progress.wait_for(lambda p: p.resubscribes >= 1, timeout=20)
        await write(nc, settings, 21_000, start=20_001)  # the primary carries on after it
        await progress.wait_for(lambda p: p.last_replayed_seq == 21_000, timeout=30)
        sender.promote()
        await task
    assert handler.seqs == list(range(1, 21_001))
    assert progress.duplicates_skipped == 0
    resumed = [int(line.rsplit("=", 1)[1]) for line in logs.seen("resume_from_stream_seq=")]
    assert any(3000 < seq <= 20_000 for seq in resumed), resumed  # mid-replay, from cursor + 1
    await standby_nc.close()


async def test_promote_returns_and_a_dropped_sender_does_not(nc: NatsClient) -> None:
    settings = JournalSettings(journal="r4")
    await ensure_stream(nc, settings)
    await write(nc, settings, 10)
    feed = await JetStreamFeed.open(nc, settings, FAST)
    closed_sender, closed_signal = promote_channel()
    progress = ReplayProgress()
    looping = asyncio.create_task(
        run_replay_loop(feed, Recorder(), progress, closed_signal, settings=FAST)
    )
    closed_sender.close()
    await write(nc, settings, 20, start=11)
    await progress.wait_for(lambda p: p.last_replayed_seq == 20, timeout=10)
    assert not looping.done()
    looping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await looping

    sender, signal = promote_channel()
    handler, progress = Recorder(), ReplayProgress()
    task = asyncio.create_task(run_replay_loop(feed, handler, progress, signal, settings=FAST))
    await progress.wait_for(lambda p: p.last_replayed_seq == 20, timeout=10)
    sender.promote()
    assert await task is handler
    assert handler.seqs == list(range(1, 21))


async def test_duplicates_are_skipped_and_a_gap_halts(nc: NatsClient) -> None:
    settings = JournalSettings(journal="r5")
    await ensure_stream(nc, settings)
    for seq in (1, 2, 3, 2, 4, 6, 7):
        await raw(nc, settings, body(seq))
    feed = await JetStreamFeed.open(nc, settings, FAST)
    handler, progress = Recorder(), ReplayProgress()
    _sender, signal = promote_channel()
    with pytest.raises(SequenceGapError) as info:
        await run_replay_loop(feed, handler, progress, signal, settings=FAST)
    assert (info.value.expected, info.value.got, info.value.stream_seq) == (5, 6, 6)
    assert handler.seqs == [1, 2, 3, 4]
    assert progress.duplicates_skipped == 1
    assert progress.error is info.value


@pytest.mark.parametrize(
    ("poison", "error", "needle"),
    [
        (b"\xde\xad\xbe\xef garbage", ProtocolError, "stream seq 4"),
        (msgspec.msgpack.encode([1, 4, 1, 9, "Put", 1]), ProtocolError, "stream seq 4"),
        (
            msgspec.msgpack.encode([1, 4, 1, 9, "Put", 1, b"x"]).replace(b"Put", b"P\xffu"),
            ProtocolError,
            "not valid UTF-8",
        ),
        (
            msgspec.msgpack.encode([1, 4, 1, 9, "Put", 99, b"x"]),
            HandlerError,
            "unknown command version 99",
        ),
    ],
)
async def test_poison_halts_the_standby_and_nothing_after_it_is_applied(
    nc: NatsClient, poison: bytes, error: type[Exception], needle: str
) -> None:
    settings = JournalSettings(journal="r6")
    await ensure_stream(nc, settings)
    await write(nc, settings, 3)
    await raw(nc, settings, poison)
    await raw(nc, settings, body(5))

    class VersionedRecorder(Recorder):
        def handle_command(self, command: Envelope) -> None:
            if command.command_version != 1:
                raise ValueError(f"unknown command version {command.command_version}")
            super().handle_command(command)

    feed = await JetStreamFeed.open(nc, settings, FAST)
    handler, progress = VersionedRecorder(), ReplayProgress()
    _sender, signal = promote_channel()
    with pytest.raises(error) as info:
        await run_replay_loop(feed, handler, progress, signal, settings=FAST)
    assert needle in str(info.value)
    assert handler.seqs == [1, 2, 3]
    assert progress.last_replayed_seq == 3
    assert progress.error is info.value
    assert progress.error.stream_seq == 4  # type: ignore[union-attr]
