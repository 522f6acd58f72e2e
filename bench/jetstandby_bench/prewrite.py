"""A journal written ahead of a benchmark, fast: an epoch marker, then raw command publishes.

The marker goes through the fenced path a primary uses. The commands are published raw (no
fencing headers, which a standby does not read) for speed, each :data:`ACK_EVERY`-th and the
last as a request whose JetStream acknowledgement also covers the ones before it on this
connection; the stream's last seq is checked at the end. Every command carries a request id,
so a standby's exactly-once record fills as it would behind a real primary.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Final

from jetstandby.config import JournalSettings
from jetstandby.journal import Position
from jetstandby.journal.marker import append_fenced
from jetstandby.journal.stream import NatsClient, stream_info
from jetstandby.state import marker_envelope, marker_msg_id
from jetstandby.wire import Envelope, encode

ACK_EVERY: Final = 1_000
ACK_TIMEOUT: Final = 30.0
WRITER_NODE: Final = "bench"


async def write_marker(nc: NatsClient, settings: JournalSettings, *, epoch: int = 1) -> None:
    """The epoch marker at seq 1, fenced on the empty stream (the stream must exist)."""
    marker = marker_envelope(seq=1, epoch=epoch, node=WRITER_NODE, timestamp_ns=time.time_ns())
    msg_id = marker_msg_id(epoch, 1, WRITER_NODE)
    await append_fenced(nc, settings, marker, msg_id=msg_id, after=Position())


async def publish_commands(
    nc: NatsClient,
    settings: JournalSettings,
    commands: Iterable[tuple[str, int, bytes]],
    *,
    first_seq: int,
    epoch: int = 1,
    request_prefix: str = "m",
) -> float:
    """Publish ``commands`` as seqs ``first_seq``, ``first_seq + 1``, ...; returns commands
    per second. Stream seq and command seq must agree (the stream holds seqs 1 to
    ``first_seq - 1`` already). Raises :class:`RuntimeError` if JetStream refuses one or
    the stream does not end at the last seq."""
    subject, seq = settings.subject, first_seq - 1
    source = iter(commands)
    pending = next(source, None)
    start = time.perf_counter()
    while pending is not None:
        seq += 1
        following = next(source, None)
        ctype, version, payload = pending
        rid = f"{request_prefix}{seq}"
        body = encode(Envelope(1, seq, epoch, time.time_ns(), ctype, version, payload, rid))
        pending = following
        if seq % ACK_EVERY and following is not None:
            await nc.publish(subject, body)
            continue
        reply = await nc.request(subject, body, timeout=ACK_TIMEOUT)
        if b"error" in reply.data:
            raise RuntimeError(f"JetStream refused command {seq}: {reply.data!r}")
    elapsed = time.perf_counter() - start
    stored = (await stream_info(nc, settings.stream, 10)).state.last_seq
    if stored != seq:
        raise RuntimeError(f"the stream ends at {stored}, not at {seq}: messages were lost")
    count = seq - first_seq + 1
    return count / elapsed if elapsed > 0 else 0.0
