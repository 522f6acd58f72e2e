"""``jetstandby run`` configuration: a TOML file, ``JETSTANDBY_*`` variables, then flags.

Later sources win (flags over the environment over the file over defaults). Every error names
its key and where it came from, e.g. ``max_promote_lag (from JETSTANDBY_MAX_PROMOTE_LAG):
Expected `int`, got `str```.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from jetstandby.config import (
    DEFAULT_CAPTURE,
    DEFAULT_MAX_BACKLOG,
    Capture,
    JournalSettings,
    NodeSettings,
    ReplaySettings,
    SnapshotSettings,
)
from jetstandby.errors import ConfigError, JournalUnavailable

ENV_PREFIX = "JETSTANDBY_"


class RunConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Everything ``jetstandby run`` can be told. See the README's configuration reference."""

    role: Literal["primary", "standby"] = "standby"
    engine: str = "kv"
    nats: str | None = None
    admin: str = "127.0.0.1:7070"
    node_id: str = ""
    journal: str = "default"
    replicas: int = 1
    token: str | None = None
    token_file: str | None = None
    max_promote_lag: int = 10_000
    stay_up: bool = False
    durability: Literal["acked", "fsync"] = "acked"
    checkpoint_every: int = 10_000
    max_backlog: int = DEFAULT_MAX_BACKLOG
    max_age: float = 0.0
    max_bytes: int = -1
    snapshots: bool = True
    snapshot_every_commands: int = 100_000
    snapshot_every_seconds: float = 600.0
    snapshot_keep: int = 3
    snapshot_capture: Capture = DEFAULT_CAPTURE
    snapshot_capture_timeout: float = 300.0
    freeze_heap: bool = True

    def admin_address(self) -> tuple[str, int]:
        host, sep, port = self.admin.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError("admin", f"{self.admin!r} is not HOST:PORT")
        return host, int(port)

    def node_settings(self) -> NodeSettings:
        return NodeSettings(
            node_id=self.node_id or "n" + uuid.uuid4().hex[:10],
            journal=JournalSettings(
                journal=self.journal,
                replicas=self.replicas,
                max_age=self.max_age,
                max_bytes=self.max_bytes,
            ),
            replay=ReplaySettings(),
            snapshots=SnapshotSettings(
                enabled=self.snapshots,
                every_commands=self.snapshot_every_commands,
                every_seconds=self.snapshot_every_seconds,
                keep=self.snapshot_keep,
                capture=self.snapshot_capture,
                capture_timeout=self.snapshot_capture_timeout,
            ),
            max_promote_lag=self.max_promote_lag,
            checkpoint_every=self.checkpoint_every,
            max_backlog=self.max_backlog,
            freeze_heap=self.freeze_heap,
        )


_FIELDS = frozenset(RunConfig.__struct_fields__)


def load(
    *,
    file: Path | None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> RunConfig:
    """Merge the sources and validate. Raises :class:`ConfigError` naming the key."""
    sources: dict[str, str] = {}
    merged: dict[str, Any] = {}
    if file is not None:
        for key, value in _read_toml(file).items():
            merged[key], sources[key] = value, str(file)
    for key, value in (env if env is not None else os.environ).items():
        if key.startswith(ENV_PREFIX):
            name = key[len(ENV_PREFIX) :].lower()
            if name not in _FIELDS:
                raise ConfigError(key, f"unknown setting (known: {', '.join(sorted(_FIELDS))})")
            merged[name], sources[name] = value, key  # strings; converted below
    for key, value in (flags or {}).items():
        if value is not None:
            merged[key], sources[key] = value, "--" + key.replace("_", "-")
    try:
        config = msgspec.convert(merged, RunConfig, strict=False)
    except msgspec.ValidationError as exc:
        raise _named(exc, sources) from None
    config.admin_address()
    config.node_settings()  # validates node_id, limits and journal name early
    return config


def _read_toml(file: Path) -> dict[str, Any]:
    try:
        text = file.read_bytes()
    except OSError as exc:
        raise ConfigError("config", f"cannot read {file}: {exc.strerror}") from exc
    try:
        data = msgspec.toml.decode(text)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("config", f"{file} is not valid TOML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError("config", f"{file} must be a TOML table")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise ConfigError(
            unknown[0], f"unknown key in {file} (known: {', '.join(sorted(_FIELDS))})"
        )
    return data


def _named(exc: msgspec.ValidationError, sources: Mapping[str, str]) -> ConfigError:
    match = re.search(r"at `\$\.(\w+)`", str(exc))
    key = match.group(1) if match else "config"
    where = f" (from {sources[key]})" if key in sources else ""
    problem = str(exc).split(" - at ")[0]
    return ConfigError(key, f"{problem}{where}")


@contextlib.asynccontextmanager
async def nats_flag(url: str | None) -> AsyncIterator[None]:
    """A ``--nats`` URL that nothing answers at is bad input (exit 2), not an outage: wrap
    the first connection in this. Losing NATS later stays :class:`JournalUnavailable`."""
    try:
        yield
    except JournalUnavailable as exc:
        if url is None:
            raise
        raise ConfigError("--nats", str(exc)) from exc
