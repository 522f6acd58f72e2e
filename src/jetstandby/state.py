"""The replicated state: an engine plus what replication must replay deterministically.

Every node runs the same journal through a :class:`ReplicatedState`: the engine's commands,
the epoch markers (which writer owns the journal from which seq), and the exactly-once record
(which request ids were applied, with their results). A standby rebuilds all three by replay,
so after a promotion it knows what the old primary answered.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import msgspec

from jetstandby import wire
from jetstandby.engine import Command, Engine
from jetstandby.errors import ProtocolError, UnsupportedCommand

#: How many request ids the exactly-once record keeps. A retry of an older id is applied again.
DEFAULT_DEDUP_WINDOW = 100_000


class EpochMarker(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The payload of a ``$epoch`` control command: ``node`` writes from ``after_seq + 1`` on."""

    epoch: int
    node: str
    after_seq: int


class Applied(NamedTuple):
    """What the exactly-once record remembers of a request id."""

    seq: int
    result: bytes


_marker_decoder = msgspec.msgpack.Decoder(EpochMarker)


def marker_envelope(*, seq: int, epoch: int, node: str, timestamp_ns: int) -> wire.Envelope:
    payload = msgspec.msgpack.encode(EpochMarker(epoch=epoch, node=node, after_seq=seq - 1))
    return wire.Envelope(1, seq, epoch, timestamp_ns, wire.EPOCH_MARKER, 1, payload)


def marker_msg_id(epoch: int, seq: int, node: str) -> str:
    """An epoch marker's message id names its node, so that two standbys racing for the same
    epoch never deduplicate into each other: exactly one of them is stored."""
    return f"{wire.msg_id(epoch, seq)}-{node}"


class ReplicatedState:
    """Applies journal envelopes in order; see the module docstring.

    Raises :class:`ProtocolError` for an envelope that breaks the protocol (a stale epoch, a
    command before any epoch marker) and :class:`UnsupportedCommand` for one the engine does
    not accept. Both leave the state untouched.
    """

    def __init__(self, engine: Engine, *, dedup_window: int = DEFAULT_DEDUP_WINDOW) -> None:
        self.engine = engine
        self.epoch = 0
        self.epoch_node: str | None = None
        self.last_seq = 0
        self.last_msg_id: str | None = None
        self.last_timestamp_ns = 0
        self.dedup_window = dedup_window
        self._applied: OrderedDict[str, Applied] = OrderedDict()

    # -- the replay handler -------------------------------------------------------------

    def handle_command(self, command: wire.Envelope) -> None:
        self.apply(command)

    def apply(self, envelope: wire.Envelope) -> bytes | None:
        """Apply one envelope; the engine's result for a command, ``None`` for a marker."""
        if envelope.command_type == wire.EPOCH_MARKER:
            self._apply_marker(envelope)
            return None
        if envelope.is_control:
            raise UnsupportedCommand(envelope.command_type, envelope.command_version, "protocol")
        self._check_epoch(envelope)
        self.check_supported(envelope.command_type, envelope.command_version)
        previous = self._applied.get(envelope.request_id) if envelope.request_id else None
        if previous is not None:
            result = previous.result  # journaled twice: every node skips it alike
        else:
            result = self.engine.apply(
                Command(
                    envelope.seq,
                    envelope.timestamp_ns,
                    envelope.command_type,
                    envelope.command_version,
                    envelope.payload,
                )
            )
            if envelope.request_id:
                self._remember(envelope.request_id, Applied(envelope.seq, result))
        self._advance(envelope, wire.msg_id(envelope.epoch, envelope.seq))
        return result

    def skip_command(self, envelope: wire.Envelope) -> None:
        """Count ``envelope``'s seq as consumed without applying it: an operator's explicit
        skip of a poison message. The engine, the epoch and the exactly-once record are left
        as they were; a checkpoint will tell if the primary did apply it."""
        self.last_seq = envelope.seq
        self.last_msg_id = wire.msg_id(envelope.epoch, envelope.seq)

    # -- what the primary asks -----------------------------------------------------------

    def check_supported(self, command_type: str, command_version: int) -> None:
        versions = self.engine.accepts.get(command_type)
        if versions is None or command_version not in versions:
            engine = f"{self.engine.name} v{self.engine.version}"
            raise UnsupportedCommand(command_type, command_version, engine)

    def lookup(self, request_id: str) -> Applied | None:
        """The earlier outcome of ``request_id``, if it is still in the window."""
        return self._applied.get(request_id)

    # -- internals ------------------------------------------------------------------------

    def _apply_marker(self, envelope: wire.Envelope) -> None:
        try:
            marker = _marker_decoder.decode(envelope.payload)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise ProtocolError(f"command seq {envelope.seq}: bad epoch marker: {exc}") from exc
        if marker.epoch != envelope.epoch or marker.epoch <= self.epoch:
            raise ProtocolError(
                f"command seq {envelope.seq}: epoch marker for epoch {marker.epoch} "
                f"(envelope epoch {envelope.epoch}) after epoch {self.epoch}"
            )
        self.epoch = marker.epoch
        self.epoch_node = marker.node
        self._advance(envelope, marker_msg_id(marker.epoch, envelope.seq, marker.node))

    def _check_epoch(self, envelope: wire.Envelope) -> None:
        if envelope.epoch == self.epoch and self.epoch > 0:
            return
        if self.epoch == 0:
            problem = "a command before any epoch marker"
        elif envelope.epoch < self.epoch:
            problem = f"stale epoch {envelope.epoch}: epoch {self.epoch} began before it"
        else:
            problem = f"epoch {envelope.epoch} has no epoch marker (current epoch {self.epoch})"
        raise ProtocolError(f"command seq {envelope.seq}: {problem}", seq=envelope.seq)

    def _advance(self, envelope: wire.Envelope, msg_id: str) -> None:
        self.last_seq = envelope.seq
        self.last_msg_id = msg_id
        self.last_timestamp_ns = envelope.timestamp_ns

    def _remember(self, request_id: str, applied: Applied) -> None:
        self._applied[request_id] = applied
        if len(self._applied) > self.dedup_window:
            self._applied.popitem(last=False)
