"""An engine for the fault scenarios: the kv engine slowed down, so a replay stays long."""

from __future__ import annotations

import os
import time
from typing import Final

from jetstandby.engine import Command
from jetstandby.engines.kv import KeyValueEngine

DELAY_ENV: Final = "JSB_FAULTS_APPLY_DELAY"
SLOW_KV: Final = "jetstandby_bench.faults_engine:SlowKeyValue"


class SlowKeyValue(KeyValueEngine):
    """The kv engine (same name, same digests), sleeping ``$JSB_FAULTS_APPLY_DELAY`` seconds
    per command."""

    def __init__(self) -> None:
        super().__init__()
        self.delay = float(os.environ.get(DELAY_ENV, "0"))

    def apply(self, command: Command) -> bytes:
        if self.delay:
            time.sleep(self.delay)
        return super().apply(command)
