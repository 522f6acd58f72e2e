"""The in-memory twin of the JetStream journal, for fast tests of pure logic.

It keeps the semantics the protocol relies on (message-id dedup before the fencing checks,
``Nats-Expected-Last-Msg-Id`` / ``-Sequence``, ordered delivery with a pending count) and
nothing else: no persistence, no network, no windows.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from jetstandby import wire
from jetstandby.aio import cancel_and_wait
from jetstandby.errors import FencedError, JournalClosed, JournalError, JournalUnavailable
from jetstandby.journal.base import (
    Ack,
    JournalState,
    OnInterrupt,
    OnMessage,
    Position,
    chain_headers,
)


@dataclass(frozen=True, slots=True)
class MemoryMessage:
    stream_seq: int
    msg_id: str | None
    data: bytes


class Rejected(Exception):
    """A publish failed its expectation header (JetStream's 10070 / 10071)."""


class MemoryLog:
    """An append-only stream with JetStream's dedup and expectation checks."""

    def __init__(self) -> None:
        self.messages: list[MemoryMessage] = []
        self._ids: dict[str, int] = {}
        self._changed = asyncio.Event()
        self.available = True

    @property
    def last_seq(self) -> int:
        return len(self.messages)

    def publish(self, data: bytes, headers: dict[str, str] | None = None) -> tuple[int, bool]:
        """Store ``data``; returns ``(stream_seq, duplicate)`` or raises :class:`Rejected`."""
        headers = headers or {}
        msg_id = headers.get(wire.HDR_MSG_ID)
        if msg_id is not None and msg_id in self._ids:
            return self._ids[msg_id], True
        last = self.messages[-1] if self.messages else None
        expected_seq = headers.get(wire.HDR_EXPECTED_LAST_SEQ)
        if expected_seq is not None and int(expected_seq) != self.last_seq:
            raise Rejected(f"wrong last sequence: {self.last_seq}")
        expected_id = headers.get(wire.HDR_EXPECTED_LAST_MSG_ID)
        if expected_id is not None and (last is None or last.msg_id != expected_id):
            raise Rejected(f"wrong last msg ID: {last.msg_id if last else None}")
        stream_seq = self.last_seq + 1
        self.messages.append(MemoryMessage(stream_seq, msg_id, data))
        if msg_id is not None:
            self._ids[msg_id] = stream_seq
        self._changed.set()
        self._changed = asyncio.Event()
        return stream_seq, False

    async def changed(self) -> None:
        await self._changed.wait()


class MemoryJournal:
    """A fenced writer on a :class:`MemoryLog`; acknowledgements are immediate."""

    def __init__(self, log: MemoryLog, *, epoch: int, after: Position = Position()) -> None:  # noqa: B008
        self._log = log
        self._epoch = epoch
        self._base = after
        self._next_seq = after.seq + 1
        self._error: JournalError | None = None
        self._state = JournalState.OPEN

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def state(self) -> JournalState:
        return self._state

    async def append(self, envelope: wire.Envelope) -> asyncio.Future[Ack]:
        if self._error is not None:
            raise self._error
        if envelope.seq != self._next_seq or envelope.epoch != self._epoch:
            raise ValueError(
                f"append expects seq {self._next_seq} epoch {self._epoch}, "
                f"got seq {envelope.seq} epoch {envelope.epoch}"
            )
        if not self._log.available:
            raise JournalUnavailable("memory log marked unavailable")
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        try:
            stream_seq, duplicate = self._log.publish(
                wire.encode(envelope), chain_headers(self._epoch, envelope.seq, self._base)
            )
        except Rejected as exc:
            self._state = JournalState.FENCED
            self._error = FencedError(f"journal fenced: {exc}", seq=envelope.seq - 1)
            raise self._error from exc
        self._next_seq += 1
        future.set_result(Ack(envelope.seq, stream_seq, duplicate))
        return future

    async def append_and_wait(self, envelope: wire.Envelope) -> Ack:
        return await (await self.append(envelope))

    async def aclose(self) -> None:
        if self._error is None:
            self._state = JournalState.CLOSED
            self._error = JournalClosed("journal closed")


class MemoryFeed:
    """Ordered delivery from a :class:`MemoryLog`, with knobs to break it in tests."""

    def __init__(self, log: MemoryLog) -> None:
        self._log = log
        self.subscriptions: list[MemorySubscription] = []
        self.paused = asyncio.Event()
        self.paused.set()

    async def last_stream_seq(self) -> int:
        if not self._log.available:
            raise JournalUnavailable("memory log marked unavailable")
        return self._log.last_seq

    async def subscribe(
        self, start_stream_seq: int, on_message: OnMessage, on_interrupt: OnInterrupt
    ) -> MemorySubscription:
        if not self._log.available:
            raise JournalUnavailable("memory log marked unavailable")
        sub = MemorySubscription(self, start_stream_seq, on_message, on_interrupt)
        self.subscriptions.append(sub)
        return sub

    def pause(self) -> None:
        """Hold deliveries (the standby falls behind) until :meth:`resume`."""
        self.paused.clear()

    def resume(self) -> None:
        self.paused.set()

    def interrupt(self, reason: str = "test interrupt") -> None:
        """End the current subscription as a stalled consumer would."""
        self.subscriptions[-1].interrupt(reason)


class MemorySubscription:
    def __init__(
        self, feed: MemoryFeed, start: int, on_message: OnMessage, on_interrupt: OnInterrupt
    ) -> None:
        self._feed = feed
        self._next = max(1, start)
        self._on_message = on_message
        self._on_interrupt = on_interrupt
        self.closed = False
        self._task = asyncio.get_running_loop().create_task(self._deliver())

    async def _deliver(self) -> None:
        log = self._feed._log
        while not self.closed:
            await self._feed.paused.wait()
            if self._next > log.last_seq:
                await log.changed()
                continue
            message = log.messages[self._next - 1]
            self._next += 1
            self._on_message(message.stream_seq, log.last_seq - message.stream_seq, message.data)
            await asyncio.sleep(0)

    def interrupt(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self._on_interrupt(reason)

    async def aclose(self) -> None:
        self.closed = True
        await cancel_and_wait(self._task)
