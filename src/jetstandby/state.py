"""The replicated state: an engine plus what replication must replay deterministically.

Every node runs the same journal through a :class:`ReplicatedState`: the engine's commands,
the epoch markers (which writer owns the journal from which seq), and the exactly-once record
(which request ids were applied, with their results). A standby rebuilds all three by replay,
so after a promotion it knows what the old primary answered.
"""

from __future__ import annotations

import contextlib
import functools
import gc
from collections import deque
from collections.abc import Callable, Iterator
from typing import NamedTuple

import msgspec

from jetstandby import wire
from jetstandby.engine import Command, Engine, LiveDigest
from jetstandby.errors import DivergenceError, ProtocolError, UnsupportedCommand

#: How many request ids the exactly-once record keeps. A retry of an older id is applied again.
DEFAULT_DEDUP_WINDOW = 100_000
#: ``$checkpoint`` versions: of the engine's digest, and of its live digest.
CHECKPOINT_DIGEST = 1
CHECKPOINT_LIVE_DIGEST = 2


class EpochMarker(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The payload of a ``$epoch`` control command: ``node`` writes from ``after_seq + 1`` on,
    with version ``engine_version`` of its engine (0: not said, from before the version gate)."""

    epoch: int
    node: str
    after_seq: int
    engine_version: int = 0


class Checkpoint(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The payload of a ``$checkpoint`` control command: the writer's engine digest (hex)
    after applying command ``seq``, the one right before the checkpoint. Version 1 carries
    :meth:`Engine.digest`, version 2 :meth:`LiveDigest.live_digest`."""

    seq: int
    digest: str
    engine_version: int


class _Image(msgspec.Struct, array_like=True, frozen=True):
    """A whole replicated state, as a snapshot holds it (see :meth:`ReplicatedState.snapshot`)."""

    format: int
    engine: bytes
    epoch: int
    epoch_node: str | None
    last_seq: int
    last_msg_id: str | None
    last_timestamp_ns: int
    writer_engine_version: int
    last_checkpoint_seq: int
    request_ids: list[str]
    applied: list[tuple[int, bytes]]  # (seq, result) of each request id, in the same order


IMAGE_FORMAT = 1


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Applied(NamedTuple):
    """What the exactly-once record remembers of a request id."""

    seq: int
    result: bytes


_marker_decoder = msgspec.msgpack.Decoder(EpochMarker)
_checkpoint_decoder = msgspec.msgpack.Decoder(Checkpoint)
_image_decoder = msgspec.msgpack.Decoder(_Image)


def marker_envelope(
    *, seq: int, epoch: int, node: str, timestamp_ns: int, engine_version: int = 0
) -> wire.Envelope:
    payload = msgspec.msgpack.encode(
        EpochMarker(epoch=epoch, node=node, after_seq=seq - 1, engine_version=engine_version)
    )
    return wire.Envelope(1, seq, epoch, timestamp_ns, wire.EPOCH_MARKER, 1, payload)


def marker_msg_id(epoch: int, seq: int, node: str) -> str:
    """An epoch marker's message id names its node, so that two standbys racing for the same
    epoch never deduplicate into each other: exactly one of them is stored."""
    return f"{wire.msg_id(epoch, seq)}-{node}"


class ReplicatedState:
    """Applies journal envelopes in order; see the module docstring.

    Raises :class:`ProtocolError` for an envelope that breaks the protocol (a stale epoch, a
    command before any epoch marker), :class:`UnsupportedCommand` for one the engine does
    not accept and :class:`DivergenceError` for a checkpoint whose digest is not this
    state's. All leave the state untouched.

    It is also what a snapshot holds (:meth:`snapshot`, :meth:`restore`): the engine with its
    epoch, position and exactly-once record, so that a standby started from a snapshot
    answers retried requests as the one that took it would. :meth:`digest` is the engine's.
    """

    def __init__(self, engine: Engine, *, dedup_window: int = DEFAULT_DEDUP_WINDOW) -> None:
        self.engine = engine
        self.epoch = 0
        self.epoch_node: str | None = None
        self.last_seq = 0
        self.last_msg_id: str | None = None
        self.last_timestamp_ns = 0
        self.dedup_window = dedup_window
        #: The engine version of the current writer, from its epoch marker or checkpoints.
        self.writer_engine_version = 0
        self.last_checkpoint_seq = 0
        # Plain (seq, result) tuples, not Applied: the collector stops tracking a tuple of
        # ints and bytes, so 100,000 remembered results do not slow every full collection.
        # A dict (in insertion order) with a FIFO of its keys for eviction: copying it for a
        # snapshot is a fast scan, where an OrderedDict takes ~55 ms per 100,000 entries.
        self._applied: dict[str, tuple[int, bytes]] = {}
        self._oldest: deque[str] = deque()
        self._digest: tuple[int, bytes] = (-1, b"")

    # -- the replay handler -------------------------------------------------------------

    def handle_command(self, command: wire.Envelope) -> None:
        self.apply(command)

    def apply(self, envelope: wire.Envelope) -> bytes | None:
        """Apply one envelope; the engine's result for a command, ``None`` for a marker."""
        if envelope.command_type == wire.EPOCH_MARKER:
            self._apply_marker(envelope)
            return None
        if envelope.command_type == wire.CHECKPOINT:
            self._apply_checkpoint(envelope)
            return None
        if envelope.is_control:
            raise UnsupportedCommand(envelope.command_type, envelope.command_version, "protocol")
        self._check_epoch(envelope)
        self.check_supported(envelope.command_type, envelope.command_version)
        previous = self._applied.get(envelope.request_id) if envelope.request_id else None
        if previous is not None:
            result = previous[1]  # journaled twice: every node skips it alike
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
                self._remember(envelope.request_id, (envelope.seq, result))
        self._advance(envelope, wire.msg_id(envelope.epoch, envelope.seq))
        return result

    def skip_command(self, envelope: wire.Envelope) -> None:
        """Count ``envelope``'s seq as consumed without applying it: an operator's explicit
        skip of a poison message. The engine, the epoch and the exactly-once record are left
        as they were; a checkpoint will tell if the primary did apply it."""
        self.last_seq = envelope.seq
        self.last_msg_id = wire.msg_id(envelope.epoch, envelope.seq)

    # -- digests, checkpoints and snapshots ------------------------------------------------

    @property
    def name(self) -> str:
        return self.engine.name

    @property
    def version(self) -> int:
        return self.engine.version

    def digest(self) -> bytes:
        """The engine's digest, computed once per state (the seq moves with every change)."""
        if self._digest[0] != self.last_seq:
            self._digest = (self.last_seq, self.engine.digest())
        return self._digest[1]

    @property
    def _compared_version(self) -> int:
        """The ``$checkpoint`` version this node writes: of the engine's live digest if it
        keeps one, else of its digest."""
        return CHECKPOINT_LIVE_DIGEST if isinstance(self.engine, LiveDigest) else CHECKPOINT_DIGEST

    def compared_digest(self) -> bytes:
        """The digest nodes compare, in checkpoints and in ``/status``: the engine's live
        digest if it keeps one (O(1)), else :meth:`digest`."""
        return self._checkpoint_digest(self._compared_version)

    def checkpoint(self, *, epoch: int, timestamp_ns: int) -> wire.Envelope:
        """The ``$checkpoint`` envelope that follows this state: seq ``last_seq + 1``, of
        :meth:`compared_digest`."""
        version = self._compared_version
        payload = Checkpoint(
            seq=self.last_seq,
            digest=self._checkpoint_digest(version).hex(),
            engine_version=self.engine.version,
        )
        return wire.Envelope(
            1,
            self.last_seq + 1,
            epoch,
            timestamp_ns,
            wire.CHECKPOINT,
            version,
            msgspec.msgpack.encode(payload),
        )

    def _checkpoint_digest(self, version: int) -> bytes:
        """The digest a ``$checkpoint`` of ``version`` carries, of this state. Raises
        :class:`UnsupportedCommand` for a version this node cannot compute."""
        if version == CHECKPOINT_DIGEST:
            return self.digest()
        if version == CHECKPOINT_LIVE_DIGEST:
            if isinstance(self.engine, LiveDigest):
                return self.engine.live_digest()
            engine = f"{self.engine.name} v{self.engine.version} (it keeps no live digest)"
            raise UnsupportedCommand(wire.CHECKPOINT, version, engine)
        raise UnsupportedCommand(wire.CHECKPOINT, version, "protocol")

    def snapshot(self) -> bytes:
        return self.freeze()()

    def freeze(self) -> Callable[[], bytes]:
        """Take what a snapshot needs now (the engine's bytes, a copy of the exactly-once
        record); the returned function encodes it later, on any thread. The pause that
        replay must make is only the engine's ``snapshot()`` and a list copy."""
        image = _Image(
            IMAGE_FORMAT,
            self.engine.snapshot(),
            self.epoch,
            self.epoch_node,
            self.last_seq,
            self.last_msg_id,
            self.last_timestamp_ns,
            self.writer_engine_version,
            self.last_checkpoint_seq,
            # Two lists of the objects already there: no new tuple per entry, so a copy of
            # 100,000 entries does not set off the garbage collector (it took 0.3 s).
            list(self._applied),
            list(self._applied.values()),
        )
        return functools.partial(msgspec.msgpack.encode, image)

    def restore(self, data: bytes) -> None:
        """Replace everything with a :meth:`snapshot`; raises (changing nothing) if ``data``
        is not one."""
        image = _image_decoder.decode(data)
        if image.format != IMAGE_FORMAT:
            raise ValueError(f"unknown replicated state image format {image.format}")
        self.engine.restore(image.engine)
        self.epoch, self.epoch_node = image.epoch, image.epoch_node
        self.last_seq, self.last_msg_id = image.last_seq, image.last_msg_id
        self.last_timestamp_ns = image.last_timestamp_ns
        self.writer_engine_version = image.writer_engine_version
        self.last_checkpoint_seq = image.last_checkpoint_seq
        if len(image.request_ids) != len(image.applied):
            raise ValueError("replicated state image: request ids and results differ in count")
        with _collector_paused():  # 100,000 new entries would set it off again and again
            self._applied = dict(zip(image.request_ids, image.applied, strict=True))
            self._oldest = deque(image.request_ids)
        self._digest = (-1, b"")

    # -- what the primary asks -----------------------------------------------------------

    def check_supported(self, command_type: str, command_version: int) -> None:
        versions = self.engine.accepts.get(command_type)
        if versions is None or command_version not in versions:
            engine = f"{self.engine.name} v{self.engine.version}"
            raise UnsupportedCommand(command_type, command_version, engine)

    def lookup(self, request_id: str) -> Applied | None:
        """The earlier outcome of ``request_id``, if it is still in the window."""
        entry = self._applied.get(request_id)
        return None if entry is None else Applied(*entry)

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
        self.writer_engine_version = marker.engine_version
        self._advance(envelope, marker_msg_id(marker.epoch, envelope.seq, marker.node))

    def _apply_checkpoint(self, envelope: wire.Envelope) -> None:
        self._check_epoch(envelope)
        try:
            checkpoint = _checkpoint_decoder.decode(envelope.payload)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise ProtocolError(
                f"command seq {envelope.seq}: bad checkpoint: {exc}", seq=envelope.seq
            ) from exc
        if checkpoint.seq != self.last_seq:
            raise ProtocolError(
                f"command seq {envelope.seq}: checkpoint for seq {checkpoint.seq} follows "
                f"seq {self.last_seq}",
                seq=envelope.seq,
            )
        actual = self._checkpoint_digest(envelope.command_version).hex()
        if actual != checkpoint.digest:
            kind = "live digest" if envelope.command_version == CHECKPOINT_LIVE_DIGEST else "digest"
            raise DivergenceError(
                f"DIVERGED at command seq {checkpoint.seq}: the writer's state {kind} is "
                f"{checkpoint.digest}, this node's is {actual} (engine {self.engine.name} "
                f"v{self.engine.version}; writer v{checkpoint.engine_version}). Replay is not "
                "deterministic here: this node must be rebuilt, never promoted",
                seq=envelope.seq,
                checkpoint_seq=checkpoint.seq,
                expected=checkpoint.digest,
                actual=actual,
            )
        self.writer_engine_version = checkpoint.engine_version
        self.last_checkpoint_seq = checkpoint.seq
        self._advance(envelope, wire.msg_id(envelope.epoch, envelope.seq))

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

    def _remember(self, request_id: str, applied: tuple[int, bytes]) -> None:
        self._applied[request_id] = applied  # never there yet: apply() looked it up
        self._oldest.append(request_id)
        if len(self._oldest) > self.dedup_window:
            del self._applied[self._oldest.popleft()]
