"""One fenced append, outside any pipeline: how a promoting standby writes its epoch marker.

The marker is fenced on the last message the standby applied. If JetStream refuses it, the
stream's tail tells whether it was ours after all (an earlier try that landed) or another
writer's (the caller replays what it missed and tries again, or gives up).
"""

from __future__ import annotations

import asyncio
import logging

import nats.errors

from jetstandby import wire
from jetstandby.config import JournalSettings
from jetstandby.errors import FencedError, JournalError, JournalUnavailable
from jetstandby.journal.base import Ack, Position
from jetstandby.journal.stream import (
    ERR_WRONG_LAST_MSG_ID,
    ERR_WRONG_LAST_SEQUENCE,
    PUB_ACK,
    NatsClient,
    last_message,
)

logger = logging.getLogger(__name__)


def _headers(msg_id: str, after: Position) -> dict[str, str]:
    # Fenced on the exact stream seq of the last message applied. For this one,
    # unpipelined append that is as strong as naming its id, and it still works when the
    # server has forgotten the last id (nats-server#8564: after a restart, an id older than
    # the duplicate window is lost), where an id fence would refuse every marker.
    return {wire.HDR_MSG_ID: msg_id, wire.HDR_EXPECTED_LAST_SEQ: str(after.stream_seq)}


async def append_fenced(
    nc: NatsClient,
    settings: JournalSettings,
    envelope: wire.Envelope,
    *,
    msg_id: str,
    after: Position,
) -> Ack:
    """Append ``envelope`` only if the stream still ends at ``after.stream_seq``.

    Returns its :class:`Ack`. Raises :class:`FencedError` if another writer's message is
    there instead, :class:`JournalUnavailable` if JetStream did not answer within
    ``unavailable_after``, :class:`JournalError` for any other refusal.
    """
    body = wire.encode(envelope)
    headers = _headers(msg_id, after)
    try:
        async with asyncio.timeout(settings.unavailable_after):
            while True:
                try:
                    reply = await nc.request(
                        settings.subject, body, headers=headers, timeout=settings.ack_timeout
                    )
                except (nats.errors.TimeoutError, nats.errors.NoRespondersError, OSError) as exc:
                    logger.warning("no answer for %s yet (%s); checking the tail", msg_id, exc)
                    landed = await _landed(nc, settings, msg_id, envelope.seq)
                    if landed is not None:
                        return landed
                    await asyncio.sleep(settings.ack_timeout / 4)
                    continue
                return await _outcome(nc, settings, envelope, msg_id, reply.data)
    except TimeoutError:
        raise JournalUnavailable(
            f"no acknowledgement for {msg_id} within {settings.unavailable_after}s"
        ) from None


async def _outcome(
    nc: NatsClient, settings: JournalSettings, envelope: wire.Envelope, msg_id: str, data: bytes
) -> Ack:
    ack = PUB_ACK.decode(data)
    if ack.error is None:
        return Ack(envelope.seq, ack.seq, ack.duplicate)
    if ack.error.err_code in (ERR_WRONG_LAST_MSG_ID, ERR_WRONG_LAST_SEQUENCE):
        landed = await _landed(nc, settings, msg_id, envelope.seq)
        if landed is not None:
            return landed
        raise FencedError(f"{msg_id} refused: {ack.error.description}", seq=envelope.seq - 1)
    raise JournalError(f"JetStream refused {msg_id}: {ack.error.description}")


async def _landed(nc: NatsClient, settings: JournalSettings, msg_id: str, seq: int) -> Ack | None:
    """Our own message at the tail (an earlier try that landed), as an Ack; else None."""
    try:
        tail = await last_message(nc, settings)
    except JournalUnavailable:
        return None
    if tail is not None and tail.msg_id == msg_id:
        return Ack(seq, tail.stream_seq, True)
    return None
