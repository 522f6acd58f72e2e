"""Engine snapshots in the JetStream Object Store: take, store, list, read fast, verify, choose.

:mod:`.meta` is the pure part (metadata, verification); :mod:`.store` talks to NATS.
Storage. One bucket per journal, ``JSB_SNAP_<JOURNAL>`` (its stream is
``OBJ_JSB_SNAP_<JOURNAL>``), file storage. A snapshot is one object named
``snap-<seq, 20 digits>-<epoch>-<node_id>``, so names sort by command seq. Its
:class:`SnapshotMeta`, as JSON, is the object's ``description``: nats-py 2.16's object meta
has a description and headers but no metadata map, and a description is shown by every
tool. Every :meth:`SnapshotStore.put` then deletes all but the newest ``keep`` snapshots.

Reading. nats-py's ``ObjectStore.get`` grows one ``bytes`` chunk by chunk, which is
quadratic (nats-io/nats.py#703): about 10 s for 50 MB here. :meth:`SnapshotStore.get` reads the
object's chunk subject with batched direct gets (``$JS.API.DIRECT.GET``, nats-server 2.11+).
These need no consumer, so there is nothing to create or to leak. Each batch is capped at
:data:`READ_WINDOW_BYTES`, so the server never queues more than that for one reader. The
chunks are joined once at the end, and the SHA-256 is taken as they arrive, then checked
against both the object store's digest and the snapshot's own ``sha256``.

Trust. :func:`verify` (pure) and :func:`restore_verified` refuse a snapshot with a
:class:`~jetstandby.errors.SnapshotError` whose ``reason`` is a :class:`Refusal`.
:func:`choose` walks the snapshots newest first and restores the first one that passes.

Like ``journal/``, this module talks to NATS itself, and every nats error is translated at
the boundary: :class:`~jetstandby.errors.JournalUnavailable` when JetStream does not answer,
:class:`~jetstandby.errors.SnapshotError` when it refuses or the data is bad."""

from jetstandby.snapshots.meta import (
    DEFAULT_KEEP,
    SNAPSHOT_FORMAT,
    Refusal,
    Restored,
    SnapshotEngine,
    SnapshotMeta,
    bucket_name,
    capture,
    check_bytes,
    check_meta,
    object_name,
    restore_verified,
    verify,
)
from jetstandby.snapshots.store import (
    CHUNK_SIZE,
    READ_WINDOW_BYTES,
    SnapshotStore,
    choose,
    load_verified,
)

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_KEEP",
    "READ_WINDOW_BYTES",
    "SNAPSHOT_FORMAT",
    "Refusal",
    "Restored",
    "SnapshotEngine",
    "SnapshotMeta",
    "SnapshotStore",
    "bucket_name",
    "capture",
    "check_bytes",
    "check_meta",
    "choose",
    "load_verified",
    "object_name",
    "restore_verified",
    "verify",
]
