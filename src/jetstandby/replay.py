"""The standby side: follow the journal, apply every command once, in order, and say how far
behind you are.

This is the Python form of the seed's ``replay_loop.rs``; every behaviour there is kept:
the progress counters, the 250 ms catch-up refresh, the "caught up" / "fell behind" logs, the
10 s progress log, re-subscribing after the feed ends or errors, and returning only on an
explicit promote signal. Beyond the seed it checks that command seqs are contiguous, halts on
a handler error, a malformed envelope or a gap, and reads lag from each delivery instead of
asking the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
import weakref
from collections.abc import Callable
from typing import Final, Protocol, TypeVar

from jetstandby import wire
from jetstandby.config import ReplaySettings
from jetstandby.errors import (
    HandlerError,
    HistoryLost,
    JetstandbyError,
    ProtocolError,
    ReplayError,
    SequenceGapError,
    UnsupportedCommand,
    VersionGateError,
    WireError,
)
from jetstandby.journal.base import Feed, Position, Subscription

logger = logging.getLogger(__name__)

CATCH_UP_TICK_INTERVAL: Final = 0.25
PROGRESS_LOG_INTERVAL: Final = 10.0


def is_caught_up_to_stream_tail(replay_cursor_seq: int, latest_stream_seq: int) -> bool:
    """Caught up means the cursor has reached the stream's tail (an empty stream counts)."""
    return replay_cursor_seq >= latest_stream_seq


class ReplayProgress:
    """How far a standby has got, readable at any time without a round trip.

    The fields mean what the seed's do: ``replay_cursor_seq`` is the last *stream* seq
    processed, ``last_replayed_seq`` the last *command* seq applied, ``latest_stream_seq`` the
    newest tail seen (from each delivery's pending count and the 250 ms refresh). ``None``
    means "not known yet". Beyond the seed: ``duplicates_skipped``, ``resubscribes``,
    ``last_timestamp_ns`` (the primary's clock on the last applied command) and ``error``
    (why replay halted; nothing after ``error.seq`` was applied).
    """

    def __init__(self) -> None:
        self.commands_replayed = 0
        self.caught_up = False
        self.replay_cursor_seq: int | None = None
        self.last_replayed_seq: int | None = None
        self.last_replay_unix_ms: int | None = None
        self.latest_stream_seq: int | None = None
        self.duplicates_skipped = 0
        self.resubscribes = 0
        self.last_timestamp_ns: int | None = None
        #: The stream seq of the last epoch marker replay applied (0: none seen).
        self.epoch_stream_seq = 0
        self.error: ReplayError | None = None
        self._waiters: list[tuple[Callable[[ReplayProgress], bool], asyncio.Future[None]]] = []

    def is_caught_up(self) -> bool:
        return self.caught_up

    @property
    def stream_lag(self) -> int | None:
        """Messages in the stream not yet processed; ``None`` until both ends are known."""
        if self.latest_stream_seq is None or self.replay_cursor_seq is None:
            return None
        return max(0, self.latest_stream_seq - max(self.replay_cursor_seq, 0))

    @property
    def halted(self) -> bool:
        return self.error is not None

    def set_replay_cursor(self, seq: int) -> None:
        self.replay_cursor_seq = seq
        self._notify()

    def record_replayed(self, command_seq: int, stream_seq: int, timestamp_ns: int) -> None:
        self.commands_replayed += 1
        self.replay_cursor_seq = stream_seq
        self.last_replayed_seq = command_seq
        self.last_replay_unix_ms = time.time_ns() // 1_000_000
        self.last_timestamp_ns = timestamp_ns
        if self._waiters:
            self._notify()

    def record_duplicate(self, stream_seq: int) -> None:
        self.duplicates_skipped += 1
        self.set_replay_cursor(stream_seq)

    def observe_tail(self, latest_stream_seq: int) -> None:
        """A delivery said the stream reaches at least ``latest_stream_seq``."""
        if self.latest_stream_seq is None or latest_stream_seq > self.latest_stream_seq:
            self.latest_stream_seq = latest_stream_seq

    def update_catch_up_state(self, latest_stream_seq: int, replay_cursor_seq: int) -> bool:
        """Refresh caught-up from a known tail; True when the flag changed."""
        self.latest_stream_seq = latest_stream_seq
        self.replay_cursor_seq = replay_cursor_seq
        caught_up = is_caught_up_to_stream_tail(replay_cursor_seq, latest_stream_seq)
        changed = caught_up != self.caught_up
        self.caught_up = caught_up
        self._notify()
        return changed

    def halt(self, error: ReplayError) -> None:
        self.error = error
        self.caught_up = False
        self._notify()

    def resume(self, stream_seq: int) -> None:
        """An operator action cleared the halt; replay goes on after ``stream_seq``."""
        self.error = None
        self.set_replay_cursor(stream_seq)

    async def wait_for(
        self, predicate: Callable[[ReplayProgress], bool], timeout: float | None = None
    ) -> None:
        """Wait until ``predicate(progress)`` holds; re-checked on every change, never polled."""
        if predicate(self):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (predicate, future)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await future
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)

    def _notify(self) -> None:
        for predicate, future in list(self._waiters):
            if not future.done() and predicate(self):
                future.set_result(None)


class ReplayHandler(Protocol):
    """Called for every command in journal order, control commands included.

    It runs inside the replay loop and must be synchronous and deterministic: an engine's
    ``apply``. Raising halts replay at that command; nothing after it is applied.
    """

    def handle_command(self, command: wire.Envelope) -> None: ...


class SignalResult(enum.Enum):
    """What waiting on a :class:`PromoteSignal` returned."""

    PROMOTE = "promote"
    CLOSED = "closed"


def is_promote_signal(result: SignalResult) -> bool:
    """Only an explicit promote is a promote; a closed or dropped sender is not.

    The seed also treats a *lagged* broadcast receiver (sends it missed) as a promote. Here the
    signal is latched: a promote sent before anyone waits, or while nobody is waiting, is still
    seen by the next :meth:`PromoteSignal.wait`. Missing a send is therefore impossible, and a
    late listener gets PROMOTE, which is the seed's lagged rule kept by construction.
    """
    if result is SignalResult.PROMOTE:
        return True
    logger.warning("Promote channel closed (sender dropped); not a promote signal, ignoring")
    return False


class PromoteSignal:
    """The receiving end of a promote channel; see :func:`promote_channel`."""

    def __init__(self) -> None:
        self._result: SignalResult | None = None
        self._event = asyncio.Event()

    def _set(self, result: SignalResult) -> None:
        if self._result is None:
            self._result = result
            self._event.set()

    async def wait(self) -> SignalResult:
        """Return once the sender promotes (PROMOTE) or is closed or dropped (CLOSED)."""
        await self._event.wait()
        assert self._result is not None
        return self._result


class PromoteSender:
    """The sending end: :meth:`promote` once. Closing it, or dropping it, is not a promote."""

    def __init__(self, signal: PromoteSignal) -> None:
        self._signal = signal

    def promote(self) -> None:
        self._signal._set(SignalResult.PROMOTE)

    def close(self) -> None:
        self._signal._set(SignalResult.CLOSED)


def promote_channel() -> tuple[PromoteSender, PromoteSignal]:
    """A one-shot, latched promote channel. When the sender is garbage-collected, the
    receiver sees CLOSED, as a dropped ``broadcast::Sender`` does in the seed."""
    signal = PromoteSignal()
    sender = PromoteSender(signal)
    weakref.finalize(sender, signal._set, SignalResult.CLOSED)
    return sender, signal


H = TypeVar("H", bound=ReplayHandler)


async def run_replay_loop(
    feed: Feed,
    handler: H,
    progress: ReplayProgress,
    promote: PromoteSignal,
    *,
    start_after: Position = Position(),  # noqa: B008 - frozen value object
    settings: ReplaySettings | None = None,
    max_body: int | None = None,
) -> H:
    """Replay the journal into ``handler`` from just after ``start_after`` until promoted.

    Returns ``handler`` only when ``promote`` fires; a closed promote channel, a feed that
    ends or errors, or a NATS server restart never end the loop (it re-subscribes from its
    cursor + 1). Raises a :class:`ReplayError` subclass when replay must halt: the handler
    raised (:class:`HandlerError`), an envelope is malformed (:class:`ProtocolError`) or
    command seqs skip (:class:`SequenceGapError`). ``max_body``: a larger message is one no
    writer could have journaled, and halts replay too. ``progress`` shows the same error.
    Cancelling the call stops replay cleanly.
    """
    run = _ReplayRun(feed, handler, progress, settings or ReplaySettings(), start_after, max_body)
    await run.run(promote)
    return handler


class _ReplayRun:
    def __init__(
        self,
        feed: Feed,
        handler: ReplayHandler,
        progress: ReplayProgress,
        settings: ReplaySettings,
        start_after: Position,
        max_body: int | None = None,
    ) -> None:
        self._feed = feed
        self._max_body = max_body
        self._handler = handler
        self._progress = progress
        self._settings = settings
        self._cursor = start_after.stream_seq
        self._last_seq = start_after.seq
        self._stopped = False
        self._stop = asyncio.Event()
        self._error: ReplayError | None = None
        self._interrupted = asyncio.Event()
        self._interrupt_reason = ""
        self._subscription: Subscription | None = None
        self._batch_count = 0
        self._fresh_tail = False

    async def run(self, promote: PromoteSignal) -> None:
        # Helpers also check ``_stopped``: on Python 3.11 a cancellation that races a reply
        # inside nats-py's ``asyncio.wait_for`` can be swallowed (cpython#86296).
        self._progress.set_replay_cursor(self._cursor)
        logger.info(
            "Standby replay loop started start_from_seq=%d last_command_seq=%d",
            self._cursor,
            self._last_seq,
        )
        try:
            async with asyncio.TaskGroup() as tg:
                helpers = [
                    tg.create_task(self._follow()),
                    tg.create_task(self._tick_catch_up()),
                    tg.create_task(self._log_progress()),
                    tg.create_task(self._listen(promote)),
                ]
                try:
                    await self._stop.wait()
                finally:
                    self._stopped = True
                    for task in helpers:
                        task.cancel()
        finally:
            await self._close_subscription()
        if self._error is not None:
            raise self._error

    # -- one message ---------------------------------------------------------------------

    def _on_message(self, stream_seq: int, pending: int, data: bytes) -> None:
        if self._stopped:
            return
        progress = self._progress
        tail = stream_seq + pending  # observe_tail(), inlined on the hot path
        if progress.latest_stream_seq is None or tail > progress.latest_stream_seq:
            progress.latest_stream_seq = tail
        self._fresh_tail = True
        if stream_seq <= self._cursor:
            return  # a stale delivery from before a re-subscribe; already processed
        if stream_seq != self._cursor + 1:  # deny_delete: only retention limits make holes
            self._halt(
                HistoryLost(
                    f"stream seq {stream_seq} arrived where {self._cursor + 1} was due: the "
                    f"stream's retention limits dropped stream seqs {self._cursor + 1}.."
                    f"{stream_seq - 1} before this node replayed them",
                    stream_seq=self._cursor + 1,
                    first_stream_seq=stream_seq,
                )
            )
            return
        try:
            command = wire.decode(data, stream_seq=stream_seq)
        except WireError as exc:
            self._halt(ProtocolError(str(exc), seq=None, stream_seq=stream_seq))
            return
        seq = command.seq
        if self._max_body is not None and len(data) > self._max_body:
            self._halt(
                ProtocolError(
                    f"command seq {seq} (stream seq {stream_seq}): oversized envelope of "
                    f"{len(data)} bytes, over the {self._max_body} a writer may journal (the "
                    "server's max_payload less the header room): not written by a primary",
                    seq=seq,
                    stream_seq=stream_seq,
                )
            )
            return
        if seq != self._last_seq + 1:
            if seq <= self._last_seq:
                self._cursor = stream_seq
                progress.record_duplicate(stream_seq)
                logger.warning(
                    "Skipped redelivered command seq=%d stream_seq=%d last_replayed_seq=%d",
                    seq,
                    stream_seq,
                    self._last_seq,
                )
                return
            self._halt(
                SequenceGapError(expected=self._last_seq + 1, got=seq, stream_seq=stream_seq)
            )
            return
        try:
            self._handler.handle_command(command)
        except UnsupportedCommand as exc:
            self._halt(
                VersionGateError(
                    f"command seq {seq} (stream seq {stream_seq}): {exc}; upgrade this node's "
                    "engine before it replays on (a command is never skipped silently)",
                    seq=seq,
                    stream_seq=stream_seq,
                )
            )
            return
        except ReplayError as exc:  # the handler found a protocol violation (a stale epoch)
            exc.seq, exc.stream_seq = seq, stream_seq
            self._halt(exc)
            return
        except Exception as exc:
            error = HandlerError(
                f"failed to replay command seq={seq} (stream seq {stream_seq}, "
                f"{command.command_type} v{command.command_version}): {exc!r}",
                seq=seq,
                stream_seq=stream_seq,
            )
            error.__cause__ = exc
            self._halt(error)
            return
        self._last_seq = seq
        self._cursor = stream_seq
        self._batch_count += 1
        if command.command_type == wire.EPOCH_MARKER:
            progress.epoch_stream_seq = stream_seq
        progress.record_replayed(seq, stream_seq, command.timestamp_ns)

    def _halt(self, error: ReplayError) -> None:
        self._stopped = True
        self._error = error
        self._progress.halt(error)
        logger.error(  # the error as text: a record must not pin the run (see Node)
            "Standby replay halted seq=%s stream_seq=%s: %s",
            error.seq,
            error.stream_seq,
            str(error),
        )
        self._stop.set()

    # -- the feed ------------------------------------------------------------------------

    def _on_interrupt(self, reason: str) -> None:
        self._interrupt_reason = reason
        self._interrupted.set()

    async def _follow(self) -> None:
        """Keep one trusted subscription open, re-subscribing from cursor + 1 after each end."""
        await self._subscribe()
        while not self._stopped:
            await self._interrupted.wait()
            self._interrupted.clear()
            await self._close_subscription()
            logger.warning(
                "NATS stream ended (%s), reconnecting in %ss",
                self._interrupt_reason,
                self._settings.resubscribe_delay,
            )
            await asyncio.sleep(self._settings.resubscribe_delay)
            await self._subscribe()
            self._progress.resubscribes += 1
            logger.info("NATS stream reconnected resume_from_stream_seq=%d", self._cursor + 1)

    async def _subscribe(self) -> None:
        while not self._stopped:
            try:
                self._subscription = await self._feed.subscribe(
                    self._cursor + 1, self._on_message, self._on_interrupt
                )
                return
            except JetstandbyError as exc:
                logger.error(
                    "Failed to reconnect NATS stream, retrying in %ss: %s",
                    self._settings.resubscribe_failure_delay,
                    exc,
                )
                await asyncio.sleep(self._settings.resubscribe_failure_delay)

    async def _close_subscription(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            await subscription.aclose()

    # -- the clocks ----------------------------------------------------------------------

    async def _tick_catch_up(self) -> None:
        """Every 250 ms, missed ticks skipped, as the seed's ``MissedTickBehavior::Skip``."""
        loop = asyncio.get_running_loop()
        interval = self._settings.catch_up_interval
        deadline = loop.time()
        while not self._stopped:
            await self._refresh_catch_up_state()
            deadline += interval
            now = loop.time()
            if deadline < now:
                deadline = now + interval - (now - deadline) % interval
            await asyncio.sleep(deadline - now)

    async def _latest_stream_seq(self) -> int | None:
        """The tail: from the deliveries since the last tick if any (no round trip, and no
        request queued behind a busy replay), else by asking the server (an idle stream)."""
        if self._fresh_tail and self._progress.latest_stream_seq is not None:
            self._fresh_tail = False
            return self._progress.latest_stream_seq
        try:
            latest = await self._feed.last_stream_seq()
        except JetstandbyError as exc:
            logger.warning(
                "Cannot determine standby catch-up status while stream state is unavailable: %s",
                exc,
            )
            return None
        return max(latest, self._progress.latest_stream_seq or 0)

    async def _refresh_catch_up_state(self) -> None:
        latest = await self._latest_stream_seq()
        if latest is None or self._stopped:
            return
        progress = self._progress
        if not progress.update_catch_up_state(latest, self._cursor):
            return
        if progress.caught_up:
            logger.info(
                "Standby caught up with primary after replaying through stream tail "
                "commands_replayed=%d replay_cursor_seq=%d latest_stream_seq=%d",
                progress.commands_replayed,
                self._cursor,
                latest,
            )
        else:
            logger.info(
                "Standby replay fell behind stream tail commands_replayed=%d "
                "replay_cursor_seq=%d latest_stream_seq=%d stream_lag=%d",
                progress.commands_replayed,
                self._cursor,
                latest,
                progress.stream_lag or 0,
            )

    async def _log_progress(self) -> None:
        while not self._stopped:
            await asyncio.sleep(self._settings.progress_log_interval)
            if self._stopped:
                return
            logger.info(
                "Standby replay progress commands_replayed=%d batch_since_last_log=%d "
                "caught_up=%s stream_lag=%s",
                self._progress.commands_replayed,
                self._batch_count,
                self._progress.caught_up,
                self._progress.stream_lag,
            )
            self._batch_count = 0

    async def _listen(self, promote: PromoteSignal) -> None:
        if is_promote_signal(await promote.wait()):
            logger.info(
                "Standby replay loop shutting down (promote signal received) "
                "commands_replayed=%d last_replayed_seq=%s",
                self._progress.commands_replayed,
                self._progress.last_replayed_seq,
            )
            self._stopped = True
            self._stop.set()
        # A closed channel: stop listening and replay on, as the seed does.
