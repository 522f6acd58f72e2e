"""Prometheus metrics read from ``NodeControl.status()`` at scrape time.

Nothing here runs on the replication hot path: a scrape calls ``status()`` once and turns the
document into metric families. Fields that are ``None`` (not known yet) are left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from jetstandby.status import NodeControl, NodeStatus, Role

PREFIX: Final = "jetstandby_"

# (name without prefix, help, NodeStatus field); CounterMetricFamily appends ``_total``.
_COUNTERS: Final[tuple[tuple[str, str, str], ...]] = (
    ("commands_replayed", "Commands applied by replay.", "commands_replayed"),
    ("duplicates_skipped", "Journal messages skipped as duplicates.", "duplicates_skipped"),
    ("resubscribes", "Times the replay subscription was re-created.", "resubscribes"),
    (
        "submissions_acknowledged",
        "Submissions journaled and acknowledged.",
        "submissions_acknowledged",
    ),
    ("submissions_rejected", "Submissions rejected.", "submissions_rejected"),
    (
        "submissions_overloaded",
        "Submissions refused by admission control (max_backlog).",
        "submissions_overloaded",
    ),
    (
        "submissions_deduplicated",
        "Submissions answered from the dedup window.",
        "submissions_deduplicated",
    ),
    ("snapshots_taken", "Snapshots this node took and stored.", "snapshots_taken"),
)
# Gauges also carry a divisor into base units (milliseconds -> seconds).
_GAUGES: Final[tuple[tuple[str, str, str, float], ...]] = (
    ("epoch", "Current fencing epoch.", "epoch", 1.0),
    ("stream_lag_commands", "Stream messages not yet replayed.", "stream_lag", 1.0),
    ("lag_seconds", "Replication lag behind the primary.", "lag_ms", 1000.0),
    (
        "apply_rate_commands_per_second",
        "Recent replay apply rate.",
        "apply_rate",
        1.0,
    ),
    ("latest_stream_seq", "Newest stream sequence known to this node.", "latest_stream_seq", 1.0),
    ("replay_cursor_seq", "Last stream sequence replay processed.", "replay_cursor_seq", 1.0),
    ("last_replayed_seq", "Command sequence last applied by replay.", "last_replayed_seq", 1.0),
    (
        "last_replay_timestamp_seconds",
        "Unix time at which replay last applied a command.",
        "last_replay_unix_ms",
        1000.0,
    ),
    (
        "catch_up_eta_seconds",
        "Estimated time until replay is caught up.",
        "catch_up_eta_s",
        1.0,
    ),
    ("stream_first_seq", "The journal stream's first sequence now.", "stream_first_seq", 1.0),
    (
        "retention_headroom_commands",
        "Messages the stream may still drop before one this standby needs goes.",
        "retention_headroom",
        1.0,
    ),
    (
        "last_checkpoint_seq",
        "Last checkpoint whose digest this node matched.",
        "last_checkpoint_seq",
        1.0,
    ),
    (
        "writer_engine_version",
        "Engine version of the journal's writer.",
        "writer_engine_version",
        1.0,
    ),
    (
        "last_snapshot_seq",
        "Command seq of the last snapshot this node took.",
        "last_snapshot_seq",
        1.0,
    ),
)
_FLAGS: Final[tuple[tuple[str, str, str], ...]] = (
    ("ready", "1 if the node reports ready.", "ready"),
    ("caught_up", "1 if replay has caught up with the stream.", "caught_up"),
    ("halted", "1 if replay has halted on an error.", "halted"),
    ("diverged", "1 if a checkpoint's digest differed: never promotable.", "diverged"),
    (
        "retention_warning",
        "1 if this standby is close to losing history it still needs.",
        "retention_warning",
    ),
)


class StatusCollector(Collector):
    def __init__(self, control: NodeControl) -> None:
        self._control = control

    def collect(self) -> Iterator[Metric]:
        status = self._control.status()
        yield _info(status)
        yield _role(status.role)
        yield from _flags(status)
        yield from _gauges(status)
        yield from _counters(status)


def _info(status: NodeStatus) -> Metric:
    info = InfoMetricFamily(f"{PREFIX}node", "Identity of this node.")
    info.add_metric(
        [],
        {
            "node_id": status.node_id,
            "journal": status.journal,
            "engine": status.engine_name,
            "engine_version": str(status.engine_version),
        },
    )
    return info


def _role(current: Role) -> Metric:
    # A state set: one series per role, 1 for the current one, so role changes are queryable.
    family = GaugeMetricFamily(f"{PREFIX}role", "1 for the node's current role.", labels=["role"])
    for role in Role:
        family.add_metric([role.value], 1.0 if role is current else 0.0)
    return family


def _flags(status: NodeStatus) -> Iterator[Metric]:
    for name, help_text, field in _FLAGS:
        yield GaugeMetricFamily(PREFIX + name, help_text, value=float(getattr(status, field)))


def _gauges(status: NodeStatus) -> Iterator[Metric]:
    for name, help_text, field, divisor in _GAUGES:
        family = GaugeMetricFamily(PREFIX + name, help_text)
        value = getattr(status, field)
        if value is not None:
            family.add_metric([], float(value) / divisor)
        yield family


def _counters(status: NodeStatus) -> Iterator[Metric]:
    for name, help_text, field in _COUNTERS:
        yield CounterMetricFamily(PREFIX + name, help_text, value=float(getattr(status, field)))


class _Joined(Collector):
    # Several registries as one, so a scrape yields one exposition document.
    def __init__(self, registries: Iterable[CollectorRegistry]) -> None:
        self._registries = tuple(registries)

    def collect(self) -> Iterator[Metric]:
        for registry in self._registries:
            yield from registry.collect()


def build_exposition(control: NodeControl, extra: CollectorRegistry | None) -> Collector:
    own = CollectorRegistry()
    own.register(StatusCollector(control))
    return own if extra is None else _Joined((own, extra))
