"""Settings objects: frozen, keyword-only, validated when built.

Durations are float seconds unless the unit is in the name.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, Final, Literal

from jetstandby.errors import ConfigError
from jetstandby.wire import check_journal_name, journal_subject, stream_name

DEFAULT_JOURNAL: Final = "default"
DEFAULT_MAX_BACKLOG: Final = 1_000
#: A tenth of the exactly-once window (``jetstandby.state.DEFAULT_DEDUP_WINDOW``): a retry
#: queued behind more than the window would be applied after its first try had left it.
MAX_BACKLOG: Final = 10_000
_NODE_ID: Final = re.compile(r"^[A-Za-z0-9_]{1,32}$")


class Durability(StrEnum):
    """When JetStream acknowledges a publish (a server setting, applied to the embedded one).

    ``acked``: after the message is in the stream's memory and, for R3, on a quorum of nodes;
    fsync follows within the server's ``sync_interval`` (2 minutes by default). ``fsync``:
    the server runs with ``sync_interval: always`` and acknowledges only after fsync.
    """

    ACKED = "acked"
    FSYNC = "fsync"


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ConfigError(name, f"must be a positive number, got {value!r}")


def _non_negative(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ConfigError(name, f"must be zero or a positive number, got {value!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class JournalSettings:
    """Which stream a journal lives in and how it is built and written.

    ``window``: appends in flight at once. ``ack_every``: how often a publish asks for a
    reply (the last of a burst always does; one acknowledgement proves all before it).
    ``fence_probe_interval``: an idle journal reads the stream's tail this often, so that a
    newer epoch fences it without waiting for its next append.
    ``ack_timeout``: a publish unanswered this long is checked and resent (safe: message-id
    dedup). ``unavailable_after``: an append still unresolved this long fails with
    :class:`~jetstandby.errors.JournalUnavailable`; it must be shorter than
    ``duplicate_window`` so that every resend stays deduplicable.
    """

    journal: str = DEFAULT_JOURNAL
    replicas: int = 1
    duplicate_window: float = 120.0
    max_age: float = 0.0
    max_bytes: int = -1
    window: int = 1024
    ack_every: int = 16
    fence_probe_interval: float = 1.0
    ack_timeout: float = 1.0
    unavailable_after: float = 10.0
    request_timeout: float = 2.0

    def __post_init__(self) -> None:
        check_journal_name(self.journal)
        if self.replicas not in (1, 3, 5):
            raise ConfigError("replicas", f"must be 1, 3 or 5, got {self.replicas!r}")
        for name in (
            "duplicate_window",
            "ack_timeout",
            "unavailable_after",
            "request_timeout",
            "fence_probe_interval",
        ):
            _positive(name, getattr(self, name))
        _non_negative("max_age", self.max_age)
        if not isinstance(self.max_bytes, int) or (self.max_bytes < 1 and self.max_bytes != -1):
            raise ConfigError(
                "max_bytes", f"must be -1 (no limit) or positive, got {self.max_bytes!r}"
            )
        if not isinstance(self.window, int) or not 1 <= self.window <= 65536:
            raise ConfigError("window", f"must be an integer in 1..65536, got {self.window!r}")
        if not isinstance(self.ack_every, int) or not 1 <= self.ack_every <= self.window:
            raise ConfigError(
                "ack_every", f"must be an integer in 1..window, got {self.ack_every!r}"
            )
        if self.unavailable_after >= self.duplicate_window:
            raise ConfigError(
                "unavailable_after",
                f"{self.unavailable_after}s must be shorter than duplicate_window "
                f"({self.duplicate_window}s), or a resend could be stored twice",
            )

    @property
    def stream(self) -> str:
        return stream_name(self.journal)

    @property
    def bounded(self) -> bool:
        """True when ``max_age`` or ``max_bytes`` makes the stream drop its oldest commands."""
        return self.max_age > 0 or self.max_bytes > 0

    @property
    def subject(self) -> str:
        return journal_subject(self.journal)


@dataclass(frozen=True, kw_only=True, slots=True)
class ReplaySettings:
    """How a standby follows the journal. Defaults keep the seed's timings.

    ``resubscribe_delay`` is the pause before re-subscribing after the feed ends or stalls
    (seed: 1 s); ``resubscribe_failure_delay`` the pause after a failed re-subscribe (seed: 5 s).
    ``idle_heartbeat``: the server sends one when idle; two missed ones mean a stalled feed.
    ``pending_msgs_limit``/``pending_bytes_limit``: the delivery queue. It must hold what
    nats-server sends a push consumer before flow control stops it (a window of up to 64 MB),
    or a catching-up standby drops messages and the server cuts it off as a slow consumer.
    """

    catch_up_interval: float = 0.25
    progress_log_interval: float = 10.0
    resubscribe_delay: float = 1.0
    resubscribe_failure_delay: float = 5.0
    idle_heartbeat: float = 0.5
    pending_msgs_limit: int = 1 << 20
    pending_bytes_limit: int = 128 << 20
    request_timeout: float = 2.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value: Any = getattr(self, f.name)
            if f.name in ("resubscribe_delay", "resubscribe_failure_delay"):
                _non_negative(f.name, value)
            else:
                _positive(f.name, value)
        if self.idle_heartbeat < 0.1:
            raise ConfigError("idle_heartbeat", "must be at least 0.1 s")


Capture = Literal["fork", "thread"]
#: How a standby captures a snapshot where nobody said: see SnapshotSettings.
DEFAULT_CAPTURE: Final[Capture] = "fork" if hasattr(os, "fork") else "thread"


@dataclass(frozen=True, kw_only=True, slots=True)
class SnapshotSettings:
    """When a standby snapshots its state, how many snapshots are kept, and how a node starts.

    A standby takes one after ``every_commands`` commands or ``every_seconds`` seconds with at
    least one new command, whichever comes first (0 turns that trigger off); the primary
    never does. ``keep``: the newest snapshots kept in the bucket. ``bootstrap``: start from
    the newest verified snapshot (else replay from command 1). ``retention_warn_fraction``:
    warn when the commands a standby still needs are within this fraction of a
    limit-bounded stream's start. ``bootstrap_retry``: how often a node that cannot prove a
    state to start from looks again for a usable snapshot. ``capture``: ``fork`` encodes the
    snapshot in a forked child, so that replay stops only for the fork; ``thread`` freezes
    the state on the event loop and encodes it in a thread (see
    :mod:`jetstandby.snapshots.capturing`). ``capture_timeout``: a forked child still
    encoding after this many seconds is killed and the snapshot fails (tried again later).
    """

    enabled: bool = True
    every_commands: int = 100_000
    every_seconds: float = 600.0
    keep: int = 3
    bootstrap: bool = True
    retention_warn_fraction: float = 0.2
    bootstrap_retry: float = 5.0
    capture: Capture = DEFAULT_CAPTURE
    capture_timeout: float = 300.0

    def __post_init__(self) -> None:
        if self.capture not in ("fork", "thread") or (
            self.capture == "fork" and not hasattr(os, "fork")
        ):
            raise ConfigError(
                "snapshot_capture",
                f"must be 'fork' (where the OS can fork) or 'thread', got {self.capture!r}",
            )
        for name in ("every_commands", "keep"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (1 if name == "keep" else 0):
                raise ConfigError(
                    f"snapshot_{name}", f"must be a non-negative integer, got {value!r}"
                )
        _non_negative("snapshot_every_seconds", self.every_seconds)
        _positive("bootstrap_retry", self.bootstrap_retry)
        _positive("snapshot_capture_timeout", self.capture_timeout)
        if not 0 < self.retention_warn_fraction < 1:
            raise ConfigError(
                "retention_warn_fraction",
                f"must be in (0, 1), got {self.retention_warn_fraction!r}",
            )


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeSettings:
    """One node: who it is, which journal it follows, and its promotion rules.

    ``max_promote_lag``: a standby further behind than this many commands refuses to be
    promoted unless forced. ``promote_attempts``: how often a promotion replays what another
    writer appended and tries its epoch marker again. The exactly-once window is part of
    the protocol, not a setting: replicas that disagreed on it would diverge.
    """

    node_id: str
    journal: JournalSettings = JournalSettings()
    replay: ReplaySettings = ReplaySettings()
    snapshots: SnapshotSettings = SnapshotSettings()
    max_promote_lag: int = 10_000
    promote_attempts: int = 5
    #: As primary, journal a digest checkpoint after every this many commands (0: never).
    checkpoint_every: int = 10_000
    #: As primary, refuse a submission ``overloaded`` (retriable, nothing applied) while more
    #: than this many others wait to be applied (1 to MAX_BACKLOG): see PrimaryService.
    max_backlog: int = DEFAULT_MAX_BACKLOG
    #: Once the state is built (caught up, or primary), move every live object out of the
    #: garbage collector's full collections (:mod:`jetstandby.heap`): they walked the whole
    #: process and stopped replay for tens of milliseconds each.
    freeze_heap: bool = True

    def __post_init__(self) -> None:
        if not _NODE_ID.match(self.node_id):
            raise ConfigError("node_id", f"{self.node_id!r} must match {_NODE_ID.pattern}")
        for name in ("max_promote_lag", "promote_attempts", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (1 if name == "promote_attempts" else 0):
                raise ConfigError(name, f"must be a non-negative integer, got {value!r}")
        backlog = self.max_backlog
        if not isinstance(backlog, int) or not 1 <= backlog <= MAX_BACKLOG:
            raise ConfigError(
                "max_backlog",
                f"must be an integer from 1 to {MAX_BACKLOG}, got {backlog!r}: a longer queue "
                "could apply a retry after its first try left the exactly-once window",
            )
