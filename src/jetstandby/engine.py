"""The engine contract: what a deterministic engine gives jetstandby, and how one is loaded.

An engine is pure: ``apply`` may not read a clock, draw random numbers or do I/O. Time comes
in through :attr:`Command.timestamp_ns`, the primary's clock when it sequenced the command.
Invalid requests are deterministic *results* (rejections), not exceptions: an exception from
``apply`` means the engine is broken, and replay halts there.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import msgspec

from jetstandby.errors import ConfigError

BUILTIN_ENGINES: dict[str, str] = {
    "kv": "jetstandby.engines.kv:KeyValueEngine",
    "orderbook": "jetstandby.engines.orderbook:OrderBookEngine",
}


class Command(msgspec.Struct, frozen=True, gc=False):
    """One command as an engine sees it."""

    seq: int
    timestamp_ns: int
    command_type: str
    command_version: int
    payload: bytes


@runtime_checkable
class Engine(Protocol):
    """A deterministic state machine replicated by jetstandby.

    ``accepts`` maps each command type to the versions this engine can apply; a node never
    hands it anything else.
    """

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def accepts(self) -> Mapping[str, frozenset[int]]: ...

    def apply(self, command: Command) -> bytes:
        """Apply ``command`` and return its result, encoded as the engine defines."""
        ...

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes) -> None: ...

    def digest(self) -> bytes:
        """A stable hash of the canonical state: equal states, equal digests, in any process."""
        ...


@runtime_checkable
class LiveDigest(Protocol):
    """What an engine may add: a digest kept current as its state changes, so reading it is
    O(1) where :meth:`Engine.digest` is usually O(state). A primary whose engine has one
    writes checkpoints of it (``$checkpoint`` version 2, see ``docs/wire.md``): replicas
    then compare digests without a pause that grows with the state."""

    def live_digest(self) -> bytes:
        """A stable hash of the canonical state: equal states, equal live digests, in any
        process. It need not equal :meth:`Engine.digest`."""
        ...


def load_engine(spec: str) -> Engine:
    """Build an engine from a built-in name (``kv``) or ``module:Class``.

    Raises :class:`ConfigError` naming ``engine`` if it cannot be imported, built, or does not
    fulfil the :class:`Engine` contract.
    """
    target = BUILTIN_ENGINES.get(spec, spec)
    module_name, sep, class_name = target.partition(":")
    if not sep or not module_name or not class_name:
        raise ConfigError(
            "engine",
            f"{spec!r} is neither a built-in ({', '.join(BUILTIN_ENGINES)}) nor module:Class",
        )
    try:
        factory = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError("engine", f"cannot import {target!r}: {exc}") from exc
    try:
        engine = factory()
    except Exception as exc:
        raise ConfigError("engine", f"{target!r}() failed: {exc!r}") from exc
    missing = [
        member
        for member in ("name", "version", "accepts", "apply", "snapshot", "restore", "digest")
        if not hasattr(engine, member)
    ]
    if missing:
        raise ConfigError("engine", f"{target!r} lacks {', '.join(missing)} of the Engine contract")
    return engine  # type: ignore[no-any-return]
