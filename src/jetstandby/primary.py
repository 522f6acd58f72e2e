"""The serving primary: sequence → stamp → apply → journal → reply once JetStream has it.

Submissions are handled one at a time, in arrival order, by the subscription's task; replies
go out when their journal acknowledgement resolves. A request id seen before gets its
original outcome (after that command is stored), never a second apply.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from collections.abc import Callable

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from jetstandby import submission, wire
from jetstandby.aio import cancel_and_wait
from jetstandby.config import DEFAULT_MAX_BACKLOG
from jetstandby.errors import (
    ConfigError,
    EngineFailure,
    FencedError,
    JetstandbyError,
    JournalError,
    JournalUnavailable,
    UnsupportedCommand,
    WireError,
)
from jetstandby.journal import Ack, CommandJournal, JournalState, Position
from jetstandby.journal.stream import NatsClient
from jetstandby.state import Applied, ReplicatedState
from jetstandby.submission import Code, SubmitReply

logger = logging.getLogger(__name__)


def _retrieve(future: asyncio.Future[Ack]) -> None:
    # A checkpoint's outcome needs no answer; the journal reports a terminal failure itself.
    if not future.cancelled():
        future.exception()


class PrimaryService:
    """Serves submissions for one journal until its journal is fenced or it is closed.

    ``on_lost(error)`` is called (once) when the journal can no longer be written: fenced by
    another writer, or failed. In-flight submissions then get retriable errors.

    ``max_backlog`` is admission control: a submission taken while more than this many
    others wait behind it is refused ``overloaded`` (retriable) before anything is applied.
    Refusing costs a fraction of applying, so under overload the queue stays short. Without
    a bound, commands waited longer than their clients' timeouts and were applied for
    nobody; and a retry, queued behind more than the exactly-once window (100,000 request
    ids), was applied a second time once its first try had left the window (22,024 double
    applies in one overload run: see the README's Performance section).
    """

    def __init__(
        self,
        nc: NatsClient,
        subject: str,
        state: ReplicatedState,
        journal: CommandJournal,
        on_lost: Callable[[JetstandbyError], None],
        *,
        checkpoint_every: int = 0,
        max_backlog: int = DEFAULT_MAX_BACKLOG,
    ) -> None:
        self._nc = nc
        self._max_backlog = max_backlog
        self._checkpoint_every = checkpoint_every
        self._subject = subject
        self._state = state
        self._journal = journal
        self._on_lost = on_lost
        self._lost: JetstandbyError | None = None
        self._replies: collections.deque[tuple[str, bytes]] = collections.deque()
        self._reply_wanted = asyncio.Event()
        self._sub: Subscription | None = None
        self._replier: asyncio.Task[None] | None = None
        self.acknowledged = 0
        self.rejected = 0
        self.overloaded = 0
        self.deduplicated = 0

    @property
    def stored_stream_seq(self) -> int:
        return self._journal.stored.stream_seq

    async def start(self) -> None:
        self._replier = asyncio.get_running_loop().create_task(self._send_replies())
        self._sub = await self._nc.subscribe(
            self._subject, queue=submission.QUEUE_GROUP, cb=self._on_submit
        )
        logger.info("primary serving %s (epoch %d)", self._subject, self._journal.epoch)

    async def aclose(self) -> None:
        """Stop taking submissions; answer what is in flight. Idempotent."""
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(nats.errors.Error, OSError):
                await sub.unsubscribe()
        await self._journal.aclose()  # fails what is still in flight: those get errors
        await asyncio.sleep(0)  # let their done-callbacks queue the replies
        if self._replier is not None:
            self._replies.append(("", b""))  # sentinel: flush, then stop
            self._reply_wanted.set()
            try:
                await asyncio.wait([self._replier])
            finally:  # done, unless this close was cancelled: then stop it
                await cancel_and_wait(self._replier)
            self._replier = None

    # -- one submission -------------------------------------------------------------------

    async def _on_submit(self, msg: Msg) -> None:
        if not msg.reply:
            return  # nobody to answer: never apply what cannot be acknowledged
        try:
            sub = submission.decode_submission(msg.data)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            self._reject(msg.reply, Code.BAD_REQUEST, f"malformed submission: {exc}")
            return
        if self._lost is not None or self._journal.state is not JournalState.OPEN:
            self._reject(msg.reply, Code.FENCED, f"this primary no longer serves: {self._lost}")
            return
        if sub.request_id and (applied := self._state.lookup(sub.request_id)) is not None:
            self._answer_again(msg.reply, applied)
            return
        problem = self._refusal(sub) or self._overload()
        if problem is not None:
            self._reject(msg.reply, *problem)
            return
        try:
            await self._journal.wait_for_room()
        except JournalUnavailable as exc:
            self._reject(msg.reply, Code.UNAVAILABLE, str(exc))
            return
        except JournalError as exc:
            self._lose(exc)
            self._reject(msg.reply, Code.FENCED, str(exc))
            return
        await self._apply_and_journal(msg.reply, sub)

    def _refusal(self, sub: submission.Submission) -> tuple[Code, str] | None:
        try:
            wire.check_command_type(sub.command_type)
            self._state.check_supported(sub.command_type, sub.command_version)
        except (ConfigError, UnsupportedCommand) as exc:
            return Code.UNSUPPORTED, str(exc)
        return None

    def _overload(self) -> tuple[Code, str] | None:
        waiting = self._sub.pending_msgs if self._sub is not None else 0
        if waiting <= self._max_backlog:
            return None
        self.overloaded += 1
        return Code.OVERLOADED, (
            f"the primary is overloaded: {waiting} submissions wait (max_backlog "
            f"{self._max_backlog}); nothing was applied: retry after a back-off"
        )

    async def _apply_and_journal(self, reply: str, sub: submission.Submission) -> None:
        journal = self._journal
        envelope = wire.Envelope(
            1,
            journal.next_seq,
            journal.epoch,
            time.time_ns(),
            sub.command_type,
            sub.command_version,
            sub.payload,
            sub.request_id,
        )
        try:
            body = journal.encode(envelope)  # before apply: too big is refused, not applied
        except WireError as exc:
            self._reject(reply, Code.BAD_REQUEST, str(exc))
            return
        try:
            result = self._state.apply(envelope)
        except Exception as exc:  # a broken engine: its state is unknown, so stop serving
            logger.critical("engine raised on command seq %d: %r", envelope.seq, exc)
            self._lose(EngineFailure(f"engine raised on command seq {envelope.seq}: {exc!r}"))
            self._reject(reply, Code.UNAVAILABLE, "the primary's engine failed; retry elsewhere")
            return
        try:
            future = await journal.append(envelope, body=body)
        except JournalError as exc:  # terminal: fenced or failed between the checks
            self._lose(exc)
            self._reject(reply, Code.FENCED, str(exc))
            return
        future.add_done_callback(
            functools.partial(self._on_journaled, reply, Applied(envelope.seq, result or b""))
        )
        if self._checkpoint_every and envelope.seq % self._checkpoint_every == 0:
            await self._journal_checkpoint()

    async def _journal_checkpoint(self) -> None:
        """Journal the state's digest after the last command, so that standbys check theirs.

        It waits for room in the window as a command does (at most ``unavailable_after``);
        if none comes it is left out, before anything was applied for it (a checkpoint is
        never needed for correctness, and the next interval brings another)."""
        journal = self._journal
        try:
            await journal.wait_for_room()
        except JournalUnavailable as exc:
            logger.warning("checkpoint after seq %d left out: %s", self._state.last_seq, exc)
            return
        except JournalError as exc:
            self._lose(exc)
            return
        try:
            envelope = self._state.checkpoint(epoch=journal.epoch, timestamp_ns=time.time_ns())
        except Exception as exc:  # digest() raised: the engine is broken, as if apply had
            logger.critical("engine digest raised after seq %d: %r", self._state.last_seq, exc)
            self._lose(EngineFailure(f"engine digest raised after seq {self._state.last_seq}"))
            return
        self._state.apply(envelope)
        try:
            future = await journal.append(envelope)
        except JournalError as exc:
            self._lose(exc)
            return
        future.add_done_callback(_retrieve)

    def _answer_again(self, reply: str, applied: Applied) -> None:
        """A request id applied before: its original outcome, once that command is stored
        (at once if it is; else when the journal confirms it, even after its own append
        reported an unknown outcome)."""
        self.deduplicated += 1
        stored = self._journal.when_stored(applied.seq)
        stored.add_done_callback(functools.partial(self._on_stored_again, reply, applied))

    def _on_journaled(self, reply: str, applied: Applied, future: asyncio.Future[Ack]) -> None:
        exc = None if future.cancelled() else future.exception()
        if future.cancelled() or isinstance(exc, JournalUnavailable):
            self._reject(
                reply,
                Code.UNAVAILABLE,
                f"command seq {applied.seq} not acknowledged in time; its outcome is unknown: "
                "retry with the same request id",
            )
        elif exc is not None:
            self._lose(exc if isinstance(exc, JetstandbyError) else JournalError(repr(exc)))
            code = Code.FENCED if isinstance(exc, FencedError) else Code.UNAVAILABLE
            self._reject(reply, code, f"command seq {applied.seq} was not journaled: {exc}")
        else:
            self.acknowledged += 1
            self._queue(reply, SubmitReply(ok=True, seq=applied.seq, result=applied.result))

    def _on_stored_again(
        self, reply: str, applied: Applied, future: asyncio.Future[Position]
    ) -> None:
        exc = None if future.cancelled() else future.exception()
        if exc is None and not future.cancelled():
            self._queue(
                reply,
                SubmitReply(ok=True, seq=applied.seq, result=applied.result, deduplicated=True),
            )
        else:
            self._reject(reply, Code.UNAVAILABLE, f"command seq {applied.seq} is not stored: {exc}")

    # -- replies and loss ---------------------------------------------------------------

    def _reject(self, reply: str, code: Code, error: str) -> None:
        self.rejected += 1
        self._queue(reply, SubmitReply(ok=False, code=code.value, error=error))

    def _queue(self, reply: str, answer: SubmitReply) -> None:
        self._replies.append((reply, submission.encode_reply(answer)))
        self._reply_wanted.set()

    async def _send_replies(self) -> None:
        while True:
            await self._reply_wanted.wait()
            self._reply_wanted.clear()
            while self._replies:
                subject, data = self._replies.popleft()
                if not subject:
                    return
                try:
                    await self._nc.publish(subject, data)
                except (nats.errors.Error, OSError) as exc:
                    logger.warning("cannot answer a submission: %s", exc)

    def _lose(self, error: JetstandbyError) -> None:
        if self._lost is None:
            self._lost = error
            self._on_lost(error)
