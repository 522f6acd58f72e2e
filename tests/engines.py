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
