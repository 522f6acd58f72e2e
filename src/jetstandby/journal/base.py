"""What every journal back end provides: a fenced writer and an ordered feed.

A back end (JetStream, or the in-memory twin) implements :class:`Journal` for the primary and
:class:`Feed` for standbys. The replay loop and the node see only these protocols.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from jetstandby import wire
from jetstandby.wire import Envelope


@dataclass(frozen=True, slots=True)
class Position:
    """A place in the journal: the last command seq, its stream seq and its message id.

    ``Position()`` is the empty journal.
    """

    seq: int = 0
    stream_seq: int = 0
    msg_id: str | None = None


def chain_headers(epoch: int, seq: int, base: Position) -> dict[str, str]:
    """The fencing headers of command ``seq`` written in ``epoch`` after ``base``.

    Each command expects the id of the one before it; the first expects ``base``'s id, or,
    when ``base`` has none (the empty journal), its exact stream seq.
    """
    headers = {wire.HDR_MSG_ID: wire.msg_id(epoch, seq)}
    if seq - 1 > base.seq:
        headers[wire.HDR_EXPECTED_LAST_MSG_ID] = wire.msg_id(epoch, seq - 1)
    elif base.msg_id is not None:
        headers[wire.HDR_EXPECTED_LAST_MSG_ID] = base.msg_id
    else:
        headers[wire.HDR_EXPECTED_LAST_SEQ] = str(base.stream_seq)
    return headers


@dataclass(frozen=True, slots=True)
class Ack:
    """JetStream has command ``seq`` at ``stream_seq``. ``duplicate``: a resend was deduplicated."""

    seq: int
    stream_seq: int
    duplicate: bool = False


class JournalState(StrEnum):
    OPEN = "open"
    FENCED = "fenced"
    FAILED = "failed"
    CLOSED = "closed"


class Journal(Protocol):
    """The primary's side of the log: appends fenced against every other writer."""

    @property
    def epoch(self) -> int: ...

    @property
    def next_seq(self) -> int: ...

    @property
    def state(self) -> JournalState: ...

    async def append(self, envelope: Envelope) -> asyncio.Future[Ack]: ...

    async def append_and_wait(self, envelope: Envelope) -> Ack: ...

    async def aclose(self) -> None: ...


#: Called for every data message, in stream order: ``(stream_seq, pending, body)``.
#: ``pending`` is how many messages the stream holds after this one.
OnMessage = Callable[[int, int, bytes], None]
#: Called once when a subscription can no longer be trusted (stall, gap, server restart).
OnInterrupt = Callable[[str], None]


class Subscription(Protocol):
    async def aclose(self) -> None: ...


class Feed(Protocol):
    """The standby's side of the log: ordered delivery from a stream seq, and the tail."""

    async def subscribe(
        self, start_stream_seq: int, on_message: OnMessage, on_interrupt: OnInterrupt
    ) -> Subscription: ...

    async def last_stream_seq(self) -> int: ...
