"""The standby's feed on JetStream: an ordered push consumer we run ourselves.

Why not nats-py's ``ordered_consumer=True``: it can drop messages silently when its pending
limit overflows (as nats-io/nats.go#2107), and it hides the delivery metadata a standby needs.
This feed follows ADR-17 itself: an ephemeral, in-memory, ack-none push consumer with flow
control and idle heartbeats, started at an exact stream seq. Each subscription checks the
consumer seq of every message; a gap, a missed heartbeat or an unexpected status interrupts
it, and the replay loop re-subscribes from its own cursor + 1. The stream seq and the pending
count come from the reply subject, so lag needs no round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from jetstandby.aio import cancel_and_wait
from jetstandby.config import JournalSettings, ReplaySettings
from jetstandby.errors import JournalUnavailable
from jetstandby.journal.base import OnInterrupt, OnMessage
from jetstandby.journal.stream import NatsClient, ensure_stream, stream_info

logger = logging.getLogger(__name__)

_ACK_PREFIX: Final = "$JS.ACK."
_STATUS: Final = "Status"
_DESCRIPTION: Final = "Description"
_LAST_CONSUMER: Final = "Nats-Last-Consumer"
_CONSUMER_STALLED: Final = "Nats-Consumer-Stalled"
#: nats-py hands a backlog to the callback without ever suspending, which would starve the
#: admin API, heartbeats and PINGs during a catch-up. Every ``CHECK_EVERY`` deliveries the
#: clock is read, and the feed yields once ``YIELD_AFTER`` seconds have passed since it last did.
CHECK_EVERY: Final = 16
YIELD_AFTER: Final = 0.005
#: A consumer the standby has lost (it crashed, or the link went) is removed after this.
_INACTIVE_THRESHOLD: Final = 30.0


class JetStreamFeed:
    """Ordered delivery of a journal stream for one standby. See the module docstring."""

    def __init__(
        self, nc: NatsClient, settings: JournalSettings, replay: ReplaySettings | None = None
    ) -> None:
        self._nc = nc
        self._settings = settings
        self._replay = replay or ReplaySettings()

    @classmethod
    async def open(
        cls, nc: NatsClient, settings: JournalSettings, replay: ReplaySettings | None = None
    ) -> JetStreamFeed:
        """Make sure the stream exists (creating it as a primary would) and return the feed."""
        await ensure_stream(nc, settings)
        return cls(nc, settings, replay)

    async def last_stream_seq(self) -> int:
        """The stream's tail, by one stream-info round trip."""
        info = await stream_info(self._nc, self._settings.stream, self._replay.request_timeout)
        return int(info.state.last_seq)

    async def subscribe(
        self, start_stream_seq: int, on_message: OnMessage, on_interrupt: OnInterrupt
    ) -> FeedSubscription:
        """Deliver from ``start_stream_seq`` on. Raises :class:`JournalUnavailable`."""
        sub = FeedSubscription(self._nc, on_message, on_interrupt, self._replay.idle_heartbeat)
        await sub.start(self._consumer_config(start_stream_seq), self._settings, self._replay)
        return sub

    def _consumer_config(self, start_stream_seq: int) -> ConsumerConfig:
        return ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=max(1, start_stream_seq),
            ack_policy=AckPolicy.NONE,
            filter_subject=self._settings.subject,
            flow_control=True,
            idle_heartbeat=self._replay.idle_heartbeat,
            mem_storage=True,
            num_replicas=1,
            inactive_threshold=_INACTIVE_THRESHOLD,
        )


class FeedSubscription:
    """One consumer and its delivery subscription. Trust ends at the first interruption."""

    def __init__(
        self,
        nc: NatsClient,
        on_message: OnMessage,
        on_interrupt: OnInterrupt,
        idle_heartbeat: float,
    ) -> None:
        self._nc = nc
        self._on_message = on_message
        self._on_interrupt = on_interrupt
        self._heartbeat = idle_heartbeat
        self._dseq = 0
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._heard = True
        self._since_check = 0
        self._last_yield = self._loop.time()
        self._sub: NatsSubscription | None = None
        self._consumer: tuple[str, str] | None = None
        self._watchdog: asyncio.Task[None] | None = None

    async def start(
        self, config: ConsumerConfig, settings: JournalSettings, replay: ReplaySettings
    ) -> None:
        config.deliver_subject = self._nc.new_inbox()
        try:
            self._sub = await self._nc.subscribe(
                config.deliver_subject,
                cb=self._on_msg,
                pending_msgs_limit=replay.pending_msgs_limit,
                pending_bytes_limit=replay.pending_bytes_limit,
            )
            info = await self._nc.jsm(timeout=replay.request_timeout).add_consumer(
                settings.stream, config
            )
        except (nats.errors.Error, OSError) as exc:
            await self.aclose()
            raise JournalUnavailable(
                f"cannot create a consumer on {settings.stream!r} from stream seq "
                f"{config.opt_start_seq}: {exc!r}"
            ) from exc
        except BaseException:  # cancelled mid-start: never leave a live delivery behind
            self._closed = True
            if self._sub is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._sub.unsubscribe())
            raise
        self._consumer = (settings.stream, info.name)
        self._watchdog = self._loop.create_task(self._watch())

    async def aclose(self) -> None:
        """Stop delivery and delete the consumer (best effort; it expires anyway)."""
        self._closed = True
        await cancel_and_wait(self._watchdog)
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(nats.errors.Error, OSError):
                await sub.unsubscribe()
        if self._consumer is not None and self._nc.is_connected:
            (stream, name), self._consumer = self._consumer, None
            with contextlib.suppress(nats.errors.Error, OSError, asyncio.TimeoutError):
                await self._nc.jsm(timeout=0.5).delete_consumer(stream, name)

    def _interrupt(self, reason: str) -> None:
        if not self._closed:
            self._closed = True
            self._on_interrupt(reason)

    async def _on_msg(self, msg: Msg) -> None:
        if self._closed:
            return
        self._heard = True
        reply = msg.reply
        if reply.startswith(_ACK_PREFIX):
            tokens = reply.split(".")
            # v1: $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>
            # v2: $JS.ACK.<domain>.<hash>.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>
            #     .<pending>.<token>
            base = 5 if len(tokens) == 9 else 7
            dseq = int(tokens[base + 1])
            if dseq != self._dseq + 1:
                self._interrupt(f"delivery gap: consumer seq {dseq} after {self._dseq}")
                return
            self._dseq = dseq
            self._on_message(int(tokens[base]), int(tokens[base + 3]), msg.data)
            self._since_check += 1
            if self._since_check >= CHECK_EVERY:
                self._since_check = 0
                if self._loop.time() - self._last_yield >= YIELD_AFTER:
                    await asyncio.sleep(0)
                    self._last_yield = self._loop.time()
        else:
            await self._on_control(msg)

    async def _on_control(self, msg: Msg) -> None:
        headers = msg.headers or {}
        status = headers.get(_STATUS)
        if status != "100":
            self._interrupt(f"consumer status {status} {headers.get(_DESCRIPTION, '')!r}".strip())
            return
        if msg.reply:  # flow control: everything before it has been handled, answer now
            await self._respond(msg.reply)
            return
        last = headers.get(_LAST_CONSUMER)
        if last is not None and int(last) != self._dseq:
            self._interrupt(f"heartbeat says consumer seq {last}, we have {self._dseq}")
            return
        stalled = headers.get(_CONSUMER_STALLED)
        if stalled:
            await self._respond(stalled)

    async def _respond(self, subject: str) -> None:
        try:
            await self._nc.publish(subject, b"")
        except (nats.errors.Error, OSError) as exc:
            self._interrupt(f"cannot answer flow control: {exc}")

    async def _watch(self) -> None:
        """Two heartbeat periods without a word from the server: the consumer or link is gone.

        A flag per message, not a clock read, keeps this off the hot path.
        """
        silent_periods = 0
        while not self._closed:
            await asyncio.sleep(self._heartbeat)
            if self._heard:
                self._heard, silent_periods = False, 0
                continue
            silent_periods += 1
            if silent_periods >= 2:
                self._interrupt(f"no message or heartbeat for {2 * self._heartbeat:.1f}s")
