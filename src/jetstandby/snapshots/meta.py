"""Snapshot metadata and trust, pure: no I/O.

:func:`capture` takes a snapshot's bytes and :class:`SnapshotMeta`; :func:`verify` (metadata,
then bytes) and :func:`restore_verified` (state digest) refuse one that cannot be trusted,
with a :class:`~jetstandby.errors.SnapshotError` whose ``reason`` is a :class:`Refusal`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Generic, Protocol, TypeVar

import msgspec

from jetstandby.config import JournalSettings
from jetstandby.errors import SnapshotError

SNAPSHOT_FORMAT: Final = 1
DEFAULT_KEEP: Final = 3
BUCKET_PREFIX: Final = "JSB_SNAP_"
OBJECT_PREFIX: Final = "snap-"


class Refusal(StrEnum):
    """Why a snapshot or a store request was refused: the ``reason`` of a SnapshotError."""

    FORMAT = "format"  # a snapshot format this version cannot read
    STREAM = "stream"  # taken from another stream (journal)
    ENGINE = "engine"  # another engine, or another version of it
    SIZE = "size"  # truncated (or padded): the byte count is not the one taken
    CHECKSUM = "checksum"  # the bytes are not the ones taken
    BEYOND_TAIL = "beyond_tail"  # its stream seq is past the stream's last message
    TOO_OLD = "too_old"  # the stream no longer holds the commands right after it
    RESTORE = "restore"  # the engine could not restore the bytes
    DIGEST = "digest"  # restored, but to a state with another digest
    MISSING = "missing"  # no such snapshot (or bucket) in the store
    CAPTURE = "capture"  # the engine could not take one
    METADATA = "metadata"  # the stored metadata is unreadable or inconsistent
    STORE = "store"  # JetStream refused a request on the bucket
    CLOSED = "closed"  # the store was closed


class SnapshotEngine(Protocol):
    """The part of the :class:`~jetstandby.engine.Engine` contract that snapshots use.

    Read-only, so that an engine class with plain class attributes fits it.
    """

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int: ...

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes) -> None: ...

    def digest(self) -> bytes: ...


class SnapshotMeta(msgspec.Struct, frozen=True, kw_only=True):
    """What a snapshot holds, where in the journal it stands, and how to check its bytes.

    ``seq`` is the last command seq applied to the state and ``stream_seq`` that command's
    stream seq: replay resumes at ``stream_seq + 1``. ``digest`` is ``engine.digest().hex()``
    of that state; ``sha256`` (hex) and ``size`` describe the snapshot bytes. Build one with
    :func:`capture`.
    """

    journal: str
    stream: str
    engine_name: str
    engine_version: int
    seq: int
    stream_seq: int
    epoch: int
    digest: str
    sha256: str
    size: int
    node_id: str
    taken_at_unix_ms: int
    format: int = SNAPSHOT_FORMAT
    #: When the stream was created (ISO 8601): tells a stream from a later one of that name.
    stream_created: str = ""

    @property
    def name(self) -> str:
        """The object name: ``snap-<seq:020d>-<epoch>-<node_id>``."""
        return object_name(self.seq, self.epoch, self.node_id)


def bucket_name(journal: str) -> str:
    """The Object Store bucket that holds the snapshots of ``journal``."""
    return BUCKET_PREFIX + journal.upper()


def object_name(seq: int, epoch: int, node_id: str) -> str:
    """The object name of a snapshot; names of one journal sort by ``seq``."""
    return f"{OBJECT_PREFIX}{seq:020d}-{epoch}-{node_id}"


def capture(
    engine: SnapshotEngine,
    *,
    settings: JournalSettings,
    seq: int,
    stream_seq: int,
    epoch: int,
    node_id: str,
    taken_at_unix_ms: int | None = None,
    stream_created: str = "",
) -> tuple[bytes, SnapshotMeta]:
    """Snapshot ``engine`` as it stands after command ``seq`` (at ``stream_seq``).

    Returns the bytes and their metadata, ready for :meth:`SnapshotStore.put`. The caller
    makes sure that nothing is applied to the engine while this runs.
    """
    data = engine.snapshot()
    meta = describe(
        data,
        engine_name=engine.name,
        engine_version=engine.version,
        digest=engine.digest().hex(),
        settings=settings,
        seq=seq,
        stream_seq=stream_seq,
        epoch=epoch,
        node_id=node_id,
        taken_at_unix_ms=taken_at_unix_ms,
        stream_created=stream_created,
    )
    return data, meta


def describe(
    data: bytes,
    *,
    engine_name: str,
    engine_version: int,
    digest: str,
    settings: JournalSettings,
    seq: int,
    stream_seq: int,
    epoch: int,
    node_id: str,
    taken_at_unix_ms: int | None = None,
    stream_created: str = "",
) -> SnapshotMeta:
    """The metadata of snapshot bytes ``data`` of a state whose engine digest (hex) is
    ``digest``. Pure; takes the SHA-256 of ``data`` (safe to run in a thread)."""
    return SnapshotMeta(
        journal=settings.journal,
        stream=settings.stream,
        engine_name=engine_name,
        engine_version=engine_version,
        seq=seq,
        stream_seq=stream_seq,
        epoch=epoch,
        digest=digest,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        node_id=node_id,
        taken_at_unix_ms=(
            time.time_ns() // 1_000_000 if taken_at_unix_ms is None else taken_at_unix_ms
        ),
        stream_created=stream_created,
    )


# --- verification: pure ---------------------------------------------------------------------


def refused(snapshot: str, reason: Refusal, detail: str) -> SnapshotError:
    return SnapshotError(
        f"snapshot {snapshot} refused ({reason}): {detail}", reason=reason, snapshot=snapshot
    )


def check_meta(
    meta: SnapshotMeta,
    *,
    engine: SnapshotEngine,
    stream_first_seq: int,
    stream_last_seq: int,
    stream_name: str,
    stream_created: str = "",
) -> None:
    """Refuse a snapshot on its metadata alone, before its bytes are fetched.

    The engine must have the same name and the same version: snapshot bytes are in the
    format of the engine version that wrote them, and the Engine contract has no migration,
    so an older snapshot is refused as firmly as a newer one. The stream must be the
    journal's, and must still hold every command after the snapshot: ``stream_seq`` at
    most the stream's last seq, and ``stream_seq + 1`` at least its first seq.
    Raises :class:`SnapshotError` with the :class:`Refusal` as ``reason``.
    """
    name = meta.name
    if meta.format != SNAPSHOT_FORMAT:
        raise refused(name, Refusal.FORMAT, f"format {meta.format}, this version reads 1")
    if meta.stream != stream_name:
        raise refused(
            name,
            Refusal.STREAM,
            f"taken from stream {meta.stream!r} (journal {meta.journal!r}), not {stream_name!r}",
        )
    if meta.stream_created and stream_created and meta.stream_created != stream_created:
        raise refused(
            name,
            Refusal.STREAM,
            f"taken from a stream {stream_name!r} created {meta.stream_created}; this one "
            f"was created {stream_created}",
        )
    if meta.engine_name != engine.name or meta.engine_version != engine.version:
        raise refused(
            name,
            Refusal.ENGINE,
            f"written by engine {meta.engine_name!r} version {meta.engine_version}, "
            f"this node runs {engine.name!r} version {engine.version}",
        )
    if meta.stream_seq > stream_last_seq:
        raise refused(
            name,
            Refusal.BEYOND_TAIL,
            f"stream seq {meta.stream_seq} is beyond the stream's last seq {stream_last_seq}",
        )
    if meta.stream_seq + 1 < stream_first_seq:
        raise refused(
            name,
            Refusal.TOO_OLD,
            f"replay would resume at stream seq {meta.stream_seq + 1}, "
            f"but the stream starts at {stream_first_seq}",
        )


def check_bytes(data: bytes, meta: SnapshotMeta) -> None:
    """Refuse bytes whose size (truncation) or SHA-256 differs from the metadata's."""
    check_size(meta, len(data))
    check_sum(meta, hashlib.sha256(data).hexdigest())


def check_size(meta: SnapshotMeta, size: int) -> None:
    if size != meta.size:
        state = "truncated" if size < meta.size else "too long"
        raise refused(meta.name, Refusal.SIZE, f"{state}: {size} bytes, {meta.size} were taken")


def check_sum(meta: SnapshotMeta, actual: str) -> None:
    if actual != meta.sha256:
        raise refused(meta.name, Refusal.CHECKSUM, f"sha256 is {actual}, {meta.sha256} was taken")


def verify(
    data: bytes,
    meta: SnapshotMeta,
    *,
    engine: SnapshotEngine,
    stream_first_seq: int,
    stream_last_seq: int,
    stream_name: str,
    stream_created: str = "",
) -> None:
    """Refuse a snapshot that cannot be trusted: :func:`check_meta`, then :func:`check_bytes`.

    Pure. Raises :class:`SnapshotError` naming the first problem found.
    """
    check_meta(
        meta,
        engine=engine,
        stream_first_seq=stream_first_seq,
        stream_last_seq=stream_last_seq,
        stream_name=stream_name,
        stream_created=stream_created,
    )
    check_bytes(data, meta)


E = TypeVar("E", bound=SnapshotEngine)


def restore_verified(engine_factory: Callable[[], E], data: bytes, meta: SnapshotMeta) -> E:
    """A fresh engine restored from ``data``, whose digest is proven to be ``meta.digest``.

    Raises :class:`SnapshotError` (``restore`` if the engine raised, ``digest`` if the state
    differs). Run :func:`verify` first: this checks the state, not the provenance.
    """
    engine = engine_factory()
    try:
        engine.restore(data)
    except Exception as exc:
        raise refused(meta.name, Refusal.RESTORE, f"the engine raised {exc!r}") from exc
    try:
        actual = engine.digest().hex()
    except Exception as exc:
        raise refused(meta.name, Refusal.DIGEST, f"the engine's digest() raised {exc!r}") from exc
    if actual != meta.digest:
        raise refused(
            meta.name, Refusal.DIGEST, f"restored state has digest {actual}, {meta.digest} taken"
        )
    return engine


@dataclass(frozen=True, slots=True)
class Restored(Generic[E]):
    """The snapshot :func:`choose` picked, and an engine restored from it."""

    meta: SnapshotMeta
    engine: E
