"""Engines for tests only."""

from __future__ import annotations

import os
import time

from jetstandby.engine import Command
from jetstandby.engines.kv import KeyValueEngine


class SlowKeyValue(KeyValueEngine):
    """The kv engine, slowed by ``JSB_TEST_APPLY_DELAY`` seconds per command (a busy standby)."""

    def __init__(self) -> None:
        super().__init__()
        self.delay = float(os.environ.get("JSB_TEST_APPLY_DELAY", "0"))

    def apply(self, command: Command) -> bytes:
        if self.delay:
            time.sleep(self.delay)
        return super().apply(command)


class CyclicKeyValue(KeyValueEngine):
    """The kv engine in a reference cycle with itself, as engines with back-references
    (an order to its book) or bound methods in a table are: only the collector frees it."""

    def __init__(self) -> None:
        super().__init__()
        self.me = self


class ClockedKeyValue(KeyValueEngine):
    """A broken engine: every ``Add`` also records the wall clock, so replicas diverge."""

    def apply(self, command: Command) -> bytes:
        result = super().apply(command)
        if command.command_type == "Add":
            self.data["applied_at"] = str(time.perf_counter_ns())
        return result


class KeyValueV2(KeyValueEngine):
    """The kv engine's next version: it also accepts ``Put`` version 2 (same payload)."""

    version = 2
    accepts = {**KeyValueEngine.accepts, "Put": frozenset({1, 2})}
