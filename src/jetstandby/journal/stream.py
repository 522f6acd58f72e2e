"""JetStream plumbing shared by the writer and the reader: connect, the stream, lookups.

This package is the only place that imports ``nats``. Every nats error is translated here or
in its callers into the jetstandby tree.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Final

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.client import Srv
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig, StreamInfo

from jetstandby import wire
from jetstandby.config import JournalSettings
from jetstandby.errors import JournalUnavailable, StreamMismatch
from jetstandby.wire import HDR_MSG_ID

logger = logging.getLogger(__name__)

SLOW_CONSUMER_LOG_INTERVAL: Final = 5.0

__all__ = [
    "NatsClient",
    "close_quietly",
    "connect",
    "ensure_stream",
    "last_message",
    "message_at",
    "read_journal",
    "read_stream",
    "stream_info",
]

ERR_NO_MESSAGE: Final = 10037
ERR_STREAM_NOT_FOUND: Final = 10059
ERR_WRONG_LAST_MSG_ID: Final = 10070
ERR_WRONG_LAST_SEQUENCE: Final = 10071


_WHITESPACE: Final = re.compile(r"\s")


class _Client(NatsClient):
    """nats-py's client with a faster header parser.

    Every journal message carries two headers, and nats-py 2.16 spends about 6 µs per message
    on them (a per-character generator for the key check), a quarter of a standby's
    per-message cost. This parser returns the same dict, byte for byte;
    ``tests/test_stream.py`` checks it against nats-py's own on generated header blocks, and
    the nats-py pin keeps the override honest.
    """

    @staticmethod
    def _parse_header_lines(raw: bytes) -> dict[str, str]:
        out: dict[str, str] = {}
        for line in raw.split(b"\r\n"):
            if not line:
                continue
            name, sep, value = line.partition(b":")
            if not sep:
                continue
            try:
                key = name.strip().decode("ascii")
            except UnicodeDecodeError:
                continue
            if _WHITESPACE.search(key):
                continue
            out[key] = value.strip().decode("utf-8", "replace")
        return out

    async def _connect_to_server(self, s: Srv) -> None:
        # nats-py 2.16 keeps one TcpTransport per client, and its ``connect`` replaces the
        # reader and writer without closing them. When a reconnect gets a TCP connection but
        # no handshake (a hung server, a black-holed link), the next attempt so leaves that
        # socket open until the garbage collector finds it: one per attempt, every
        # ``reconnect_time_wait``, for as long as the outage lasts. Closing is idempotent, so
        # the paths that already closed it are unchanged.
        if self._transport:
            self._transport.close()  # type: ignore[no-untyped-call]
        await super()._connect_to_server(s)


class _SlowConsumerLog:
    """One warning per subscription and interval for nats-py's per-message drop reports: a
    catching-up standby that overflows would otherwise log (and stall on) every drop."""

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}
        self._logged_at: dict[int, float] = {}

    def dropped(self, exc: nats.errors.SlowConsumerError) -> None:
        sid = exc.sid
        self._counts[sid] = self._counts.get(sid, 0) + 1
        now = time.monotonic()
        last = self._logged_at.get(sid)
        if last is None or now - last >= SLOW_CONSUMER_LOG_INTERVAL:
            self._logged_at[sid] = now
            logger.warning(
                "NATS slow consumer on %s (sid %d): %d messages dropped so far; the "
                "subscription's pending limits are too small for what the server sends",
                exc.subject,
                sid,
                self._counts[sid],
            )


async def connect(
    servers: str | list[str], *, name: str = "jetstandby", first_connect_within: float = 5.0
) -> NatsClient:
    """Connect for the long haul: reconnect forever, quickly, and say so in the log.

    Raises :class:`JournalUnavailable` if no server answers within ``first_connect_within``.
    """

    slow = _SlowConsumerLog()

    async def on_error(exc: Exception) -> None:
        if isinstance(exc, nats.errors.SlowConsumerError):
            slow.dropped(exc)  # nats-py reports every dropped message: summarise them
        else:
            logger.warning("NATS connection error: %s", exc)

    async def on_disconnected() -> None:
        if not nc.is_closed:
            logger.warning("NATS disconnected from %s; reconnecting", nc.connected_url)

    async def on_reconnected() -> None:
        logger.info("NATS reconnected to %s", nc.connected_url)

    nc = _Client()
    urls = [s for s in servers.split(",") if s] if isinstance(servers, str) else servers
    try:
        async with asyncio.timeout(first_connect_within):
            await nc.connect(
                servers=urls,
                name=name,
                connect_timeout=2,
                reconnect_time_wait=0.25,  # type: ignore[arg-type]  # typed int, used as float
                max_reconnect_attempts=-1,
                allow_reconnect=True,
                ping_interval=5,
                max_outstanding_pings=2,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
            )
    except TimeoutError:
        with contextlib.suppress(Exception):
            await nc.close()
        raise JournalUnavailable(
            f"no NATS server answered at {servers} within {first_connect_within}s"
        ) from None
    except (OSError, nats.errors.Error) as exc:
        raise JournalUnavailable(f"cannot connect to NATS at {servers}: {exc}") from exc
    return nc


async def close_quietly(nc: NatsClient) -> None:
    """Close a connection; one whose server just went away can fail to flush, which is no
    reason to fail a shutdown."""
    with contextlib.suppress(nats.errors.Error, OSError):
        await nc.close()


def required_config(settings: JournalSettings) -> StreamConfig:
    """The stream a journal needs: see docs/wire.md, "Stream"."""
    return StreamConfig(
        name=settings.stream,
        subjects=[settings.subject],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=settings.replicas,
        # Unbounded: a full stream (server or account limits) refuses writes. Bounded: the
        # oldest commands go, which snapshots make safe (a standby re-bootstraps past them).
        discard=DiscardPolicy.OLD if settings.bounded else DiscardPolicy.NEW,
        deny_delete=True,
        deny_purge=True,
        allow_rollup_hdrs=False,
        duplicate_window=settings.duplicate_window,
        max_age=settings.max_age,
        max_bytes=settings.max_bytes,
        allow_direct=True,
    )


def check_config(actual: StreamConfig, settings: JournalSettings) -> None:
    """Refuse a stream whose settings break an assumption fencing or replay rests on."""
    wanted = required_config(settings)
    problems: list[str] = []
    if settings.subject not in (actual.subjects or []):
        problems.append(f"subjects {actual.subjects} lack {settings.subject!r}")
    # The limits are the stream's (set when it was created), so is the discard policy they need.
    bounded = bool(actual.max_age) or (actual.max_bytes or -1) > 0 or (actual.max_msgs or -1) > 0
    discard = DiscardPolicy.OLD if bounded else DiscardPolicy.NEW
    if actual.discard != discard:
        problems.append(f"discard is {actual.discard!r}, need {discard!r} for its limits")
    for field in ("storage", "deny_delete", "deny_purge", "allow_rollup_hdrs"):
        if getattr(actual, field) != getattr(wanted, field):
            problems.append(
                f"{field} is {getattr(actual, field)!r}, need {getattr(wanted, field)!r}"
            )
    if actual.retention not in (None, RetentionPolicy.LIMITS):
        problems.append(f"retention is {actual.retention!r}, need limits")
    if (actual.duplicate_window or 0) < settings.unavailable_after:
        problems.append(
            f"duplicate_window {actual.duplicate_window}s is shorter than "
            f"unavailable_after {settings.unavailable_after}s"
        )
    if problems:
        raise StreamMismatch(
            f"stream {settings.stream!r} cannot hold a journal: " + "; ".join(problems)
        )


async def ensure_stream(nc: NatsClient, settings: JournalSettings) -> StreamInfo:
    """Create the journal's stream if it is missing; check it if it exists.

    Raises :class:`StreamMismatch` naming each unsafe setting, :class:`JournalUnavailable`
    if JetStream does not answer.
    """
    jsm = nc.jsm(timeout=settings.request_timeout)
    try:
        try:
            info = await jsm.stream_info(settings.stream)
        except nats.js.errors.NotFoundError:
            logger.info("creating stream %s on subject %s", settings.stream, settings.subject)
            info = await jsm.add_stream(required_config(settings))
    except (nats.errors.Error, OSError) as exc:
        raise JournalUnavailable(
            f"JetStream did not answer for stream {settings.stream!r}: {exc}"
        ) from exc
    check_config(info.config, settings)
    return info


async def read_stream(
    nc: NatsClient, settings: JournalSettings, *, timeout: float = 10.0
) -> list[StoredMessage]:
    """Every message of the journal's stream as it is now, in order and undecoded (so that
    poison written straight into the stream does not stop the read).

    For verification (the demo, the tests, the fault bench), not for replay: it holds the
    whole stream in memory.
    """
    try:
        js = nc.jetstream()
        count = (await js.stream_info(settings.stream)).state.messages
        sub = await js.subscribe(settings.subject, ordered_consumer=True)
        try:
            out = []
            for _ in range(count):
                msg = await sub.next_msg(timeout=timeout)
                msg_id = (msg.headers or {}).get(HDR_MSG_ID)
                out.append(StoredMessage(msg.metadata.sequence.stream, msg_id, msg.data))
            return out
        finally:
            await sub.unsubscribe()
    except (nats.errors.Error, OSError) as exc:
        raise JournalUnavailable(f"cannot read journal {settings.journal!r}: {exc}") from exc


async def read_journal(
    nc: NatsClient, settings: JournalSettings, *, timeout: float = 10.0
) -> list[tuple[str | None, wire.Envelope]]:
    """:func:`read_stream`, decoded: ``(Nats-Msg-Id, envelope)`` per message. Raises
    :class:`~jetstandby.errors.WireError` on a message that is not an envelope."""
    return [
        (m.msg_id, wire.decode(m.data, stream_seq=m.stream_seq))
        for m in await read_stream(nc, settings, timeout=timeout)
    ]


async def stream_info(nc: NatsClient, stream: str, timeout: float) -> StreamInfo:
    try:
        return await nc.jsm(timeout=timeout).stream_info(stream)
    except (nats.errors.Error, OSError) as exc:
        raise JournalUnavailable(f"stream info for {stream!r} failed: {exc}") from exc


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message as the stream holds it: where, its ``Nats-Msg-Id``, its body."""

    stream_seq: int
    msg_id: str | None
    data: bytes


class ApiError(msgspec.Struct):
    """The ``error`` object of a JetStream API answer."""

    code: int = 0
    err_code: int = 0
    description: str = ""


class PubAck(msgspec.Struct):
    """JetStream's answer to a publish: the stream seq, or an error."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: ApiError | None = None


PUB_ACK: Final = msgspec.json.Decoder(PubAck)


class _RawMessage(msgspec.Struct):
    seq: int
    data: str = ""
    hdrs: str | None = None


class _MsgGetResponse(msgspec.Struct):
    message: _RawMessage | None = None
    error: ApiError | None = None


_msg_get_decoder: Final = msgspec.json.Decoder(_MsgGetResponse)


def _header(raw: bytes, name: str) -> str | None:
    prefix = name.lower().encode() + b":"
    for line in raw.split(b"\r\n")[1:]:
        if line.lower().startswith(prefix):
            return line[len(prefix) :].strip().decode()
    return None


async def last_message(nc: NatsClient, settings: JournalSettings) -> StoredMessage | None:
    """The stream's last message with its ``Nats-Msg-Id``, or ``None`` for an empty stream."""
    return await read_message(nc, settings, {"last_by_subj": settings.subject})


async def message_at(
    nc: NatsClient, settings: JournalSettings, stream_seq: int
) -> StoredMessage | None:
    """The message at ``stream_seq``, or ``None`` if there is none (yet)."""
    return await read_message(nc, settings, {"seq": stream_seq})


async def read_message(
    nc: NatsClient, settings: JournalSettings, request: dict[str, Any]
) -> StoredMessage | None:
    try:
        reply = await nc.request(
            f"$JS.API.STREAM.MSG.GET.{settings.stream}",
            msgspec.json.encode(request),
            timeout=settings.request_timeout,
        )
    except (nats.errors.Error, OSError) as exc:
        raise JournalUnavailable(f"cannot read {request} of {settings.stream!r}: {exc}") from exc
    response = _msg_get_decoder.decode(reply.data)
    if response.error is not None:
        if response.error.err_code == ERR_NO_MESSAGE:
            return None
        raise JournalUnavailable(
            f"reading {request} of {settings.stream!r} failed: {response.error.description}"
        )
    assert response.message is not None
    raw = response.message
    headers = base64.b64decode(raw.hdrs) if raw.hdrs else b""
    return StoredMessage(raw.seq, _header(headers, HDR_MSG_ID), base64.b64decode(raw.data))
