"""The primary's journal on JetStream: pipelined, fenced appends.

Fencing rests on one chain: command ``s`` is published with ``Nats-Msg-Id: <epoch>-<s>`` and
``Nats-Expected-Last-Msg-Id: <epoch>-<s-1>``. Once any other writer has appended, the stream's
last message id is not ours, so every later publish of ours fails its expectation; none can
line up again (``Nats-Expected-Last-Sequence`` alone can, see docs/wire.md). A rejection is
not yet proof of a foreign write (a publish of ours may have been lost on a reconnect), so
the journal then reads the stream's tail: if the last message is ours it resends from there,
fenced by ``Nats-Expected-Last-Sequence`` on that exact tail; otherwise it is fenced for good.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

from jetstandby import wire
from jetstandby.aio import cancel_and_wait
from jetstandby.config import JournalSettings
from jetstandby.errors import (
    FencedError,
    JournalClosed,
    JournalError,
    JournalUnavailable,
    WireError,
)
from jetstandby.journal.base import Ack, JournalState, Position, chain_headers
from jetstandby.journal.stream import (
    ERR_WRONG_LAST_MSG_ID,
    ERR_WRONG_LAST_SEQUENCE,
    PUB_ACK,
    ApiError,
    NatsClient,
    StoredMessage,
    last_message,
    message_at,
)

logger = logging.getLogger(__name__)

_CHAIN_BROKEN: Final = frozenset({ERR_WRONG_LAST_MSG_ID, ERR_WRONG_LAST_SEQUENCE})
_TRANSIENT_CODES: Final = frozenset({408, 503})
#: "duplicate message id is in process": a resend met its original still being proposed in
#: a replicated stream. Its outcome is still coming; never a reason to give up.
ERR_DUPLICATE_IN_PROCESS: Final = 10158


class _Pending:
    __slots__ = ("body", "created", "future", "seq")

    def __init__(self, seq: int, body: bytes, future: asyncio.Future[Ack], created: float):
        self.seq = seq
        self.body = body
        self.future = future
        self.created = created


class CommandJournal:
    """Appends commands to a JetStream stream through a bounded window of in-flight publishes.

    Build it with :meth:`open`. ``after`` is the journal's position when this writer takes over
    (the empty journal, or the epoch marker it wrote); the first append is fenced on it.

    ``append`` returns once the command is on the wire, with a future that resolves to its
    :class:`Ack` when JetStream has it, or fails with :class:`FencedError` (another writer
    appended; terminal), :class:`JournalUnavailable` (not acknowledged within
    ``unavailable_after``; the outcome is unknown and the journal keeps resending, deduplicated)
    or :class:`JournalError` (JetStream refused it; terminal: the chain cannot skip it).
    """

    def __init__(
        self,
        nc: NatsClient,
        settings: JournalSettings,
        *,
        epoch: int,
        after: Position,
        on_terminal: Callable[[JournalError], None] | None = None,
    ) -> None:
        self._nc = nc
        self._settings = settings
        self._epoch = epoch
        self._base = after
        self._stored = after
        self._next_seq = after.seq + 1
        self._sent_upto = after.seq
        self._pending: dict[int, _Pending] = {}
        self._slots_free = settings.window
        self._slot_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._state = JournalState.OPEN
        self._error: JournalError | None = None
        self._gen = 0
        self._reanchor: tuple[int, int] | None = None
        self._resyncing = False
        self._last_progress = time.monotonic()
        self._flush_wanted = asyncio.Event()
        self._stored_waiters: list[tuple[int, asyncio.Future[Position]]] = []
        self._on_terminal = on_terminal
        self._inbox = nc.new_inbox()
        self._sub: NatsSubscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(
        cls,
        nc: NatsClient,
        settings: JournalSettings,
        *,
        epoch: int,
        after: Position,
        on_terminal: Callable[[JournalError], None] | None = None,
    ) -> CommandJournal:
        """Subscribe for acknowledgements and start the resend timer.

        ``on_terminal(error)`` is called once when the journal is fenced or fails, whether or
        not any append is still waiting to hear it.
        """
        journal = cls(nc, settings, epoch=epoch, after=after, on_terminal=on_terminal)
        journal._sub = await nc.subscribe(
            journal._inbox + ".*.*", cb=journal._on_ack, pending_msgs_limit=4 * settings.window
        )
        journal._spawn(journal._watch())
        journal._spawn(journal._flush())
        return journal

    async def __aenter__(self) -> CommandJournal:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def state(self) -> JournalState:
        return self._state

    @property
    def stored(self) -> Position:
        """The newest position JetStream has acknowledged."""
        return self._stored

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def encode(self, envelope: wire.Envelope) -> bytes:
        """The message body of ``envelope``; :class:`WireError` if, with its headers, it would
        exceed the server's ``max_payload``. Pass the body on to :meth:`append`."""
        body = wire.encode(envelope)
        if len(body) > wire.max_body(self._nc.max_payload):
            raise WireError(
                f"command seq {envelope.seq} encodes to {len(body)} bytes, which with "
                f"{wire.HEADER_ROOM} bytes of headers is over the server's max_payload of "
                f"{self._nc.max_payload}"
            )
        return body

    async def append(
        self, envelope: wire.Envelope, *, body: bytes | None = None
    ) -> asyncio.Future[Ack]:
        """Publish ``envelope`` (which must carry :attr:`next_seq` and :attr:`epoch`).

        ``body``: its :meth:`encode`, if the caller has it already. Waits while the window is
        full, at most ``unavailable_after``. Raises at once, with nothing published, if the
        journal is fenced, failed or closed, or the body is too big.
        """
        self._raise_if_unusable()
        if body is None:
            body = self.encode(envelope)
        if self._slots_free > 0:
            self._slots_free -= 1
        else:
            await self._wait_for_slot()
        if envelope.seq != self._next_seq or envelope.epoch != self._epoch:
            self._release_slot()
            raise ValueError(
                f"append expects seq {self._next_seq} epoch {self._epoch}, "
                f"got seq {envelope.seq} epoch {envelope.epoch}"
            )
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        if not self._pending:
            self._last_progress = time.monotonic()  # stall time counts from the oldest send
        self._pending[envelope.seq] = _Pending(envelope.seq, body, future, time.monotonic())
        self._next_seq = envelope.seq + 1
        self._flush_wanted.set()
        return future

    def when_stored(self, seq: int) -> asyncio.Future[Position]:
        """A future that resolves once JetStream holds command ``seq`` (even if that append's
        own future already failed with :class:`JournalUnavailable`), or fails with the
        journal's error if it is fenced, failed or closed first."""
        future: asyncio.Future[Position] = asyncio.get_running_loop().create_future()
        if seq <= self._stored.seq:
            future.set_result(self._stored)
        elif self._error is not None:
            future.set_exception(self._error)
        else:
            self._stored_waiters.append((seq, future))
        return future

    async def wait_for_room(self) -> None:
        """Return once an :meth:`append` would not wait for the window (at most
        ``unavailable_after``, else :class:`JournalUnavailable`). A sole appender can check
        before it applies a command, so that a full window never leaves a command applied
        but unjournaled."""
        self._raise_if_unusable()
        if self._slots_free == 0:
            await self._wait_for_slot()
            self._release_slot()

    async def append_and_wait(self, envelope: wire.Envelope) -> Ack:
        """:meth:`append`, then wait for its acknowledgement."""
        return await (await self.append(envelope))

    async def aclose(self) -> None:
        """Stop resending and fail what is still in flight with :class:`JournalClosed`.

        Idempotent. Closing does not withdraw publishes already sent: they may still land.
        """
        if self._state is JournalState.OPEN:
            self._state = JournalState.CLOSED
            self._error = JournalClosed("journal closed")
        self._fail_pending(self._error or JournalClosed("journal closed"))
        await cancel_and_wait(*self._tasks)
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    # -- sending ------------------------------------------------------------------------

    def _raise_if_unusable(self) -> None:
        if self._error is not None:
            raise self._error

    async def _wait_for_slot(self) -> None:
        """Wait for a free place in the window, at most ``unavailable_after``."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        try:
            async with asyncio.timeout(self._settings.unavailable_after):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self._release_slot()  # handed a slot as we gave up: pass it on, never lose it
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._slot_waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise JournalUnavailable(
                    f"{len(self._pending)} appends in flight and none acknowledged within "
                    f"{self._settings.unavailable_after}s"
                ) from None
            raise
        if self._error is not None:
            self._release_slot()  # hand the slot on so the next waiter sees the error too
            raise self._error

    def _release_slot(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to the waiter
                return
        self._slots_free += 1

    def _headers(self, seq: int) -> dict[str, str]:
        if self._reanchor is not None and self._reanchor[0] == seq:
            # The first resend after a resync: fenced on the exact tail we just read, which
            # also works when the server has forgotten the last message id (nats-server#8564).
            return {
                wire.HDR_MSG_ID: wire.msg_id(self._epoch, seq),
                wire.HDR_EXPECTED_LAST_SEQ: str(self._reanchor[1]),
            }
        return chain_headers(self._epoch, seq, self._base)

    async def _flush(self) -> None:
        """Put appended commands on the wire once per loop iteration, as one burst."""
        while self._error is None:  # not only cancellation: 3.11 can swallow it (cpython#86296)
            await self._flush_wanted.wait()
            self._flush_wanted.clear()
            await self._send_through()

    async def _send_through(self) -> None:
        """Publish every pending command not yet sent, strictly in seq order.

        Only every ``ack_every``-th command and the last of a burst ask for a reply: by the
        chain, JetStream accepting command ``s`` proves every command before it is stored.
        ``_sent_upto`` moves before each publish, and nats-py queues the bytes before its
        first suspension, so concurrent callers still put commands on the wire in order.
        """
        ack_every = self._settings.ack_every
        while not self._resyncing and self._sent_upto + 1 < self._next_seq:
            seq = self._sent_upto = self._sent_upto + 1
            entry = self._pending.get(seq)
            if entry is None:
                continue
            wants_reply = seq % ack_every == 0 or seq + 1 == self._next_seq
            try:
                await self._nc.publish(
                    self._settings.subject,
                    entry.body,
                    reply=f"{self._inbox}.{self._gen}.{seq}" if wants_reply else "",
                    headers=self._headers(seq),
                )
            except (nats.errors.Error, OSError) as exc:
                # Outcome unknown; the watchdog resyncs and resends after ack_timeout.
                logger.warning("publish of command seq %d failed: %s", seq, exc)

    # -- acknowledgements ---------------------------------------------------------------

    async def _on_ack(self, msg: Msg) -> None:
        _, gen_text, seq_text = msg.subject.rsplit(".", 2)
        seq, gen = int(seq_text), int(gen_text)
        if msg.headers and msg.headers.get("Status") == "503":
            return  # no responders: JetStream is (re)electing or away; the watchdog resends
        try:
            ack = PUB_ACK.decode(msg.data)
        except (msgspec.DecodeError, UnicodeDecodeError):
            logger.warning("unreadable acknowledgement for command seq %d: %r", seq, msg.data)
            return
        if ack.error is not None:
            self._on_rejected(seq, gen, ack.error)
        elif ack.stream != self._settings.stream:
            self._fail(
                JournalError(
                    f"command seq {seq} was stored in stream {ack.stream!r}, "
                    f"not {self._settings.stream!r}: another stream captures its subject"
                )
            )
        else:
            self._confirm(seq, ack.seq, ack.duplicate)

    def _on_rejected(self, seq: int, gen: int, error: ApiError) -> None:
        if error.code in _TRANSIENT_CODES or error.err_code == ERR_DUPLICATE_IN_PROCESS:
            return  # the watchdog re-reads the tail after ack_timeout and resends if needed
        if error.err_code in _CHAIN_BROKEN:
            if gen == self._gen and not self._resyncing and seq in self._pending:
                logger.info(
                    "command seq %d rejected (%s); checking the tail", seq, error.description
                )
                self._start_resync()
            return
        self._fail(
            JournalError(
                f"JetStream refused command seq {seq}: {error.description} "
                f"(code {error.code}, err_code {error.err_code}); the journal cannot skip it"
            )
        )

    def _confirm(self, seq: int, stream_seq: int, duplicate: bool) -> None:
        """JetStream holds ``seq`` at ``stream_seq``; by the chain, it holds all before it too."""
        if seq > self._stored.seq:
            self._stored = Position(seq, stream_seq, wire.msg_id(self._epoch, seq))
            if self._stored_waiters:
                self._wake_stored_waiters()
        self._last_progress = time.monotonic()
        pending = self._pending
        while pending:
            first = next(iter(pending))
            if first > seq:
                break
            entry = pending.pop(first)
            self._release_slot()
            if not entry.future.done():
                entry.future.set_result(
                    Ack(first, stream_seq - (seq - first), duplicate and first == seq)
                )

    # -- recovery -----------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self._fail(JournalError(f"journal background task failed: {exc!r}"))

    def _start_resync(self) -> None:
        self._resyncing = True
        self._gen += 1
        self._spawn(self._resync())

    async def _resync(self) -> None:
        """Read the stream's tail; resend from it if it is ours, else fence."""
        stored_before = self._stored.seq
        tail = await self._read_until_answered(lambda: last_message(self._nc, self._settings))
        stored_seq, tail_stream_seq = self._classify_tail(tail, stored_before)
        if self._state is JournalState.FENCED:
            await self._settle_fenced()
        if self._error is not None:
            return
        if stored_seq > self._stored.seq:
            self._confirm(stored_seq, tail_stream_seq, False)
        elif self._stored.seq > stored_seq:  # acks that overtook the tail read are newer
            stored_seq, tail_stream_seq = self._stored.seq, self._stored.stream_seq
        self._last_progress = time.monotonic()
        self._sent_upto = stored_seq
        self._reanchor = (stored_seq + 1, tail_stream_seq)
        self._resyncing = False
        if self._sent_upto + 1 < self._next_seq:  # an idle probe has nothing to resend
            logger.info(
                "journal resending from command seq %d, fenced on stream seq %d",
                stored_seq + 1,
                tail_stream_seq,
            )
        await self._send_through()

    async def _read_until_answered(
        self, read: Callable[[], Awaitable[StoredMessage | None]]
    ) -> StoredMessage | None:
        """A stream read, retried while JetStream is away (it may be restarting)."""
        while True:
            try:
                return await read()
            except JournalUnavailable as exc:
                if self._state is JournalState.CLOSED:
                    raise
                logger.warning("cannot read the journal yet: %s", exc)
                self._expire_overdue()
                await asyncio.sleep(self._settings.ack_timeout)

    async def _settle_fenced(self) -> None:
        """Fenced: acknowledge our commands that landed before the foreign write.

        They are stored (and will be replayed), so their appends succeed; only those after it
        fail. Walks forward from the last acknowledged stream seq, one read per command.
        """
        while self._pending:
            seq, stream_seq = self._stored.seq + 1, self._stored.stream_seq + 1
            message = await self._read_until_answered(
                functools.partial(message_at, self._nc, self._settings, stream_seq)
            )
            ours = message is not None and wire.parse_msg_id(message.msg_id or "") == (
                self._epoch,
                seq,
            )
            if not ours or seq not in self._pending:
                break
            self._confirm(seq, stream_seq, False)
        assert isinstance(self._error, FencedError)
        self._error.seq = self._stored.seq
        self._fail_pending(self._error)
        self._tell_terminal(self._error)

    def _classify_tail(self, tail: StoredMessage | None, stored_before: int) -> tuple[int, int]:
        """Which of our commands the tail proves stored, or fence if the tail is foreign.

        ``stored_before`` is what was acknowledged before the tail was read: a tail below it
        means the stream lost acknowledged commands.
        """
        tail_stream_seq = tail.stream_seq if tail else 0
        if tail_stream_seq == self._base.stream_seq:
            stored = self._base.seq
        else:
            parsed = wire.parse_msg_id(tail.msg_id or "") if tail else None
            if (
                parsed is None
                or parsed[0] != self._epoch
                or not (self._base.seq < parsed[1] < self._next_seq)
            ):
                self._fence(tail)
                return 0, 0
            stored = parsed[1]
        if stored < stored_before:
            self._fail(
                JournalError(
                    f"stream {self._settings.stream!r} lost acknowledged commands: its tail is "
                    f"command seq {stored}, but seq {stored_before} was acknowledged"
                )
            )
        return stored, tail_stream_seq

    def _fence(self, tail: StoredMessage | None) -> None:
        who = tail.msg_id if tail else None
        at = tail.stream_seq if tail else 0
        error = FencedError(
            f"journal {self._settings.journal!r} is fenced: another writer appended "
            f"(the stream now ends with message id {who!r} at stream seq {at}); "
            f"epoch {self._epoch} may never append again",
            seq=self._stored.seq,
        )
        logger.error("%s", error)
        self._state = JournalState.FENCED
        self._error = error  # refuse new appends now; pending ones are settled by the caller

    def _fail(self, error: JournalError) -> None:
        if self._error is None:
            logger.error("%s", error)
            self._state = JournalState.FAILED
            self._set_error(error)
            self._tell_terminal(error)

    def _tell_terminal(self, error: JournalError) -> None:
        callback, self._on_terminal = self._on_terminal, None
        if callback is not None:
            callback(error)

    def _set_error(self, error: JournalError) -> None:
        if self._error is None:
            self._error = error
        self._fail_pending(self._error)

    def _wake_stored_waiters(self, error: JournalError | None = None) -> None:
        waiting, self._stored_waiters = self._stored_waiters, []
        for seq, future in waiting:
            if future.done():
                continue
            if seq <= self._stored.seq:
                future.set_result(self._stored)
            elif error is not None:
                future.set_exception(error)
            else:
                self._stored_waiters.append((seq, future))

    def _fail_pending(self, error: JournalError) -> None:
        self._wake_stored_waiters(error)
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            self._release_slot()
            if not entry.future.done():
                entry.future.set_exception(error)

    def _expire_overdue(self) -> None:
        """Fail (but keep resending) appends older than ``unavailable_after``."""
        deadline = time.monotonic() - self._settings.unavailable_after
        for entry in self._pending.values():
            if entry.created > deadline:
                break
            if not entry.future.done():
                entry.future.set_exception(
                    JournalUnavailable(
                        f"command seq {entry.seq} not acknowledged within "
                        f"{self._settings.unavailable_after}s; its outcome is unknown and the "
                        "journal keeps resending it (deduplicated by message id)"
                    )
                )

    async def _watch(self) -> None:
        """Resync when the oldest in-flight publish has gone unanswered for ``ack_timeout``;
        when idle, read the tail every ``fence_probe_interval`` so that a newer epoch's
        marker fences this journal even if it never appends again (a zombie primary).

        Idle means nothing acknowledged for that long, not merely nothing in flight at this
        tick: a fenced append proves the tail as well as a probe does, and a probe holds
        back new sends until its read returns, a stall a busy primary should not pay."""
        interval = min(self._settings.ack_timeout / 4, 0.25)
        last_probe = time.monotonic()
        while self._error is None:
            await asyncio.sleep(interval)
            self._expire_overdue()
            now = time.monotonic()
            if self._resyncing:
                continue
            if self._pending and now - self._last_progress > self._settings.ack_timeout:
                logger.warning(
                    "no acknowledgement for %.1fs with %d in flight; checking the tail",
                    now - self._last_progress,
                    len(self._pending),
                )
                self._start_resync()
            elif (
                not self._pending
                and now - max(last_probe, self._last_progress)
                >= self._settings.fence_probe_interval
            ):
                last_probe = now
                self._start_resync()
