"""Engine snapshots in the JetStream Object Store: take, store, list, read fast, verify, choose.

:mod:`.meta` is the pure part (metadata, verification); :mod:`.store` talks to NATS (the
bucket, its layout and the fast reader are described there).
"""

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
    describe,
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
    "describe",
    "load_verified",
    "object_name",
    "restore_verified",
    "verify",
]
