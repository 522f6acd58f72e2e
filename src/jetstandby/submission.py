"""Client ⇄ primary over NATS request/reply on ``jsb.<journal>.submit``. Pure, no I/O.

A request is a msgpack array ``[request_id, command_type, command_version, payload]``; the
reply a msgpack map (:class:`SubmitReply`). Only the serving primary subscribes (queue group
``jsb-primary``), so clients never need to know which node that is.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Final

import msgspec

from jetstandby.wire import MAX_COMMAND_VERSION, MAX_REQUEST_ID_LEN

QUEUE_GROUP: Final = "jsb-primary"


class Code(StrEnum):
    """Why a submission failed; ``retriable`` codes may succeed on another try or node."""

    BAD_REQUEST = "bad_request"
    UNSUPPORTED = "unsupported"
    NOT_PRIMARY = "not_primary"
    FENCED = "fenced"
    UNAVAILABLE = "unavailable"
    OVERLOADED = "overloaded"


RETRIABLE: Final = frozenset({Code.NOT_PRIMARY, Code.FENCED, Code.UNAVAILABLE, Code.OVERLOADED})


class Submission(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    request_id: Annotated[str, msgspec.Meta(max_length=MAX_REQUEST_ID_LEN)]
    command_type: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    command_version: Annotated[int, msgspec.Meta(ge=0, le=MAX_COMMAND_VERSION)]
    payload: bytes


class SubmitReply(msgspec.Struct, frozen=True, omit_defaults=True):
    """``ok``: applied and acknowledged by JetStream at ``seq``, with the engine's ``result``.

    ``deduplicated``: the request id was applied before; this is the original outcome.
    """

    ok: bool
    seq: int = 0
    result: bytes = b""
    deduplicated: bool = False
    code: str = ""
    error: str = ""

    @property
    def retriable(self) -> bool:
        return not self.ok and self.code in RETRIABLE


_submission_decoder: Final = msgspec.msgpack.Decoder(Submission)
_reply_decoder: Final = msgspec.msgpack.Decoder(SubmitReply)
_encoder: Final = msgspec.msgpack.Encoder()


def encode_submission(submission: Submission) -> bytes:
    return _encoder.encode(submission)


def decode_submission(data: bytes) -> Submission:
    """Raises ``msgspec.DecodeError`` naming the field."""
    return _submission_decoder.decode(data)


def encode_reply(reply: SubmitReply) -> bytes:
    return _encoder.encode(reply)


def decode_reply(data: bytes) -> SubmitReply:
    return _reply_decoder.decode(data)


def failure(code: Code, error: str) -> bytes:
    return encode_reply(SubmitReply(ok=False, code=code.value, error=error))
