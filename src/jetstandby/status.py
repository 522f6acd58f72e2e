"""What a node reports about itself: the status document, transitions, promotion results.

Plain msgspec Structs, so they encode straight to JSON for the admin API and the CLI.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

import msgspec

from jetstandby.snapshots.meta import SnapshotMeta


class Role(StrEnum):
    """A node's role. ``fenced`` (a deposed primary) is terminal."""

    STANDBY = "standby"
    PROMOTING = "promoting"
    PRIMARY = "primary"
    FENCED = "fenced"


class Transition(msgspec.Struct, frozen=True):
    from_role: Role | None
    to_role: Role
    at_unix_ms: int
    reason: str


class NodeStatus(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /status``. Replay fields keep the seed's ``ReplayProgress`` meanings."""

    node_id: str
    role: Role
    epoch: int
    journal: str
    engine_name: str
    engine_version: int
    ready: bool
    halted: bool
    commands_replayed: int
    caught_up: bool
    replay_cursor_seq: int | None
    last_replayed_seq: int | None
    last_replay_unix_ms: int | None
    latest_stream_seq: int | None
    stream_lag: int | None
    lag_ms: float
    apply_rate: float
    catch_up_eta_s: float | None
    duplicates_skipped: int
    resubscribes: int
    last_error: str | None
    last_applied_seq: int = 0
    #: How long after the primary stamped the last applied command this node applied it.
    last_apply_delay_ms: float | None = None
    #: The digest checkpoints compare (ReplicatedState.compared_digest), hex.
    state_digest: str = ""
    submissions_acknowledged: int = 0
    submissions_rejected: int = 0
    submissions_overloaded: int = 0  # of those rejected: refused by admission control
    submissions_deduplicated: int = 0
    transitions: list[Transition] = msgspec.field(default_factory=list)
    #: Messages an operator skipped, oldest first.
    skipped: list[SkipResult] = msgspec.field(default_factory=list)
    #: Command types and versions this node's engine applies (the version gate).
    accepts: dict[str, list[int]] = msgspec.field(default_factory=dict)
    #: The engine version of the journal's current writer (its epoch marker, checkpoints).
    writer_engine_version: int = 0
    #: The last checkpoint whose digest this node matched.
    last_checkpoint_seq: int = 0
    #: A checkpoint's digest differed: halted for good, never promotable.
    diverged: bool = False
    #: ``snapshot <name>`` or ``command 1``; ``None`` while starting.
    started_from: str | None = None
    stream_first_seq: int | None = None
    #: Messages the stream may still drop before one this standby needs goes.
    retention_headroom: int | None = None
    retention_warning: bool = False
    snapshots_taken: int = 0
    last_snapshot_seq: int | None = None
    last_snapshot_error: str | None = None


class SkipResult(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /admin/skip``: the one message an operator told a halted standby to pass over.

    ``seq`` is the command seq it consumed, or ``None`` if the message carried none that fits
    (undecodable bytes, a command seq that is not the next one)."""

    stream_seq: int
    seq: int | None
    reason: str
    halted_on: str
    at_unix_ms: int


class PromoteResult(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /admin/promote``: the new epoch, the seq of its marker, and how long it took."""

    role: Role
    epoch: int
    seq: int
    took_ms: float
    forced: bool = False
    already_promoted: bool = False


class NodeControl(Protocol):
    """The narrow surface the admin API drives; a :class:`~jetstandby.node.Node` provides it."""

    def status(self) -> NodeStatus: ...

    async def promote(
        self, *, force: bool, reason: str | None, wait: bool, timeout: float
    ) -> PromoteResult: ...

    async def skip(self, *, stream_seq: int, reason: str) -> SkipResult: ...

    async def take_snapshot(self, *, reason: str | None) -> SnapshotMeta: ...
