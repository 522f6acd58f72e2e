"""The replay loop on the in-memory twin: every seed test, and the behaviours beyond it."""

from __future__ import annotations

import asyncio
import gc

import msgspec
import pytest

from jetstandby import (
    HandlerError,
    MemoryFeed,
    MemoryJournal,
    MemoryLog,
    Position,
    ProtocolError,
    ReplayProgress,
    ReplaySettings,
    SequenceGapError,
    SignalResult,
    is_promote_signal,
    promote_channel,
    run_replay_loop,
)
from jetstandby.journal.memory import MemoryMessage
from jetstandby.replay import PromoteSignal, is_caught_up_to_stream_tail
from tests.support import Recorder, body, envelope, watch_logs

FAST = ReplaySettings(
    catch_up_interval=0.01,
    progress_log_interval=0.05,
    resubscribe_delay=0.0,
    resubscribe_failure_delay=0.01,
)


# -- the seed's own tests -------------------------------------------------------------


def test_sender_drop_is_not_promote() -> None:
    assert not is_promote_signal(SignalResult.CLOSED)


def test_explicit_send_is_promote() -> None:
    assert is_promote_signal(SignalResult.PROMOTE)


async def test_lagged_is_promote() -> None:
    # The seed treats a lagged receiver (it missed sends) as a promote. Our signal is
    # latched, so a promote sent while nobody listened is still seen as one.
    sender, signal = promote_channel()
    sender.promote()
    sender.close()  # a later close does not undo it
    assert await signal.wait() is SignalResult.PROMOTE


def test_caught_up_when_replay_cursor_reaches_stream_tail() -> None:
    assert is_caught_up_to_stream_tail(10, 10)


def test_caught_up_allows_empty_tail_at_start_cursor() -> None:
    assert is_caught_up_to_stream_tail(0, 0)


def test_caught_up_waits_for_stream_tail() -> None:
    assert not is_caught_up_to_stream_tail(9, 10)


def test_progress_can_move_from_caught_up_to_behind() -> None:
    progress = ReplayProgress()
    assert progress.update_catch_up_state(10, 10) is True
    assert progress.is_caught_up()
    assert progress.stream_lag == 0
    assert progress.update_catch_up_state(12, 10) is True
    assert not progress.is_caught_up()
    assert progress.stream_lag == 2
    assert progress.update_catch_up_state(13, 10) is False  # no change, no transition


def test_new_progress_knows_nothing_yet() -> None:
    progress = ReplayProgress()
    assert progress.commands_replayed == 0
    assert not progress.caught_up
    assert progress.replay_cursor_seq is None
    assert progress.last_replayed_seq is None
    assert progress.last_replay_unix_ms is None
    assert progress.latest_stream_seq is None
    assert progress.stream_lag is None


async def test_dropped_sender_closes_the_signal() -> None:
    sender, signal = promote_channel()
    del sender
    gc.collect()
    assert await signal.wait() is SignalResult.CLOSED


# -- the loop -------------------------------------------------------------------------


def fill(log: MemoryLog, upto: int, start: int = 1) -> None:
    for seq in range(start, upto + 1):
        log.publish(body(seq))


async def start(
    log: MemoryLog,
    handler: Recorder | None = None,
    *,
    start_after: Position = Position(),  # noqa: B008
    feed: MemoryFeed | None = None,
) -> tuple[asyncio.Task[Recorder], Recorder, ReplayProgress, object, MemoryFeed]:
    handler = handler or Recorder()
    progress = ReplayProgress()
    sender, signal = promote_channel()
    feed = feed or MemoryFeed(log)
    task = asyncio.create_task(
        run_replay_loop(feed, handler, progress, signal, start_after=start_after, settings=FAST)
    )
    return task, handler, progress, sender, feed


async def test_replays_everything_with_exact_progress() -> None:
    log = MemoryLog()
    fill(log, 100)
    task, handler, progress, sender, _ = await start(log)
    await progress.wait_for(lambda p: p.caught_up, timeout=5)
    assert handler.seqs == list(range(1, 101))
    assert progress.commands_replayed == 100
    assert progress.last_replayed_seq == 100
    assert progress.replay_cursor_seq == 100
    assert progress.latest_stream_seq == 100
    assert progress.stream_lag == 0
    assert progress.last_timestamp_ns == 1_100
    assert progress.last_replay_unix_ms is not None
    assert progress.duplicates_skipped == 0
    sender.promote()  # type: ignore[attr-defined]
    assert await task is handler


async def test_resumes_after_a_start_position() -> None:
    log = MemoryLog()
    fill(log, 10)
    task, handler, progress, sender, _ = await start(log, start_after=Position(6, 6, "1-6"))
    await progress.wait_for(lambda p: p.caught_up, timeout=5)
    assert handler.seqs == [7, 8, 9, 10]
    sender.promote()  # type: ignore[attr-defined]
    await task


async def test_caught_up_goes_false_while_paused_and_back_with_logs() -> None:
    log = MemoryLog()
    fill(log, 5)
    with watch_logs() as logs:
        task, _, progress, sender, feed = await start(log)
        await progress.wait_for(lambda p: p.caught_up, timeout=5)
        feed.pause()
        fill(log, 8, start=6)
        await progress.wait_for(lambda p: not p.caught_up, timeout=5)
        assert progress.stream_lag == 3
        feed.resume()
        await progress.wait_for(lambda p: p.caught_up, timeout=5)
        sender.promote()  # type: ignore[attr-defined]
        await task
    caught = logs.seen("Standby caught up with primary")
    behind = logs.seen("Standby replay fell behind stream tail")
    assert len(caught) == 2 and len(behind) == 1
    assert "stream_lag=3" in behind[0]
    assert "replay_cursor_seq=8" in caught[1] and "latest_stream_seq=8" in caught[1]


async def test_progress_is_logged_on_its_interval() -> None:
    log = MemoryLog()
    fill(log, 3)
    with watch_logs() as logs:
        task, _, _, sender, _ = await start(log)
        line = await logs.wait_for("Standby replay progress")
        sender.promote()  # type: ignore[attr-defined]
        await task
    assert "commands_replayed=" in line and "batch_since_last_log=" in line
    assert "caught_up=" in line


async def test_failed_refresh_is_logged_and_leaves_state_alone() -> None:
    log = MemoryLog()
    fill(log, 3)
    with watch_logs() as logs:
        task, _, progress, sender, _ = await start(log)
        await progress.wait_for(lambda p: p.caught_up, timeout=5)
        log.available = False
        await logs.wait_for("Cannot determine standby catch-up status")
        assert progress.caught_up
        assert progress.latest_stream_seq == 3
        log.available = True
        sender.promote()  # type: ignore[attr-defined]
        await task


async def test_explicit_promote_returns_the_handler_and_stops_applying() -> None:
    log = MemoryLog()
    fill(log, 3)
    task, handler, progress, sender, _ = await start(log)
    await progress.wait_for(lambda p: p.last_replayed_seq == 3, timeout=5)
    with watch_logs() as logs:
        sender.promote()  # type: ignore[attr-defined]
        assert await task is handler
    assert logs.seen("promote signal received")
    fill(log, 6, start=4)
    await asyncio.sleep(0)  # give any stray delivery its chance to (wrongly) apply
    assert handler.seqs == [1, 2, 3]


async def test_closed_channel_is_not_a_promote_and_replay_goes_on() -> None:
    log = MemoryLog()
    fill(log, 3)
    with watch_logs() as logs:
        task, handler, progress, sender, _ = await start(log)
        sender.close()  # type: ignore[attr-defined]
        await logs.wait_for("not a promote signal")
        fill(log, 10, start=4)
        await progress.wait_for(lambda p: p.last_replayed_seq == 10, timeout=5)
    assert not task.done()
    assert handler.seqs == list(range(1, 11))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_dropped_sender_is_not_a_promote() -> None:
    log = MemoryLog()
    fill(log, 2)
    progress = ReplayProgress()
    sender, signal = promote_channel()
    task = asyncio.create_task(
        run_replay_loop(MemoryFeed(log), Recorder(), progress, signal, settings=FAST)
    )
    with watch_logs() as logs:
        del sender
        gc.collect()
        await logs.wait_for("not a promote signal")
    fill(log, 5, start=3)
    await progress.wait_for(lambda p: p.last_replayed_seq == 5, timeout=5)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_redelivered_commands_are_skipped_and_counted() -> None:
    log = MemoryLog()
    fill(log, 3)
    log.publish(body(2))  # the same command again, at stream seq 4
    log.publish(body(4))
    task, handler, progress, sender, _ = await start(log)
    await progress.wait_for(lambda p: p.caught_up, timeout=5)
    assert handler.seqs == [1, 2, 3, 4]
    assert progress.duplicates_skipped == 1
    assert progress.replay_cursor_seq == 5
    sender.promote()  # type: ignore[attr-defined]
    await task


async def test_gap_halts_naming_both_seqs() -> None:
    log = MemoryLog()
    fill(log, 3)
    log.publish(body(5))
    log.publish(body(6))
    task, handler, progress, _, _ = await start(log)
    with pytest.raises(SequenceGapError) as info:
        await task
    assert (info.value.expected, info.value.got, info.value.stream_seq) == (4, 5, 4)
    assert "expected command seq 4, got 5" in str(info.value)
    assert handler.seqs == [1, 2, 3]
    assert progress.error is info.value
    assert progress.last_replayed_seq == 3 and not progress.caught_up


async def test_handler_failure_halts_at_that_seq() -> None:
    log = MemoryLog()
    fill(log, 6)
    task, handler, progress, _, _ = await start(log, Recorder(fail_at=4))
    with pytest.raises(HandlerError) as info:
        await task
    assert info.value.seq == 4 and info.value.stream_seq == 4
    assert "engine refused seq 4" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert handler.seqs == [1, 2, 3]
    assert progress.last_replayed_seq == 3
    assert progress.error is info.value


@pytest.mark.parametrize(
    "poison",
    [b"\x00\xffgarbage", msgspec.msgpack.encode([1, 4, 1, 1, "Put", "v1", b""])],
)
async def test_poison_message_halts_with_its_stream_seq(poison: bytes) -> None:
    log = MemoryLog()
    fill(log, 3)
    log.publish(poison)
    log.publish(body(4))
    task, handler, _, _, _ = await start(log)
    with pytest.raises(ProtocolError) as info:
        await task
    assert info.value.stream_seq == 4
    assert "stream seq 4" in str(info.value)
    assert handler.seqs == [1, 2, 3]


async def test_interrupted_feed_resubscribes_from_cursor_without_loss_or_duplicates() -> None:
    log = MemoryLog()
    fill(log, 50)
    task, handler, progress, sender, feed = await start(log)
    await progress.wait_for(lambda p: p.last_replayed_seq == 20, timeout=5)
    with watch_logs() as logs:
        feed.interrupt("stalled")
        await progress.wait_for(lambda p: p.resubscribes == 1, timeout=5)
    assert logs.seen("NATS stream ended (stalled)")
    assert logs.seen("NATS stream reconnected resume_from_stream_seq=")
    fill(log, 80, start=51)
    await progress.wait_for(lambda p: p.last_replayed_seq == 80, timeout=5)
    assert handler.seqs == list(range(1, 81))
    assert feed.subscriptions[1]._next > 21  # the new consumer did not start from scratch
    sender.promote()  # type: ignore[attr-defined]
    await task


async def test_failed_resubscribe_is_retried() -> None:
    log = MemoryLog()
    fill(log, 5)
    with watch_logs() as logs:
        log.available = False
        task, handler, progress, sender, _ = await start(log)
        await logs.wait_for("Failed to reconnect NATS stream, retrying")
        log.available = True
        await progress.wait_for(lambda p: p.last_replayed_seq == 5, timeout=5)
    assert handler.seqs == [1, 2, 3, 4, 5]
    sender.promote()  # type: ignore[attr-defined]
    await task


async def test_stale_deliveries_below_the_cursor_are_ignored() -> None:
    log = MemoryLog()
    fill(log, 3)
    task, handler, progress, sender, feed = await start(log)
    await progress.wait_for(lambda p: p.last_replayed_seq == 3, timeout=5)
    # a late delivery from an old subscription for a stream seq already processed
    feed.subscriptions[0]._on_message(2, 1, log.messages[1].data)
    assert handler.seqs == [1, 2, 3]
    assert progress.duplicates_skipped == 0
    sender.promote()  # type: ignore[attr-defined]
    await task


async def test_lag_comes_from_pending_counts_without_a_refresh() -> None:
    log = MemoryLog()
    fill(log, 10)
    progress = ReplayProgress()
    sender, signal = promote_channel()
    slow = ReplaySettings(catch_up_interval=3600)  # only the first refresh runs
    feed = MemoryFeed(log)
    task = asyncio.create_task(run_replay_loop(feed, Recorder(), progress, signal, settings=slow))
    await progress.wait_for(lambda p: p.last_replayed_seq == 10, timeout=5)
    feed.pause()
    fill(log, 15, start=11)
    feed.resume()
    await progress.wait_for(lambda p: p.last_replayed_seq == 11, timeout=5)
    assert progress.latest_stream_seq == 15  # known from the delivery's pending count
    sender.promote()
    await task


async def test_memory_journal_fences_after_a_foreign_write() -> None:
    log = MemoryLog()
    journal = MemoryJournal(log, epoch=1)
    await journal.append_and_wait(envelope(1))
    log.publish(body(2, epoch=9), {"Nats-Msg-Id": "9-2"})
    from jetstandby import FencedError

    with pytest.raises(FencedError):
        await journal.append(envelope(2))
    with pytest.raises(FencedError):
        await journal.append(envelope(2))
    assert [m.msg_id for m in log.messages] == ["1-1", "9-2"]
    assert isinstance(log.messages[0], MemoryMessage)


async def test_signal_wait_is_reusable() -> None:
    signal = PromoteSignal()
    signal._set(SignalResult.PROMOTE)
    assert await signal.wait() is SignalResult.PROMOTE
    assert await signal.wait() is SignalResult.PROMOTE
