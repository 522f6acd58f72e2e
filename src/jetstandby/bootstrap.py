"""Where a standby's state comes from, and how it keeps a recent one in the snapshot store.

A node starts from the newest snapshot that passes verification (checksum, engine version,
stream membership, and the restored state's digest), else from command 1 if the journal
still holds it. Otherwise it has no state it can prove, and it must not start: it raises
:class:`~jetstandby.errors.HistoryLost`. The same rule applies when a lagging standby finds
that the stream's retention limits removed commands it still needed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from jetstandby.config import JournalSettings, SnapshotSettings
from jetstandby.errors import HistoryLost
from jetstandby.journal.stream import NatsClient, stream_info
from jetstandby.snapshots import SnapshotMeta, SnapshotStore, choose, describe
from jetstandby.snapshots.capturing import capture
from jetstandby.state import ReplicatedState

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StreamBounds:
    """The journal stream's extent now: ``first_seq`` is 0 or ``last_seq + 1`` when empty."""

    first_seq: int
    last_seq: int
    messages: int
    limited: bool  # bounded by max_age, max_bytes or max_msgs: old commands will go
    created: str = ""  # ISO 8601; tells this stream from an earlier one of the same name

    def headroom(self, cursor: int) -> int:
        """Messages the stream can still drop before the one after ``cursor`` goes."""
        return cursor + 1 - max(self.first_seq, 1)


class RetentionWatch:
    """Warns when a standby nears the start of a bounded stream: when the messages the stream
    may still drop before one the standby needs are under ``fraction`` of the stream. Logs
    once per episode; :attr:`warning` says whether one is on now."""

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction
        self.bounds: StreamBounds | None = None
        self.warning = False

    def headroom(self, cursor: int | None) -> int | None:
        """``None`` when not known, or ``cursor`` is ``None`` (not a standby following)."""
        if self.bounds is None or cursor is None:
            return None
        return self.bounds.headroom(cursor)

    def check(self, cursor: int | None) -> bool:
        bounds = self.bounds
        if bounds is None or cursor is None or not bounds.limited:
            warn = False
        else:
            headroom = bounds.headroom(cursor)
            warn = headroom < self.fraction * bounds.messages
            if warn and not self.warning:
                logger.warning(
                    "RETENTION: this standby needs stream seq %d, only %d messages after the "
                    "stream's first seq %d; if the stream's limits drop them first, it must "
                    "re-bootstrap from a snapshot (or halt)",
                    cursor + 1,
                    headroom,
                    bounds.first_seq,
                )
        if not warn and self.warning:
            logger.info("retention headroom recovered: %s messages", self.headroom(cursor))
        self.warning = warn
        return warn


async def stream_bounds(nc: NatsClient, settings: JournalSettings) -> StreamBounds:
    """Raises :class:`~jetstandby.errors.JournalUnavailable` if JetStream does not answer."""
    info = await stream_info(nc, settings.stream, settings.request_timeout)
    config, state = info.config, info.state
    limited = bool(config.max_age) or (config.max_bytes or -1) > 0 or (config.max_msgs or -1) > 0
    created = info.created.isoformat() if info.created else ""
    return StreamBounds(state.first_seq, state.last_seq, state.messages, limited, created)


@dataclass(frozen=True, slots=True)
class Start:
    """A state to replay on from: ``stream_seq`` is the last stream seq it contains."""

    state: ReplicatedState
    stream_seq: int
    snapshot: SnapshotMeta | None

    @property
    def source(self) -> str:
        return f"snapshot {self.snapshot.name}" if self.snapshot else "command 1"


async def find_start(
    store: SnapshotStore | None,
    new_state: Callable[[], ReplicatedState],
    bounds: StreamBounds,
) -> Start:
    """The newest verified snapshot, else an empty state if the stream still starts at
    command 1. Raises :class:`HistoryLost` when neither is possible and
    :class:`~jetstandby.errors.JournalUnavailable` when the store cannot be read."""
    if store is not None:
        restored = await choose(
            store,
            new_state,
            stream_first_seq=bounds.first_seq,
            stream_last_seq=bounds.last_seq,
            stream_created=bounds.created,
        )
        if restored is not None:
            return Start(restored.engine, restored.meta.stream_seq, restored.meta)
    if bounds.first_seq <= 1:
        return Start(new_state(), 0, None)
    raise HistoryLost(
        f"the journal stream now starts at stream seq {bounds.first_seq} (its retention "
        "limits dropped what came before) and no snapshot passed verification: there is no "
        "state this node can prove, so it will not start; take a snapshot on a standby that "
        "is caught up (POST /admin/snapshot), or raise the stream's limits",
        stream_seq=1,
        first_stream_seq=bounds.first_seq,
    )


class Snapshotter:
    """Takes and stores snapshots of a standby's state, one at a time.

    ``position()`` returns the state and the last stream seq it contains; it is called with
    no await before the capture, so the two always agree (replay applies synchronously)."""

    def __init__(
        self,
        store: SnapshotStore,
        settings: SnapshotSettings,
        journal: JournalSettings,
        node_id: str,
    ) -> None:
        self.store = store
        self._settings = settings
        self._journal = journal
        self._node_id = node_id
        self._lock = asyncio.Lock()
        self._since = (0, time.monotonic())  # (seq, monotonic time) of the last one
        self.taken = 0
        self.last: SnapshotMeta | None = None
        self.last_error: str | None = None
        #: Recorded in every snapshot's metadata: see :class:`StreamBounds`.
        self.stream_created = ""

    def restart_count(self, seq: int) -> None:
        """Count the next interval from ``seq`` (the state just restored or promoted)."""
        self._since = (seq, time.monotonic())

    def due(self, seq: int) -> bool:
        since_seq, since_time = self._since
        fresh = seq - since_seq
        if fresh <= 0:
            return False
        every_commands, every_seconds = self._settings.every_commands, self._settings.every_seconds
        if every_commands and fresh >= every_commands:
            return True
        return bool(every_seconds) and time.monotonic() - since_time >= every_seconds

    async def take(self, position: Callable[[], tuple[ReplicatedState, int]]) -> SnapshotMeta:
        """Capture and store one; raises what the store raises (and remembers it)."""
        async with self._lock:
            state, stream_seq = position()
            seq, epoch = state.last_seq, state.epoch
            started = time.monotonic()
            try:
                # Only part of this stops replay: see jetstandby.snapshots.capturing.
                captured = await capture(
                    state, self._settings.capture, deadline=self._settings.capture_timeout
                )
                meta = await asyncio.to_thread(
                    describe,
                    captured.data,
                    engine_name=state.name,
                    engine_version=state.version,
                    digest=captured.digest,
                    settings=self._journal,
                    seq=seq,
                    stream_seq=stream_seq,
                    epoch=epoch,
                    node_id=self._node_id,
                    stream_created=self.stream_created,
                )
                encoded = time.monotonic()
                stored = await self.store.put(captured.data, meta)
            except Exception as exc:
                self.last_error = f"snapshot at seq {seq} failed: {exc!r}"
                raise
            self._since = (meta.seq, time.monotonic())
            self.taken += 1
            self.last, self.last_error = stored, None
            logger.info(
                "snapshot %s stored: seq %d, stream seq %d, %d bytes; replay paused %.1f ms "
                "(%s), capture and checksum %.1f ms, store %.1f ms",
                stored.name,
                stored.seq,
                stored.stream_seq,
                stored.size,
                captured.paused_s * 1000,
                self._settings.capture,
                (encoded - started) * 1000,
                (time.monotonic() - encoded) * 1000,
            )
            return stored
