"""The command envelope and how it travels: pure encode/decode, no I/O.

The normative description is ``docs/wire.md``; this module is its reference implementation.
Every message in a journal stream is one msgpack array::

    [format, seq, epoch, timestamp_ns, command_type, command_version, payload, request_id]

published on the journal subject with ``Nats-Msg-Id: <epoch>-<seq>`` and a fencing header
(``Nats-Expected-Last-Msg-Id``, or ``Nats-Expected-Last-Sequence`` where no id can be named).
"""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal

import msgspec

from jetstandby.errors import ConfigError, WireError

FORMAT_VERSION: Final = 1
MAX_U64: Final = 2**64 - 1
MAX_COMMAND_VERSION: Final = 2**16 - 1
MAX_COMMAND_TYPE_LEN: Final = 64
MAX_REQUEST_ID_LEN: Final = 128

#: Command types the protocol itself uses. User command types may not start with ``$``.
EPOCH_MARKER: Final = "$epoch"
CHECKPOINT: Final = "$checkpoint"
CONTROL_PREFIX: Final = "$"

#: Bytes to leave for headers: nats-server counts them toward ``max_payload``.
HEADER_ROOM: Final = 256

HDR_MSG_ID: Final = "Nats-Msg-Id"
HDR_EXPECTED_LAST_MSG_ID: Final = "Nats-Expected-Last-Msg-Id"
HDR_EXPECTED_LAST_SEQ: Final = "Nats-Expected-Last-Sequence"

_JOURNAL_NAME = re.compile(r"^[a-z0-9][a-z0-9_]{0,62}$")
_COMMAND_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")

# msgpack integers stop at 2**64 - 1, so a lower bound is all a u64 needs here.
U64 = Annotated[int, msgspec.Meta(ge=0)]
Seq = Annotated[int, msgspec.Meta(ge=1)]


class Envelope(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One journaled command: where it sits, who wrote it, when, and what it says.

    ``seq`` is contiguous from 1 over every message of a journal, control messages included.
    ``timestamp_ns`` is the primary's clock when it sequenced the command: the only time an
    engine ever sees.
    """

    format: Literal[1]
    seq: Seq
    epoch: U64
    timestamp_ns: U64
    command_type: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_COMMAND_TYPE_LEN)]
    command_version: Annotated[int, msgspec.Meta(ge=0, le=MAX_COMMAND_VERSION)]
    payload: bytes
    request_id: Annotated[str, msgspec.Meta(max_length=MAX_REQUEST_ID_LEN)] = ""

    @property
    def is_control(self) -> bool:
        """True for protocol messages (epoch markers, checkpoints), false for engine commands."""
        return self.command_type.startswith(CONTROL_PREFIX)

    @property
    def msg_id(self) -> str:
        """The ``Nats-Msg-Id`` this envelope is published with."""
        return msg_id(self.epoch, self.seq)


def command(
    seq: int,
    epoch: int,
    timestamp_ns: int,
    command_type: str,
    command_version: int,
    payload: bytes,
    request_id: str = "",
) -> Envelope:
    """Build an envelope, checking every field as a decoder would."""
    return decode(
        encode(
            Envelope(
                FORMAT_VERSION,
                seq,
                epoch,
                timestamp_ns,
                command_type,
                command_version,
                payload,
                request_id,
            )
        )
    )


_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(Envelope)


def encode(envelope: Envelope) -> bytes:
    """Envelope -> message body."""
    return _encoder.encode(envelope)


def decode(data: bytes, *, stream_seq: int | None = None) -> Envelope:
    """Message body -> envelope; :class:`WireError` naming ``stream_seq`` and the fault."""
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise WireError(_describe(exc, data), stream_seq=stream_seq) from exc


_FIELDS: Final = Envelope.__struct_fields__


def _describe(exc: Exception, data: bytes) -> str:
    """Turn msgspec's ``... - at `$[3]``` into a message naming the envelope field."""
    if isinstance(exc, UnicodeDecodeError):
        return f"a string field is not valid UTF-8 ({exc.reason} at byte {exc.start})"
    text = str(exc)
    match = re.search(r"at `\$\[(\d+)\]", text)
    if match and int(match.group(1)) < len(_FIELDS):
        field = _FIELDS[int(match.group(1))]
        text = f"field {field!r}: {text}"
    if text.startswith("Object contains unknown field") or "Expected `array`" in text:
        text = f"not a jetstandby envelope ({len(data)} bytes): {text}"
    return text


def max_body(max_payload: int) -> int:
    """The largest message body a writer may journal on a server with ``max_payload``:
    what the primary refuses above, and what a standby halts on."""
    return max_payload - HEADER_ROOM


def msg_id(epoch: int, seq: int) -> str:
    """The message id of command ``seq`` written in ``epoch``: ``"<epoch>-<seq>"``."""
    return f"{epoch}-{seq}"


def parse_msg_id(value: str) -> tuple[int, int] | None:
    """``"<epoch>-<seq>"`` (or an epoch marker's ``"<epoch>-<seq>-<node>"``) ->
    ``(epoch, seq)``; ``None`` for ids jetstandby did not write."""
    parts = value.split("-", 2)
    if len(parts) < 2 or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    return int(parts[0]), int(parts[1])


def check_command_type(command_type: str) -> str:
    """Reject a user command type that is empty, too long, or in the reserved ``$`` space."""
    if not _COMMAND_TYPE.match(command_type):
        raise ConfigError(
            "command_type",
            f"{command_type!r} must match {_COMMAND_TYPE.pattern} "
            "(types starting with '$' are reserved for the protocol)",
        )
    return command_type


def check_journal_name(name: str) -> str:
    """A journal name becomes part of a stream name and subjects; keep it to a safe alphabet."""
    if not _JOURNAL_NAME.match(name):
        raise ConfigError("journal", f"{name!r} must match {_JOURNAL_NAME.pattern}")
    return name


def stream_name(journal: str) -> str:
    """The JetStream stream that holds journal ``journal``."""
    return "JSB_" + check_journal_name(journal).upper()


def journal_subject(journal: str) -> str:
    """The one subject every message of ``journal`` is published on."""
    return f"jsb.{check_journal_name(journal)}.journal"


def submit_subject(journal: str) -> str:
    """Where clients send commands for ``journal``; only the serving primary listens."""
    return f"jsb.{check_journal_name(journal)}.submit"
